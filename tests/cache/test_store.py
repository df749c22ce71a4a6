"""`Cache`: opened from its manifest once, read through the registry, verified in every format."""

import json

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
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    manifest["totals"]["rows"] = 10
    (cache_dir / "manifest.json").write_text(json.dumps(manifest))
    problems = Cache.open(cache_dir).verify()
    assert "shard-00002.parquet: sha256" in problems[0]
    assert problems[1] == "shards hold 9 rows, manifest totals say 10"
