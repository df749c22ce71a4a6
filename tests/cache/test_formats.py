"""The format registry: built-in formats round-trip a shard, an unknown name is refused, and a third format
needs one class and one `register` call (here an .npz format defined in this file)."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cache.helpers import build, synthetic_shard
from w2s.cache.build import check_config
from w2s.cache.config import CacheConfig
from w2s.cache.formats import FORMATS, format_names, formats_for, get_format
from w2s.cache.store import Cache
from w2s.errors import ConfigError
from w2s.schemas.cache import (
    TRAINING_FIELDS,
    Layout,
    ShardData,
    from_storage,
    shard_arrays,
    shard_from_arrays,
    shard_name,
    temporary_path,
    to_storage,
)
from w2s.train.reader import CacheReader, Position


class NpzFormat:
    """A toy third format: one numpy .npz file per shard, written and read with numpy alone."""

    name = "npz"

    def write(self, shard: ShardData, path, layout: Layout) -> None:
        arrays = {name: np.asarray(values) for name, values in shard_arrays(shard, layout).items()}
        tmp = temporary_path(path)
        with open(tmp, "wb") as handle:
            np.savez(handle, w2s_layout=json.dumps(layout.describe()), **arrays)
        os.replace(tmp, path)

    def read(self, path, columns=None) -> ShardData:
        with np.load(path) as stored:
            layout = Layout.from_description(json.loads(str(stored["w2s_layout"])))
            return shard_from_arrays({k: stored[k] for k in stored.files if k != "w2s_layout"}, layout)


@pytest.fixture
def npz_format():
    FORMATS.register("npz")(NpzFormat)
    yield NpzFormat()
    FORMATS.unregister("npz")


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
    get_format(fmt).write(shard, path, Layout("full", "float32", with_strong_ref=True))
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
        FORMATS.register("parquet")(NpzFormat)


def test_a_registered_format_is_known_everywhere(npz_format, tmp_path):
    assert "npz" in format_names() and [type(f) for f in formats_for("npz")] == [NpzFormat]
    shard = synthetic_shard(0, 4)
    path = tmp_path / shard_name(0, "npz")
    path.parent.mkdir()
    npz_format.write(shard, path, Layout())
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


@pytest.mark.parametrize("fmt", ["parquet", "zarr", "npz"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_the_compact_store_holds_only_what_training_reads(npz_format, fmt, dtype, tmp_path):
    shard = synthetic_shard(10, 6, with_strong_ref=True)
    path = tmp_path / shard_name(0, fmt)
    path.parent.mkdir()
    get_format(fmt).write(shard, path, Layout("compact", dtype, with_strong_ref=True))
    back = get_format(fmt).read(path)
    assert set(back.token_values) == {"weak_log_ratio", "logp_strong_ref"}
    assert back.example_id == [] and len(back.weak_seq_reward) == 0  # not stored
    for name in ("row_id", "input_ids", "input_offsets", "prompt_len", "response_len", "offsets"):
        np.testing.assert_array_equal(getattr(back, name), getattr(shard, name), err_msg=name)  # derived ones too
    for name, values in back.token_values.items():
        np.testing.assert_array_equal(values, from_storage(to_storage(shard.token_values[name], dtype), dtype))
        assert values.dtype == np.float32
    part = get_format(fmt).read(path, columns=["row_id", "weak_log_ratio", "example_id"])  # one not stored
    np.testing.assert_array_equal(part.offsets, shard.offsets)
    np.testing.assert_array_equal(part.token_values["weak_log_ratio"], back.token_values["weak_log_ratio"])


def test_parquet_columns_are_plain_and_encoded_per_column(tmp_path):
    """The full store stays plain Parquet (names, list<float> types); floats skip the dictionary, ids use it."""
    shard = synthetic_shard(0, 8)
    path = tmp_path / "full.parquet"
    get_format("parquet").write(shard, path, Layout("full", "float32"))
    table = pq.read_table(path)  # plain pyarrow, no w2s
    assert table.schema.field("logp_weak_base").type == pa.list_(pa.float32())
    assert table["weak_log_ratio"].to_pylist()[0] == pytest.approx(shard.values(0)["weak_log_ratio"].tolist())
    metadata = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {metadata.column(i).path_in_schema: metadata.column(i).encodings for i in range(metadata.num_columns)}
    assert "BYTE_STREAM_SPLIT" in encodings["logp_weak_base.list.element"]
    assert not any("DICTIONARY" in e for e in encodings["logp_weak_base.list.element"])
    assert not any("DICTIONARY" in encoding for column in encodings.values() for encoding in column)
    assert set(encodings["input_ids.list.element"]) == {"PLAIN", "RLE"}  # RLE: the list levels
    assert "DELTA_BINARY_PACKED" in encodings["row_id"]
    compact = tmp_path / "compact.parquet"
    get_format("parquet").write(shard, compact, Layout("compact", "bfloat16"))
    metadata = pq.ParquetFile(compact).metadata.row_group(0)
    assert "BYTE_STREAM_SPLIT" in metadata.column(1).encodings  # the ids, in the compact store
    plain = pq.read_table(compact)
    assert plain.column_names == list(TRAINING_FIELDS[:-1])  # no strong reference cached here
    bits = np.asarray(plain["weak_log_ratio"].combine_chunks().values)  # docs/cache.md's decoding, by hand
    decoded = (bits.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_allclose(decoded, shard.token_values["weak_log_ratio"], rtol=2**-8)


@pytest.mark.parametrize("fmt", ["parquet", "zarr"])
def test_a_schema_1_shard_still_reads(fmt, tmp_path):
    """Shards written before the layout existed: Parquet with pyarrow's default options and no layout metadata,
    Zarr without the layout attribute."""
    shard = synthetic_shard(0, 5, with_strong_ref=True)
    path = tmp_path / shard_name(0, fmt)
    path.parent.mkdir()
    get_format(fmt).write(shard, path, Layout("full", "float16", with_strong_ref=True))
    if fmt == "parquet":
        table = pq.read_table(path)
        pq.write_table(table.replace_schema_metadata({"w2s_schema_version": "1"}), path, compression="zstd")
    else:
        attrs = json.loads((path / "zarr.json").read_text())
        del attrs["attributes"]["w2s_layout"]
        (path / "zarr.json").write_text(json.dumps(attrs))
    back = get_format(fmt).read(path)
    assert set(back.token_values) == {"logp_weak_base", "logp_weak_aligned", "weak_log_ratio", "logp_strong_ref"}
    np.testing.assert_array_equal(
        back.token_values["weak_log_ratio"], to_storage(shard.token_values["weak_log_ratio"], "float16")
    )
    assert back.example_id == shard.example_id


@pytest.mark.parametrize(
    "override, message",
    [
        ("cache.store=tiny", r"cache.store: 'tiny' is not one of \['full', 'compact'\]"),
        ("cache.storage_dtype=bfloat16", r"cache.storage_dtype: bfloat16 .* use it with cache.store=compact"),
    ],
)
def test_the_store_and_its_dtype_are_checked_at_load_time(override, message):
    from w2s.config import load_config
    from w2s.settings import Settings

    with pytest.raises(ConfigError, match=message):
        load_config(Settings, None, [override])
    assert load_config(Settings, None, ["cache.store=compact", "cache.storage_dtype=bfloat16"]).cache.store == "compact"
