"""A cache read from any fsspec filesystem: `Cache.open`, `verify`, both formats, the trainer's reader and a few
training steps, from a `memory://` copy and a `file://` URL, against the same cache read as a plain folder."""

import uuid

import fsspec
import numpy as np
import pytest

from tests.cache.helpers import build, write_synthetic_cache
from w2s.cache.fs import Place
from w2s.cache.store import Cache
from w2s.errors import CacheMismatch
from w2s.io import sha256_dir
from w2s.train.reader import CacheReader, Position


@pytest.fixture
def memory():
    """A fresh folder on fsspec's in-memory filesystem (process-wide): its URL, removed after the test."""
    fs, root = fsspec.filesystem("memory"), f"/w2s-{uuid.uuid4().hex[:8]}"
    yield f"memory://{root}", fs, root
    fs.rm(root, recursive=True)


def upload(local, memory):
    url, fs, root = memory
    fs.put(str(local), root, recursive=True)
    return url


@pytest.fixture
def synthetic(tmp_path):
    return write_synthetic_cache(tmp_path / "c", shard_rows=(3, 4, 2), with_strong_ref=True)


def test_a_cache_on_another_filesystem_opens_verifies_and_reads_like_the_folder(synthetic, memory):
    url = upload(synthetic, memory)
    local, remote = Cache.open(synthetic), Cache.open(url)
    assert remote.path == url and remote.manifest == local.manifest and remote.place.remote
    assert remote.verify("full") == [] and remote.verify("sample", seed=0) == []
    for fmt in ("parquet", "zarr"):
        assert isinstance(remote.shard_path(1, fmt), str) and remote.shard_path(1, fmt).startswith("memory://")
        a, b = local.read_shard(1, fmt), remote.read_shard(1, fmt)
        np.testing.assert_array_equal(a.input_ids, b.input_ids)
        for name in a.token_values:
            np.testing.assert_array_equal(a.token_values[name], b.token_values[name])
    zarr_shard = local.shards[0]["files"]["zarr"]["name"]  # a folder: hashed the same way on both filesystems
    assert Place.of(url).sha256(zarr_shard) == sha256_dir(synthetic / zarr_shard, "**/*")


def test_a_damaged_remote_cache_is_reported_one_line_naming_the_url(synthetic, memory):
    url, fs, root = memory
    upload(synthetic, memory)
    name = Cache.open(url).shards[1]["files"]["parquet"]["name"]
    data = bytearray(fs.cat(f"{root}/{name}"))
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the checksum can tell
    fs.pipe(f"{root}/{name}", bytes(data))
    problems = Cache.open(url).verify("full")
    assert len(problems) == 1 and problems[0].startswith(f"{url}/{name}: sha256") and "\n" not in problems[0]
    fs.rm(f"{root}/manifest.json")
    with pytest.raises(CacheMismatch, match=f"^{url}: no manifest.json"):
        Cache.open(url)


def test_a_url_fsspec_cannot_reach_is_refused_in_one_line():
    with pytest.raises(CacheMismatch, match="^nosuchfs://bucket/cache: fsspec cannot open this URL") as caught:
        Cache.open("nosuchfs://bucket/cache")
    assert "\n" not in str(caught.value)


def test_a_file_url_is_the_local_folder(synthetic):
    cache = Cache.open(f"file://{synthetic}")
    assert cache.path == synthetic and not cache.place.remote and cache.verify("full") == []


def test_the_trainers_reader_streams_the_same_batches_from_a_url(synthetic, memory):
    url = upload(synthetic, memory)
    for fmt in ("parquet", "zarr"):
        batches = [
            [batch for batch, _ in CacheReader(where, fmt, seed=1, micro_batch_size=2).micro_batches(Position())]
            for where in (synthetic, url, f"file://{synthetic}")
        ]
        assert len(batches[0]) == 4
        for a, b, c in zip(*batches):
            for key in a:
                assert a[key].tolist() == b[key].tolist() == c[key].tolist()


@pytest.mark.integration
def test_training_streams_a_cache_from_memory_and_from_a_file_url(micro_world, tmp_path, memory):
    from w2s.train.config import TrainConfig
    from w2s.train.metrics import read_metrics
    from w2s.train.recipe import run

    cache = tmp_path / "cache"
    build(micro_world, cache, strong_ref=str(micro_world / "strong_base"))
    url = upload(cache, memory)
    losses = []
    for name, where in (("memory", url), ("file", f"file://{cache}")):
        config = TrainConfig(
            out_dir=str(tmp_path / name),
            cache_dir=where,
            policy=str(micro_world / "strong_base"),
            micro_batch_size=4,
            grad_accum=1,
            lr=1e-3,
            max_steps=2,
            seed=0,
        )
        (summary,) = run(config)
        assert summary["steps"] == 2
        losses.append([row["loss"] for row in read_metrics(tmp_path / name)])
    assert len(losses[0]) == 2 and losses[0] == losses[1]  # the same rows, in the same order, from either place
