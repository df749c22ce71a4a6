"""The run root and load-time validation: folders named once, bad values refused before any model loads."""

import pytest

from w2s.cli import main
from w2s.config import ConfigError, load_config
from w2s.settings import Settings


def test_stage_folders_derive_from_the_run_root():
    settings = load_config(Settings, None, ["run_root=/data/exp1"])
    assert settings.world.out_dir == "/data/exp1/world"
    assert settings.cache.out_dir == settings.train.cache_dir == "/data/exp1/cache"
    assert settings.cache.weak_base == "/data/exp1/world/weak_base"
    assert settings.train.policy == "/data/exp1/world/strong_base"
    assert settings.train.out_dir == "/data/exp1/wspo"


def test_explicit_paths_are_kept_and_a_moved_cache_is_followed_by_train():
    settings = load_config(Settings, None, ["cache.out_dir=/fast/cache", "train.policy=/models/qwen"])
    assert settings.train.cache_dir == "/fast/cache" and settings.train.policy == "/models/qwen"
    assert settings.world.out_dir == "runs/tiny/world"


def test_a_placeholder_that_names_a_later_folder_is_refused():
    with pytest.raises(ConfigError, match=r"world.out_dir.*\{cache\}"):
        load_config(Settings, None, ["world.out_dir={cache}/w"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.mode=offline", r"train.mode: 'offline' is not one of \['cached', 'online'\]"),
        ("cache.storage_dtype=int8", r"cache.storage_dtype: 'int8' is not one of"),
        ("cache.format=lance", r"cache.format: unknown cache format 'lance'"),
        ("train.gamma=.nan", r"train.gamma: must be a finite number"),
        ("train.gamma=0", r"train.gamma: must be > 0"),
        ("train.lr=.inf", r"train.lr: must be a finite number"),
        ("train.lr=-1e-5", r"train.lr: must be > 0"),
        ("train.epochs=0", r"train.epochs: must be at least 1"),
        ("train.micro_batch_size=0", r"train.micro_batch_size: must be at least 1"),
        ("train.gammas=[0.1,.nan]", r"train.gammas\[1\]: must be a finite number"),
        ("train.clip=-1", r"train.clip: must be >= 0"),
        ("cache.rows_per_shard=0", r"cache.rows_per_shard: must be at least 1"),
        ("cache.shard_index=3", r"cache.shard_index: 3 is outside \[0, num_shards=1\)"),
    ],
)
def test_bad_values_are_refused_at_load_time_with_their_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Settings, None, [override])


def test_cli_refuses_a_bad_enum_before_touching_the_output_folder(tmp_path, capsys):
    out = tmp_path / "cache"
    assert main(["cache", f"out_dir={out}", "storage_dtype=int8"]) == 2
    assert "cache.storage_dtype" in capsys.readouterr().err
    assert not out.exists()
