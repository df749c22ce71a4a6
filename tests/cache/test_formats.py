"""The format registry: built-in formats round-trip a shard, an unknown name is refused, and a third format
needs one class and one `register` call (here an .npz format defined in this file)."""

import os

import numpy as np
import pytest

from tests.cache.helpers import build, synthetic_shard
from w2s.cache.build import check_config
from w2s.cache.config import CacheConfig
from w2s.cache.formats import format_names, formats_for, get_format, register, unregister
from w2s.cache.store import Cache
from w2s.errors import ConfigError
from w2s.schemas.cache import ShardData, shard_name, temporary_path
from w2s.train.reader import CacheReader, Position


class NpzFormat:
    """A toy third format: one numpy .npz file per shard, written and read with numpy alone."""

    name = "npz"

    def write(self, shard: ShardData, path, dtype) -> None:
        tokens = {f"token.{name}": values.astype(dtype) for name, values in shard.token_values.items()}
        tmp = temporary_path(path)
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                row_id=shard.row_id,
                example_id=np.array(shard.example_id),
                input_ids=shard.input_ids,
                input_offsets=shard.input_offsets,
                prompt_len=shard.prompt_len,
                response_len=shard.response_len,
                weak_seq_reward=shard.weak_seq_reward,
                offsets=shard.offsets,
                **tokens,
            )
        os.replace(tmp, path)

    def read(self, path, columns=None) -> ShardData:
        with np.load(path) as arrays:
            plain = {k: arrays[k] for k in arrays.files if not k.startswith("token.") and k != "example_id"}
            tokens = {k[len("token.") :]: arrays[k].astype(np.float32) for k in arrays.files if k.startswith("token.")}
            return ShardData(example_id=arrays["example_id"].tolist(), token_values=tokens, **plain)


@pytest.fixture
def npz_format():
    fmt = register(NpzFormat())
    yield fmt
    unregister(fmt.name)


def assert_same_shard(a: ShardData, b: ShardData) -> None:
    assert a.example_id == b.example_id and a.token_values.keys() == b.token_values.keys()
    for name in ("row_id", "input_ids", "input_offsets", "prompt_len", "response_len", "weak_seq_reward", "offsets"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for name in a.token_values:
        np.testing.assert_array_equal(a.token_values[name], b.token_values[name], err_msg=name)


@pytest.mark.parametrize("fmt", ["parquet", "zarr"])
def test_built_in_formats_round_trip_a_shard(fmt, tmp_path):
    shard = synthetic_shard(10, 5, with_strong_ref=True)
    path = tmp_path / shard_name(0, fmt)
    path.parent.mkdir()
    get_format(fmt).write(shard, path, "float32")
    assert_same_shard(get_format(fmt).read(path), shard)
    assert not list(path.parent.glob(".*tmp*"))  # written under a temporary name, then renamed
    part = get_format(fmt).read(path, columns=["row_id", "input_ids"])
    assert part.row_id.tolist() == list(range(10, 15)) and part.token_values == {}
    np.testing.assert_array_equal(part.input_ids, shard.input_ids)


def test_an_unknown_format_is_refused_with_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown cache format 'lance': this w2s knows parquet, zarr"):
        get_format("lance")
    with pytest.raises(ConfigError, match="unknown cache format 'lance'"):
        check_config(CacheConfig(out_dir=str(tmp_path), format="lance"))
    assert [f.name for f in formats_for("both")] == ["parquet", "zarr"]
    with pytest.raises(ValueError, match="already registered"):
        register(get_format("parquet"))


def test_a_registered_format_is_known_everywhere(npz_format, tmp_path):
    assert "npz" in format_names() and formats_for("npz") == (npz_format,)
    shard = synthetic_shard(0, 4)
    path = tmp_path / shard_name(0, "npz")
    path.parent.mkdir()
    npz_format.write(shard, path, "float32")
    assert_same_shard(get_format("npz").read(path), shard)


@pytest.mark.integration
def test_a_build_in_a_third_format_is_read_back_through_cache(npz_format, micro_world, tmp_path):
    build(micro_world, tmp_path / "p", format="parquet")
    build(micro_world, tmp_path / "n", format="npz")
    parquet, npz = Cache.open(tmp_path / "p"), Cache.open(tmp_path / "n")
    assert npz.formats == ("npz",) and (tmp_path / "n" / "npz" / "shard-00000.npz").is_file()
    assert npz.verify() == []
    for index in range(len(parquet.shards)):
        assert_same_shard(npz.read_shard(index), parquet.read_shard(index))
    reader = CacheReader(npz, "npz", seed=1, micro_batch_size=4)
    batch, _ = next(reader.micro_batches(Position()))
    assert batch["weak_log_ratio"].shape == batch["mask"].shape
