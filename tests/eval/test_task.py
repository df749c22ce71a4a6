"""Eval is handed a task: a toy task defined here plugs in through `_component_`; EFT runs as a declared system;
WSPO's gamma is read from the provenance `w2s train` writes."""

from __future__ import annotations

import json

import pytest

from w2s.config import ConfigError
from w2s.eval.config import EvalConfig, SystemConfig
from w2s.eval.run import run
from w2s.eval.systems import plan, sweep_runs
from w2s.search.eft import eft_generate
from w2s.search.samplers import HFSampler
from w2s.task import Example, Metric, Task, load_task


class OverlapTask(Task):
    """A user's prompt set scored by a stand-in reward model: the share of response words found in the prompt."""

    metrics = (Metric("reward", "reward", "{:.3f}", plot_title="overlap reward"), Metric("words", "words", "{:.1f}"))

    def __init__(self, prompts: list[str], tag: str = "toy") -> None:
        self.prompts, self.tag = prompts, tag

    def examples(self) -> list[Example]:
        return [Example(prompt, f"{self.tag}-{index}") for index, prompt in enumerate(self.prompts)]

    def score_example(self, response, example) -> dict[str, float]:
        words, known = response.text.split(), set(example.prompt.split())
        return {
            "reward": sum(word in known for word in words) / len(words) if words else 0.0,
            "words": float(len(words)),
        }


TOY = f"{__name__}.OverlapTask"


def eval_config(world, out, task: dict, systems: list[SystemConfig], **kwargs) -> EvalConfig:
    """An EvalConfig over the micro world with concrete paths (no templates) and test-sized budgets."""
    settings = dict(
        out_dir=str(out),
        task=task,
        systems=systems,
        weak_base=str(world / "weak_base"),
        weak_aligned=str(world / "weak_aligned"),
        tokenizer=str(world / "tokenizer"),
        wspo_dir=str(out / "no-wspo"),
        num_examples=3,
        max_new_tokens=6,
        seed=5,
        threads=1,
    )
    return EvalConfig(**{**settings, **kwargs})


@pytest.fixture(scope="module")
def toy_report(micro_world, tmp_path_factory, world):
    """`run` on the toy task with plain sampling, EFT and a search of the strong base."""
    strong = str(micro_world / "strong_base")
    systems = [
        SystemConfig("strong", strong),
        SystemConfig("strong+eft", strong, "eft", {"beta": 1.0}),
        SystemConfig("strong+search", strong, "cbs", {"width": 2, "num_samples": 2, "chunk_len": 3}),
    ]
    prompts = [example["prompt"] for example in world.examples[:4]]
    out = tmp_path_factory.mktemp("toy")
    config = eval_config(micro_world, out, {"_component_": TOY, "prompts": prompts, "tag": "mine"}, systems)
    return out, prompts, run(config)


@pytest.mark.integration
def test_a_task_defined_outside_eval_plugs_in_from_config(toy_report):
    out, prompts, report = toy_report
    assert list(report["systems"]) == ["strong", "strong+eft", "strong+search"] and report["num_examples"] == 3
    for name, row in report["systems"].items():
        assert set(row) >= {"reward", "words", "sampled_tokens", "seconds", "samples"}, name
        assert "length_reward" not in row and 0.0 <= row["reward"] <= 1.0, name
        assert [sample["example_id"] for sample in row["samples"]] == ["mine-0", "mine-1", "mine-2"]
        assert set(row["samples"][0]) == {"example_id", "response", "tokens", "reward", "words"}
    assert [shown["prompt"] for shown in report["examples_shown"]] == prompts[:3]
    text = (out / "report.md").read_text()
    assert "| system | reward | words | sampled tokens | seconds |" in text
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG" and report["budget"] is None


@pytest.mark.integration
def test_eft_runs_as_a_declared_system(toy_report, world):
    _, prompts, report = toy_report
    row = report["systems"]["strong+eft"]
    assert (row["kind"], row["engine"], row["search"]) == ("eft", "hf", {"beta": 1.0})
    sampler = HFSampler(world.strong, world.tokenizer)  # T=0.7, top_k=50, top_p=1.0, as the config
    for index, sample in enumerate(row["samples"]):  # prompt i with seed + i
        alone = eft_generate(sampler, world.tuned, world.untuned, prompts[index], 1.0, 6, seed=5 + index)
        assert sample["response"] == alone.text and sample["tokens"] == len(alone.token_ids)


