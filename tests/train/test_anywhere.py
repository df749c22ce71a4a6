"""`w2s train` from any directory: DeepSpeed settings built from the train section, a named JSON honoured (or
found among the configs shipped with w2s), mistakes refused in one line, and the configs inside the wheel.
`w2s train` itself, run from an empty folder, is in test_launchers.py (it is the launchers' 1-process baseline)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from w2s.config import SHIPPED_CONFIGS
from w2s.errors import ConfigError
from w2s.train.config import TrainConfig
from w2s.train.engine import deepspeed_settings

REPO = Path(__file__).resolve().parents[2]
LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")


def test_settings_are_built_from_the_train_section():
    settings = deepspeed_settings(TrainConfig(micro_batch_size=2, grad_accum=3, lr=2e-5, clip=0.5), world_size=4)
    assert settings["zero_optimization"] == {"stage": 0}
    assert (settings["train_batch_size"], settings["gradient_clipping"]) == (24, 0.5)
    assert settings["optimizer"]["params"]["lr"] == 2e-5 and settings["optimizer"]["params"]["torch_adam"]
    offloaded = deepspeed_settings(TrainConfig(zero_stage=3, offload="cpu", precision="bf16"), world_size=1)
    zero = offloaded["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_optimizer"]["device"] == "cpu"
    assert zero["stage3_gather_16bit_weights_on_model_save"] and offloaded["bf16"] == {"enabled": True}
    assert offloaded["optimizer"]["params"]["torch_adam"] is False  # DeepSpeed's CPU Adam for the offloaded states


def test_a_named_json_is_read_from_the_working_directory_then_from_the_shipped_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert deepspeed_settings(TrainConfig(deepspeed_config="mine.json"), 1)["zero_optimization"] == {"stage": 2}
    shipped = deepspeed_settings(TrainConfig(deepspeed_config="configs/ds_zero3_offload.json"), 1)
    assert shipped["zero_optimization"]["offload_optimizer"]["device"] == "cpu"  # no configs/ here: the shipped one
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "ds_zero3_offload.json").write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    local = deepspeed_settings(TrainConfig(deepspeed_config="configs/ds_zero3_offload.json"), 1)
    assert local["zero_optimization"] == {"stage": 1}  # a file in the working directory wins


def test_mistakes_are_refused_naming_the_field(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^train\.deepspeed_config: configs/ds_zero9\.json: no such file"):
        deepspeed_settings(TrainConfig(deepspeed_config="configs/ds_zero9.json"), 1)
    (tmp_path / "bad.json").write_text("{stage: 3")
    with pytest.raises(ConfigError, match=r"^train\.deepspeed_config: .*bad\.json: not a JSON file"):
        deepspeed_settings(TrainConfig(deepspeed_config="bad.json"), 1)
    with pytest.raises(ConfigError, match=r"^train\.zero_stage: must be 0, 1, 2 or 3, got 4"):
        TrainConfig(zero_stage=4)
    with pytest.raises(ConfigError, match=r"^train\.offload: .*set train\.zero_stage to 1, 2 or 3"):
        TrainConfig(offload="cpu")
    with pytest.raises(ConfigError, match=r"^train\.lora: LoRA with ZeRO stage 3 is not supported"):
        TrainConfig(lora=True, zero_stage=3)
    with pytest.raises(ConfigError, match=r"^train\.deepspeed_config: x\.json decides the ZeRO stage"):
        TrainConfig(deepspeed_config="x.json", zero_stage=3)


def test_the_configs_ship_inside_the_wheel(tmp_path):
    """The wheel built from pyproject.toml holds configs/ as w2s/configs/, beside w2s/config.py, where
    SHIPPED_CONFIGS looks once installed."""
    source = tmp_path / "src"
    source.mkdir()
    names = ("pyproject.toml", "README.md", "w2s", "cache", "train", "eval", "schemas", "world", "search", "science")
    names += ("configs",)
    for name in names:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    done = subprocess.run([*pip, str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = tmp_path.glob("w2s-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    assert "w2s/train/engine.py" in inside
    for config in sorted(SHIPPED_CONFIGS.glob("ds_*.json")) + sorted(SHIPPED_CONFIGS.glob("*.yaml")):
        assert f"w2s/configs/{config.name}" in inside, config.name
    assert SHIPPED_CONFIGS == REPO / "configs"  # in a checkout, the repository's own


def test_a_missing_json_is_refused_in_one_line_before_anything_starts(tmp_path, monkeypatch, capsys):
    from w2s.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", f"out_dir={tmp_path / 'x'}", "deepspeed_config=ds.json"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"w2s train: train.deepspeed_config: ds.json: no such file (from {tmp_path}); name an existing JSON, or "
        "leave it empty to build the DeepSpeed settings from train.zero_stage and train.offload"
    ]
    assert list(tmp_path.iterdir()) == []
