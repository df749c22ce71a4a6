"""One registry style: a toy format, backend, search, task and loss, each registered from outside the package
(this file) in one line, are accepted by the configs and used where the built-in ones are."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from w2s.cache.backends import BACKENDS
from w2s.cache.config import CacheConfig
from w2s.cache.formats import FORMATS, formats_for
from w2s.cache.formats.parquet import ParquetFormat
from w2s.errors import ConfigError
from w2s.eval.config import SystemConfig
from w2s.registry import Registry
from w2s.search.components import SEARCHES, Search
from w2s.task import TASKS, Task, load_task
from w2s.train.config import TrainConfig
from w2s.train.losses import LOSSES


class ToyFormat(ParquetFormat):
    """Parquet under another name: its own folder and suffix."""

    name = "toyfmt"


class ToyScorer:
    """Every response token gets log-prob -1 (base) or -0.5 (aligned)."""

    def __init__(self, value: float):
        self.value = value

    @classmethod
    def for_cache(cls, config, role, model_path, num_models):
        return cls(-0.5 if role == "weak_aligned" else -1.0)

    def response_logprobs(self, sequences, prompt_lens):
        return [np.full(len(seq) - start, self.value, np.float32) for seq, start in zip(sequences, prompt_lens)]


class FirstChunk(Search):
    """Plain sampling cut at `tokens` new tokens."""

    params = {"tokens": int}
    defaults = {"tokens": 3}

    def run(self, job, prompt, seed):
        from w2s.search.cbs import sample

        return sample(job.sampler, None, prompt, min(job.max_new_tokens, job.params["tokens"]), seed)


class ToyTask(Task):
    def __init__(self, word: str = "hi"):
        self.word = word

    def examples(self):
        return []

    def score_example(self, response, example):
        return {}


class ToyLoss:
    """Mean squared strong log-ratio, `scale` times."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def __call__(self, policy_logps, ref_logps, batch):
        mask = batch["mask"]
        loss = self.scale * ((policy_logps - ref_logps) ** 2 * mask).sum() / mask.sum()
        return loss, {"tokens": int(mask.sum())}


@pytest.fixture
def toys():
    """Each toy registered with one line, and removed afterwards."""
    FORMATS.register("toyfmt")(ToyFormat)
    BACKENDS.register("toy")(ToyScorer)
    SEARCHES.register("first_chunk")(FirstChunk)
    TASKS.register("toy_task")(ToyTask)
    LOSSES.register("toy_loss")(ToyLoss)
    yield
    for registry, name in ((FORMATS, "toyfmt"), (BACKENDS, "toy"), (SEARCHES, "first_chunk"), (TASKS, "toy_task"),
                           (LOSSES, "toy_loss")):  # fmt: skip
        registry.unregister(name)


def test_configs_validate_names_against_the_registries(toys, tmp_path):
    config = CacheConfig(out_dir=str(tmp_path / "c"), format="toyfmt", backend="toy")
    assert [type(fmt) for fmt in formats_for(config.format)] == [ToyFormat]
    assert SystemConfig("toy", "m", generator="first_chunk").params == {"tokens": 3}
    assert isinstance(load_task({"_component_": "toy_task", "word": "yo"}), ToyTask)
    loss = TrainConfig(loss={"_component_": "toy_loss", "scale": 2.0}).loss_component()
    assert isinstance(loss, ToyLoss) and loss.scale == 2.0
    for build, key in (
        (lambda: CacheConfig(out_dir=str(tmp_path / "d"), backend="nope"), "cache.backend"),
        (lambda: SystemConfig("x", "m", generator="nope"), "generator"),
        (lambda: load_task({"_component_": "nope"}), "eval.task"),
        (lambda: TrainConfig(loss={"_component_": "nope"}), "train.loss"),
        (lambda: TrainConfig(loss={"_component_": "toy_loss", "gamma": 1.0}), "train.loss"),  # not its parameter
    ):
        with pytest.raises(ConfigError, match=key):
            build()


def test_a_dotted_path_needs_no_registration():
    spec = {"_component_": "tests.w2s.test_registry.ToyLoss", "scale": 3.0}
    assert TrainConfig(loss=spec).loss_component().scale == 3.0
    assert SystemConfig("toy", "m", generator="tests.w2s.test_registry.FirstChunk").params == {"tokens": 3}


def test_a_name_is_registered_once():
    registry = Registry("thing")
    registry.register("a")(int)
    with pytest.raises(ValueError, match="thing 'a' is already registered"):
        registry.register("a")(float)
    with pytest.raises(ConfigError, match="unknown thing 'b': use one of a"):
        registry.get("b", "section.key")


@pytest.mark.integration
def test_toys_run_where_the_built_ins_run(toys, micro_world, tmp_path):
    """A cache in the toy format scored by the toy backend; training with the toy loss on it; a search."""
    from tests.cache.helpers import build
    from w2s.cache.store import Cache
    from w2s.train.recipe import run

    build(micro_world, tmp_path / "cache", format="toyfmt", backend="toy")
    cache = Cache.open(tmp_path / "cache")
    shard = cache.read_shard(0, "toyfmt")
    assert np.allclose(shard.token_values["weak_log_ratio"], 0.5)  # -0.5 - (-1.0) on every response token
    settings = dict(out_dir=str(tmp_path / "train"), cache_dir=str(tmp_path / "cache"), cache_format="toyfmt")
    loss = {"_component_": "toy_loss", "scale": 2.0}
    policy = str(micro_world / "strong_base")
    (summary,) = run(TrainConfig(**settings, policy=policy, loss=loss, max_steps=2, micro_batch_size=4))
    provenance = json.loads((tmp_path / "train" / "final" / "w2s_provenance.json").read_text())
    assert provenance["train"]["loss"] == {"_component_": "toy_loss", "scale": 2.0} and summary["steps"] == 2
    from w2s.eval.generate import search

    pair = dict(weak_base=str(micro_world / "weak_base"), weak_aligned=str(micro_world / "weak_aligned"))
    records = search(["a prompt"], model=policy, generator="first_chunk", max_new_tokens=8, **pair)
    assert len(records) == 1 and len(records[0]["token_ids"]) <= 3
    assert torch.isfinite(torch.tensor(summary["last_loss"]))


def test_the_public_api_is_exported_from_the_top_level():
    import subprocess
    import sys

    import w2s

    for name in w2s.__all__:
        assert getattr(w2s, name) is not None, name
    assert w2s.WSPO is LOSSES.get("wspo") and w2s.SEARCHES is SEARCHES and w2s.TASKS is TASKS
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, w2s; print(sorted({'torch', 'transformers'} & set(sys.modules)))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert loaded.stdout.strip() == "[]"  # `import w2s` alone loads no model library


def test_a_plugin_that_fails_to_import_is_named_with_its_error(tmp_path, monkeypatch):
    """A dotted path whose module exists but breaks on import says why, not 'unknown'."""
    (tmp_path / "w2s_broken_plugin.py").write_text("import w2s_missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"train.loss._component_: cannot import 'w2s_broken_plugin.Loss'.*xyz"):
        TrainConfig(loss={"_component_": "w2s_broken_plugin.Loss"})
