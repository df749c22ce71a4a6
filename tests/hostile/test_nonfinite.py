"""A weak model whose weights hold NaN (a broken conversion, a float16 overflow) once made `w2s cache` publish a
cache of NaN that `w2s verify` passed, `w2s inspect` crashed on and training blamed on its learning rate, and made
`w2s search` publish NaN scores; a strong model giving NaN crashed sampling with a traceback (and greedy decoding
would have emitted garbage). Each is now refused in one line, where it happens."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.hostile.test_folders import cache_words, generate_words, train_words
from tests.hostile.test_sweep import one_line
from w2s.cache.store import Cache
from w2s.cli import main
from w2s.errors import CacheMismatch

pytestmark = pytest.mark.integration


def nan_copy(source, folder):
    """A copy of the model at `source` with its final norm's weights set to NaN."""
    shutil.copytree(source, folder)
    weights = load_file(folder / "model.safetensors")
    name = next(key for key in weights if key.endswith("norm.weight") and "layers" not in key)
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def nan_model(micro_world, tmp_path_factory):
    return nan_copy(micro_world / "weak_aligned", tmp_path_factory.mktemp("nan") / "weak_aligned_nan")


def test_a_weak_model_giving_nan_is_refused_naming_it_and_nothing_is_published(
    micro_world, nan_model, tmp_path, capsys
):
    out = tmp_path / "c"
    assert main(["cache", *cache_words(micro_world, out), f"cache.weak_aligned={nan_model}"]) == 2
    line = one_line(capsys)
    assert f"the weak_aligned model at {nan_model} gave a non-finite log-prob (nan) at response token 0" in line
    assert "nothing of this shard was written" in line
    assert not (out / "manifest.json").exists() and not list(out.glob("parquet/*.parquet"))


def test_a_cache_holding_nan_is_refused_by_every_reader_and_fails_verify(
    micro_world, nan_model, tmp_path, capsys, monkeypatch
):
    """A cache made before the build refused NaN (the check switched off here to make one): its hashes match."""
    import w2s.cache.build

    monkeypatch.setattr(w2s.cache.build, "check_finite", lambda *args: None)
    out = tmp_path / "c"
    assert main(["cache", *cache_words(micro_world, out), f"cache.weak_aligned={nan_model}"]) == 0
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    report = capsys.readouterr()
    assert "shard-00000.parquet: field weak_seq_reward, row_id 0: nan" in report.out + report.err
    with pytest.raises(CacheMismatch, match=r"shard-00000\.parquet: field weak_log_ratio, row_id 0: nan .*rebuild"):
        Cache.open(out).read_shard(0, columns=["row_id", "weak_log_ratio"])
    assert main(["inspect", str(out)]) == 2
    assert "non-finite values in this field" in one_line(capsys)
    assert not (out / "inspect.png").exists()


def test_search_refuses_nan_scores_instead_of_ranking_them(micro_world, nan_model, tmp_path, capsys):
    out = tmp_path / "s"
    words = [*generate_words(micro_world, out), f"generate.weak_aligned={nan_model}"]
    assert main(["search", *words]) == 2
    line = one_line(capsys)
    assert f"the weak pair (weak_aligned at {nan_model}, weak_base at {micro_world}/weak_base) gave" in line
    assert "a non-finite score (nan)" in line
    published = out / "responses.jsonl"
    assert not published.exists() or all(json.loads(row)["weak_score"] is not None for row in published.open())


@pytest.mark.parametrize(
    ("command", "extra"), [("generate", "temperature=0.7"), ("generate", "temperature=0"), ("search", "")]
)
def test_a_strong_model_giving_nan_is_refused_before_a_token_is_drawn(
    command, extra, micro_world, tmp_path_factory, tmp_path, capsys
):
    strong = nan_copy(micro_world / "strong_base", tmp_path_factory.mktemp("nan") / "strong_nan")
    out = tmp_path / "o"
    words = [*generate_words(micro_world, out), f"generate.model={strong}", *([extra] if extra else [])]
    assert main([command, *words]) == 2
    assert f"the model at {strong} gave non-finite next-token scores" in one_line(capsys)
    assert not (out / "responses.jsonl").exists()


def test_training_a_policy_giving_nan_is_stopped_naming_the_policy_not_the_learning_rate(
    micro_world, tmp_path_factory, tmp_path, capsys
):
    policy = nan_copy(micro_world / "strong_base", tmp_path_factory.mktemp("nan") / "policy_nan")
    cache = tmp_path / "c"
    assert main(["cache", *cache_words(micro_world, cache), "cache.strong_ref="]) == 0  # reference: the policy's start
    capsys.readouterr()
    assert main(["train", *train_words(micro_world, cache, tmp_path / "t"), f"train.policy={policy}"]) == 2
    line = one_line(capsys)
    assert (
        line.startswith("w2s train: step 1: ")
        and f"of the policy values are non-finite, from the policy at {policy}" in line
    )
    assert not (tmp_path / "t" / "final").exists()


def test_scores_are_refused_for_nan_plus_inf_or_a_row_with_no_possible_token_but_not_for_a_ruled_out_token(micro_world):
    from transformers import AutoModelForCausalLM

    from w2s.models import ModelError
    from w2s.sampling import require_finite

    model = AutoModelForCausalLM.from_pretrained(micro_world / "strong_base")
    scores = torch.randn(3, 7)
    scores[0, 2] = scores[2, 0] = float("-inf")  # top-k or a model's own mask: ruled-out tokens
    assert require_finite(scores, model) is scores
    for row, bad in ((1, float("nan")), (2, float("inf")), (0, None)):
        broken = scores.clone()
        broken[row] = float("-inf") if bad is None else broken[row].index_fill(0, torch.tensor([4]), bad)
        with pytest.raises(ModelError, match="gave non-finite next-token scores"):
            require_finite(broken, model)
