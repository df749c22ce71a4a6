"""A config means exactly what it says: a key given twice, a boolean for a number, an override text that YAML would
turn into something else, and a number outside the range its setting allows are each refused or kept as typed,
never silently reread."""

from __future__ import annotations

import dataclasses
import re
import typing

import pytest

from w2s.config import ConfigError, load_config
from w2s.settings import Settings


def number_keys(cls: type = Settings, prefix: str = "") -> list[tuple[str, type]]:
    """Every int and float setting of a config tree, as (dotted key, type)."""
    hints, keys = typing.get_type_hints(cls), []
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            keys += number_keys(hint, f"{prefix}{field.name}.")
        elif hint in (int, float):
            keys.append((f"{prefix}{field.name}", hint))
    return keys


def test_a_key_given_twice_is_refused_naming_the_file_line_and_key(tmp_path):
    nested = tmp_path / "nested.yaml"
    nested.write_text("world:\n  seed: 1\n  weak:\n    steps: 3\n    lr: 0.1\n    steps: 4\n")
    with pytest.raises(ConfigError, match=r"nested\.yaml: line 6: key 'steps' is given twice \(first on line 4\)"):
        load_config(Settings, nested)
    top = tmp_path / "top.yaml"
    top.write_text("train:\n  lr: 0.001\ncache:\n  max_len: 64\ntrain:\n  gamma: 0.5\n")
    with pytest.raises(ConfigError, match=r"top\.yaml: line 5: key 'train' is given twice \(first on line 1\)"):
        load_config(Settings, top)
    anchors = tmp_path / "anchors.yaml"  # a merge key may redefine what it merges: that is not a key given twice
    anchors.write_text("world:\n  weak: &shape {steps: 3, lr: 0.1}\n  strong:\n    <<: *shape\n    steps: 9\n")
    assert load_config(Settings, anchors).world.strong.steps == 9


@pytest.mark.parametrize(
    "where, text",
    [
        ("override", "train.max_steps=true"),
        ("override", "train.lr=yes"),
        ("override", "cache.rows_per_shard=on"),
        ("file", "train:\n  epochs: true\n"),
        ("file", "world:\n  weak:\n    lr: yes\n"),
    ],
)
def test_a_boolean_is_not_taken_for_a_number(tmp_path, where, text):
    path = None
    if where == "file":
        path = tmp_path / "c.yaml"
        path.write_text(text)
    with pytest.raises(ConfigError, match=r"expected (int|float), got True \(a boolean, not a number\)"):
        load_config(Settings, path, [text] if where == "override" else [])


def test_an_override_of_a_text_setting_is_the_text_typed_and_other_settings_still_parse():
    settings = load_config(
        Settings,
        None,
        [
            "cache.data.path=007",
            "generate.prompts=42",
            "generate.name=1e3",
            "train.out_dir=null",
            "eval.wspo_dir=true",
            "cache.data.split=[train]",
            "cache.data.prompt_field= 0x10 ",
            "train.max_steps=12",
            "train.gamma=5e-1",
            "train.gammas=[0.1, 0.2]",
            "train.lora=yes",
            "eval.task={_component_: w2s.world.task.SummaryTask, path: p.jsonl, l_min: 3, l_max: 9}",
        ],
    )
    assert settings.cache.data.path == "007" and settings.generate.prompts.path == "42"
    assert settings.generate.name == "1e3"
    assert settings.train.out_dir == "null"
    assert settings.eval.wspo_dir == "true"
    assert settings.cache.data.split == "[train]"
    assert settings.cache.data.prompt_field == "0x10"
    assert (
        settings.train.max_steps == 12
        and settings.train.loss["gamma"] == 0.5
        and settings.train.sweep == {"gamma": [0.1, 0.2]}
    )
    assert settings.train.lora is True
    assert settings.eval.task["l_min"] == 3


def test_every_number_setting_is_range_checked_at_load_naming_its_key():
    keys = number_keys()
    assert len(keys) > 50
    for key, kind in keys:  # far outside any range, and not a number at all
        for value in ["-1000000000000"] + ([".nan", ".inf"] if kind is float else []):
            with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: .* \(set on the command line\)$"):
                load_config(Settings, None, [f"{key}={value}"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lora_alpha=0", r"train.lora_alpha: must be at least 1, got 0"),
        ("train.weight_decay=-0.01", r"train.weight_decay: must be >= 0"),
        ("train.seed=-1", r"train.seed: must be in \[0, 2\*\*31\), got -1"),
        ("eval.seed=4294967296", r"eval.seed: must be in \[0, 2\*\*31\)"),
        ("generate.vllm.dtype=int8", r"generate.vllm.dtype: must be one of \['auto', 'float32'"),
        ("eval.vllm.max_len=-1", r"eval.vllm.max_len: must be >= 0 \(0: the model's own\), got -1"),
        ("world.vocab_size=5", r"world.vocab_size: must be in \[259, 65536\]"),
        ("world.vocab_size=1000000000", r"world.vocab_size: must be in \[259, 65536\]"),
        ("world.max_facts=9", r"world.max_facts: must be at most 8"),
        ("world.strong.lr=0", r"world.strong.lr: must be > 0"),
        ("world.weak.hidden_size=100", r"world.weak.hidden_size: must be a positive multiple of 64"),
        ("world.l_min=-1", r"world.l_min: must be >= 0, got -1"),
        ("cache.device=gpu0", r"cache.device: must be auto, cpu, cuda, cuda:<index> or mps, got 'gpu0'"),
    ],
)
def test_settings_that_would_silently_do_nothing_or_break_later_are_refused_with_their_range(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Settings, None, [override])


def test_cache_merge_refuses_two_names_for_the_cache(capsys):
    from w2s.cli import main

    assert main(["cache", "merge", "runs/a", "cache.out_dir=runs/b"]) == 2
    assert "name the cache once" in capsys.readouterr().err
