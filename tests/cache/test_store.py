"""`Cache`: opened from its manifest once, read through the registry, verified in every format."""

import json
import os
import random
import shutil

import numpy as np
import pytest

from tests.cache.helpers import rewrite_shard, synthetic_shard, write_synthetic_cache
from w2s.cache.store import Cache, verify_cache
from w2s.errors import CacheMismatch


@pytest.fixture
def cache_dir(tmp_path):
    return write_synthetic_cache(tmp_path / "c", shard_rows=(3, 4, 2))


def test_open_exposes_the_manifest(cache_dir):
    cache = Cache.open(cache_dir)
    assert cache.formats == ("parquet", "zarr")
    assert cache.totals["rows"] == 9 and [s["rows"] for s in cache.shards] == [3, 4, 2]
    assert cache.manifest == json.loads((cache_dir / "manifest.json").read_text())
    assert cache.provenance == {"num_shards": 1}
    assert cache.verify() == []


def test_open_refuses_a_missing_unreadable_or_unknown_manifest(tmp_path, cache_dir):
    with pytest.raises(CacheMismatch, match=r"no manifest\.json: not a finished cache"):
        Cache.open(tmp_path / "empty")
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    (cache_dir / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(CacheMismatch, match=r"schema version 99 is not one this w2s reads"):
        Cache.open(cache_dir)
    assert "schema version 99" in verify_cache(cache_dir)[0]
    (cache_dir / "manifest.json").write_text("{not json")
    with pytest.raises(CacheMismatch, match="not valid JSON"):
        Cache.open(cache_dir)


def test_read_shard_in_each_format_and_refuses_a_missing_one(tmp_path, cache_dir):
    cache = Cache.open(cache_dir)
    a, b = cache.read_shard(1), cache.read_shard(1, "zarr")
    assert a.row_id.tolist() == b.row_id.tolist() == [3, 4, 5, 6]
    np.testing.assert_array_equal(a.token_values["weak_log_ratio"], b.token_values["weak_log_ratio"])
    only_zarr = Cache.open(write_synthetic_cache(tmp_path / "z", formats=("zarr",)))
    assert only_zarr.formats == ("zarr",) and only_zarr.read_shard(0).num_rows == 3
    with pytest.raises(CacheMismatch, match=r"has no parquet store \(it was built with format=zarr\)"):
        only_zarr.read_shard(0, "parquet")


def test_first_rows_cross_shards_in_row_order(cache_dir):
    cache = Cache.open(cache_dir)
    rows = cache.first_rows(5)
    assert [row_id for row_id, _ in rows] == [0, 1, 2, 3, 4]
    second = cache.read_shard(1)
    assert rows[3][1] == second.sequence(0).tolist()
    assert len(cache.first_rows(100)) == 9


@pytest.mark.parametrize("fmt", ["parquet", "zarr"])
@pytest.mark.parametrize("damage", ["shuffled", "shifted"])
def test_verify_catches_wrong_row_ids_in_every_format(cache_dir, fmt, damage):
    shard = synthetic_shard(3, 4)
    shard.row_id = shard.row_id[[1, 0, 2, 3]] if damage == "shuffled" else shard.row_id + 1
    rewrite_shard(cache_dir, 1, fmt, shard)  # sizes and checksums match the manifest again
    problems = Cache.open(cache_dir).verify()
    assert len(problems) == 1
    assert f"shard-00001.{fmt}: row ids" in problems[0] and "do not match rows 3..6" in problems[0]


def test_verify_catches_a_changed_file_and_wrong_totals(cache_dir):
    victim = cache_dir / "parquet" / "shard-00002.parquet"
    victim.write_bytes(victim.read_bytes()[:-4] + b"0000")
    problems = Cache.open(cache_dir).verify()
    assert len(problems) == 1 and "shard-00002.parquet: sha256" in problems[0]
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    manifest["totals"]["rows"] = 10
    (cache_dir / "manifest.json").write_text(json.dumps(manifest))
    (problem,) = verify_cache(cache_dir)  # a manifest that disagrees with itself is refused by `open`
    assert "manifest.json: totals.rows is 10, but its shards sum to 9" in problem


def age(path, seconds=60):
    """Sets the modification time of a file, or of every file in a folder, `seconds` before the manifest's."""
    then = (path.parents[1] / "manifest.json").stat().st_mtime_ns - seconds * 10**9
    for file in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(file, ns=(then, then))


@pytest.mark.parametrize("fmt", ["parquet", "zarr"])
def test_cheap_levels_check_sizes_and_hash_what_changed_after_the_manifest(cache_dir, fmt):
    name = "shard-00001.parquet" if fmt == "parquet" else "shard-00001.zarr/weak_log_ratio/c/0"
    victim = cache_dir / fmt / name
    victim.write_bytes(victim.read_bytes()[:-4] + b"0000")  # same size, other bytes, newer than the manifest
    for level in ("sizes", "sample", "full"):
        problems = Cache.open(cache_dir).verify(level, sample=0)
        assert len(problems) == 1 and f"shard-00001.{fmt}: sha256" in problems[0], level
    age(cache_dir / fmt / f"shard-00001.{fmt}")  # the same damage with the mtime put back: only hashing finds it
    assert Cache.open(cache_dir).verify("sizes") == []
    for seed in range(6):  # a sample of one shard finds the damage exactly when it picks shard 1
        found = Cache.open(cache_dir).verify("sample", sample=1, seed=seed)
        assert bool(found) == (random.Random(seed).sample(range(3), 1) == [1])
    assert "sha256" in Cache.open(cache_dir).verify("sample", sample=3)[0]  # a sample of every shard
    assert "sha256" in Cache.open(cache_dir).verify("full")[0]
    assert "sha256" in verify_cache(cache_dir)[0]  # `w2s verify` stays a full check


def test_cheap_levels_still_check_sizes_and_missing_files(cache_dir):
    victim = cache_dir / "parquet" / "shard-00002.parquet"
    victim.write_bytes(victim.read_bytes() + b"x")
    age(victim)
    shutil.rmtree(cache_dir / "zarr" / "shard-00000.zarr")
    problems = Cache.open(cache_dir).verify("sizes")
    assert "shard-00000.zarr: missing" in problems[0]
    assert "shard-00002.parquet: " in problems[1] and "bytes, manifest says" in problems[1]


def test_a_schema_1_cache_opens_verifies_and_reads(cache_dir):
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    del manifest["layout"]
    (cache_dir / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 1}))
    cache = Cache.open(cache_dir)
    assert cache.layout.store == "full" and cache.layout.dtype == "float32"
    assert cache.verify() == [] and cache.read_shard(2).num_rows == 2


def test_the_manifest_records_the_layout(tmp_path):
    cache = Cache.open(write_synthetic_cache(tmp_path / "c", store="compact", dtype="bfloat16", with_strong_ref=True))
    layout = cache.manifest["layout"]
    assert layout["store"] == "compact" and [entry["name"] for entry in layout["fields"]] == [
        "row_id",
        "input_ids",
        "prompt_len",
        "weak_log_ratio",
        "logp_strong_ref",
    ]
    assert layout["fields"][3] == {
        "name": "weak_log_ratio",
        "kind": "token",
        "dtype": "bfloat16",
        "stored_as": "uint16 (the upper 16 bits of the float32)",
    }
    assert layout["encodings"]["parquet"]["columns"]["input_ids"] == "BYTE_STREAM_SPLIT"
    assert layout["encodings"]["parquet"]["compression"] == "zstd level 19"
    assert set(layout["encodings"]) == {"parquet", "zarr"}
    assert cache.verify() == [] and set(cache.read_shard(0, "zarr").token_values) == {
        "weak_log_ratio",
        "logp_strong_ref",
    }