def test_load_task_refuses_what_is_not_a_task():
    assert load_task({"_component_": TOY, "prompts": ["a b"]}).examples()[0].example_id == "toy-0"
    refusals = [
        ({"prompts": []}, "needs _component_"),
        ({"_component_": "w2s.nowhere.Task"}, "unknown task 'w2s.nowhere.Task': use one of .*length"),
        ({"_component_": "w2s.eval.config.EvalConfig"}, "is not a subclass of w2s.task.Task"),
        ({"_component_": TOY, "promts": []}, r"refused its arguments \['promts'\]"),
    ]
    for spec, message in refusals:
        with pytest.raises(ConfigError, match=message):
            load_task(spec)


def fake_run(folder, gamma: float | None) -> None:
    """A finished WSPO model folder: config.json, and the provenance `w2s train` writes (None: none written)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    if gamma is not None:
        (folder / "w2s_provenance.json").write_text(
            json.dumps({"cache": {}, "train": {"loss": {"_component_": "wspo", "gamma": gamma}, "lr": 1e-3}})
        )


def test_gamma_is_read_from_the_provenance_not_the_folder_name(tmp_path):
    wspo = tmp_path / "wspo"
    fake_run(wspo / "final", 0.3)
    fake_run(wspo / "gamma-0.5" / "final", 0.7)  # the name says 0.5; the provenance is what was trained
    fake_run(wspo / "gamma-0.1" / "final", 0.1)
    fake_run(wspo / "gamma-9" / "final", None)
    (wspo / "gamma-2").mkdir()  # a run still training: no final/ yet
    runs, skipped = sweep_runs(wspo)
    assert [(run.spec.name, run.gamma) for run in runs] == [("wspo gamma=0.1", 0.1), ("wspo gamma=0.7", 0.7)]
    assert list(skipped) == ["wspo gamma-9"] and "w2s_provenance.json" in skipped["wspo gamma-9"]
    systems = [SystemConfig("wspo", str(wspo / "final"), optional=True), SystemConfig("base", str(tmp_path / "b"))]
    config = EvalConfig(out_dir=str(tmp_path), wspo_dir=str(wspo), systems=systems)
    planned, sweep, skipped = plan(config)
    assert [(p.spec.name, p.gamma) for p in planned] == [("wspo", 0.3), ("base", None)]
    assert [p.gamma for p in sweep] == [0.1, 0.7] and list(skipped) == ["wspo gamma-9"]
    missing = EvalConfig(out_dir=str(tmp_path), wspo_dir=str(tmp_path / "none"), systems=systems, gamma_sweep=False)
    planned, sweep, skipped = plan(missing)
    assert [p.spec.name for p in planned] == ["wspo", "base"] and sweep == []
    systems[0].model = str(tmp_path / "none" / "final")
    planned, _, skipped = plan(missing)
    assert [p.spec.name for p in planned] == ["base"] and "no model at" in skipped["wspo"]


def test_a_sweep_over_another_loss_parameter_is_found_by_provenance_whatever_its_folders(tmp_path):
    """Runs are found by their provenance, not by `gamma-*` names: a sweep over `scale` of a toy loss, in folders
    named anyhow, is sorted and named by the parameter that varies."""
    wspo = tmp_path / "wspo"
    for folder, scale in (("run-b", 2.0), ("run-a", 0.5)):
        (wspo / folder / "final").mkdir(parents=True)
        (wspo / folder / "final" / "config.json").write_text("{}")
        loss = {"_component_": "my.Loss", "gamma": 0.1, "scale": scale}
        (wspo / folder / "final" / "w2s_provenance.json").write_text(json.dumps({"train": {"loss": loss}}))
    runs, skipped = sweep_runs(wspo)
    assert [(run.spec.name, run.parameter, run.gamma) for run in runs] == [
        ("wspo scale=0.5", "scale", 0.1),
        ("wspo scale=2", "scale", 0.1),
    ] and skipped == {}
