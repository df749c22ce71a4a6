"""The eval section: declared systems, their params and engines, the task mapping, refused at load time."""

from __future__ import annotations

import pytest

from w2s.config import ConfigError, from_dict
from w2s.eval.config import EvalConfig, SystemConfig, default_systems


def test_default_systems_are_the_readme_comparison_in_report_order():
    systems = default_systems()
    assert [s.name for s in systems] == [
        "weak_base",
        "weak_aligned",
        "strong_base",
        "wspo",
        "strong_base+search",
        "strong_base+bon",
    ]
    assert [s.generator for s in systems] == ["sample"] * 4 + ["cbs", "bon"]
    assert systems[4].params == {"width": 2, "num_samples": 4, "chunk_len": 8} and systems[5].params == {"n": 9}
    assert systems[3].optional and not any(s.optional for s in systems[:3] + systems[4:])


def test_systems_load_from_a_mapping_and_bad_ones_are_refused_with_their_key():
    config = from_dict(
        EvalConfig,
        {
            "systems": [
                {"name": "eft", "model": "m", "generator": "eft", "params": {"beta": 1}},
                {
                    "name": "cbs",
                    "model": "m",
                    "generator": "cbs",
                    "engine": "vllm",
                    "params": {"width": 2, "num_samples": 3.0, "chunk_len": 4},
                },
            ]
        },
    )
    assert config.systems[0].params == {"beta": 1.0} and config.systems[1].params["num_samples"] == 3
    refusals = [
        (dict(generator="eft", engine="vllm", params={"beta": 1.0}), r"eval.systems\[s\].engine: eft needs engine hf"),
        (dict(generator="beam"), r"generator: unknown search 'beam': use one of sample, cbs, bon, eft"),
        (dict(generator="bon", params={"m": 2}), r"params: bon takes \['n', 'rank'\]; unknown \['m'\]"),
        (dict(generator="bon", params={"n": 0}), r"params.n: must be an integer >= 1"),
        (dict(generator="bon", params={"n": 2.5}), r"params.n: must be an integer >= 1"),
        (dict(generator="sample", params={"n": 2}), r"unknown \['n'\]"),
        (dict(generator="eft", params={"beta": float("nan")}), r"params.beta: must be a finite number"),
        (dict(engine="trt"), r"'trt' is not one of"),
    ]
    for fields, message in refusals:
        with pytest.raises(ConfigError, match=message):
            from_dict(EvalConfig, {"systems": [dict(name="s", model="m", **fields)]})


def test_left_out_params_take_the_papers_defaults():
    config = from_dict(
        EvalConfig, {"systems": [{"name": "s", "model": "m", "generator": "cbs", "params": {"width": 4}}]}
    )
    assert config.systems[0].params == {"width": 4, "num_samples": 2, "chunk_len": 30}
    assert SystemConfig("b", "m", "bon").params == {"n": 4} and SystemConfig("e", "m", "eft").params == {"beta": 1.0}


def test_run_selects_declared_systems_and_refuses_unknown_names():
    config = EvalConfig(run=["strong_base+bon", "weak_base"])
    assert [s.name for s in config.selected()] == ["weak_base", "strong_base+bon"]  # declared order
    with pytest.raises(ConfigError, match=r"eval.run: unknown system\(s\) \['gpt5'\]"):
        EvalConfig(run=["gpt5"])
    with pytest.raises(ConfigError, match="names must be unique"):
        EvalConfig(systems=[SystemConfig("a", "m"), SystemConfig("a", "n")])


def test_a_task_mapping_without_component_updates_the_default_task():
    config = from_dict(EvalConfig, {"task": {"path": "elsewhere/test.jsonl"}})
    assert config.task == {
        "_component_": "w2s.world.task.SummaryTask",
        "path": "elsewhere/test.jsonl",
        "l_min": 20,
        "l_max": 30,
    }
    other = from_dict(EvalConfig, {"task": {"_component_": "my.tasks.Other", "prompts": "p.jsonl"}})
    assert other.task == {"_component_": "my.tasks.Other", "prompts": "p.jsonl"}
    with pytest.raises(ConfigError, match="eval.task._component_"):
        EvalConfig(task={"_component_": ""})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("max_new_tokens", 0, "must be >= 1"),
        ("num_examples", 0, "must be >= 1"),
        ("temperature", -1.0, "must be >= 0"),
        ("temperature", float("inf"), "must be a finite number"),
        ("top_k", -1, "must be >= 0"),
        ("top_p", 0.0, "must be > 0"),
        ("top_p", 1.5, "must be in"),
        ("num_shown", -1, "must be >= 0"),
    ],
)
def test_out_of_range_settings_are_refused_at_load_time(key, value, message):
    with pytest.raises(ConfigError, match=f"eval.{key}: {message}"):
        from_dict(EvalConfig, {key: value})


def test_an_evals_identity_spells_the_prompt_set_as_before_the_data_source_section():
    """A finished eval made when a task's prompt set was `prompts: <path>` beside `id_field: ...` still counts as
    the same eval (the science drivers reuse it instead of sampling again); another prompt set does not."""
    from w2s.eval.config import EvalConfig
    from w2s.eval.run import eval_identity

    def identity(prompts) -> dict:
        return eval_identity(EvalConfig(task={"_component_": "length", "prompts": prompts}))["task"]

    assert identity({"path": "p.jsonl", "id_field": "id"}) == {"_component_": "length", "prompts": "p.jsonl",
                                                               "id_field": "id"}  # fmt: skip
    assert identity("p.jsonl") == {"_component_": "length", "prompts": "p.jsonl"}
    assert identity({"path": "p.jsonl", "id_field": "key"}) != identity({"path": "p.jsonl", "id_field": "id"})
