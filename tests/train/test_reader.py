import numpy as np
import pytest

from tests.cache.helpers import build, rewrite_shard, synthetic_shard, write_synthetic_cache
from w2s.cache.store import Cache
from w2s.errors import CacheMismatch
from w2s.train.reader import CacheReader, Position, collate, epoch_order


def test_order_is_a_pure_function_of_seed_and_epoch():
    rows = [5, 3, 7, 2]
    a, b = epoch_order(rows, 1, 0, 2), epoch_order(rows, 1, 0, 2)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, epoch_order(rows, 1, 1, 2))
    assert not np.array_equal(a, epoch_order(rows, 2, 0, 2))
    pairs = {tuple(p) for p in a}
    assert len(pairs) == sum(rows) and pairs == {(s, r) for s, n in enumerate(rows) for r in range(n)}


def test_collate_places_values_on_target_positions():
    row = {
        "row_id": 3,
        "input_ids": np.array([5, 6, 7, 8, 9], dtype=np.int32),
        "prompt_len": 3,
        "values": {"weak_log_ratio": np.array([0.5, -1.0], dtype=np.float32)},
    }
    short = {
        **row,
        "row_id": 4,
        "input_ids": np.array([5, 6, 7], dtype=np.int32),
        "prompt_len": 2,
        "values": {"weak_log_ratio": np.array([2.0], dtype=np.float32)},
    }
    batch = collate([row, short])
    assert batch["mask"].tolist() == [[0, 0, 1, 1], [0, 1, 0, 0]]
    assert batch["weak_log_ratio"].tolist() == [[0, 0, 0.5, -1.0], [0, 2.0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]


@pytest.fixture(scope="module")
def small_cache(micro_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("reader") / "c"
    build(micro_world, out, rows_per_shard=6)
    return out


def rows_seen(reader, position):
    return [b["row_id"].tolist() for b, _ in reader.micro_batches(position)]


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["parquet", "zarr"])
def test_ranks_split_rows_without_overlap(small_cache, fmt):
    ranks = [
        CacheReader(small_cache, fmt, seed=3, rank=r, world_size=3, micro_batch_size=2, block_shards=2)
        for r in range(3)
    ]
    seen = [sum(rows_seen(reader, Position()), []) for reader in ranks]
    flat = sum(seen, [])
    assert len(flat) == len(set(flat)) == ranks[0].steps_per_epoch() * 6 == 36  # 40 rows, global batch 6: 4 dropped


@pytest.mark.integration
def test_resume_from_a_position_continues_at_the_exact_row(small_cache):
    reader = CacheReader(small_cache, "parquet", seed=0, micro_batch_size=4, block_shards=2)
    full = list(reader.micro_batches(Position(epoch=1)))
    _, after_three = full[2]
    resumed = rows_seen(CacheReader(small_cache, "parquet", seed=0, micro_batch_size=4, block_shards=2), after_three)
    assert resumed == [b["row_id"].tolist() for b, _ in full[3:]]
    assert after_three == Position(1, 12)


@pytest.mark.integration
def test_parquet_and_zarr_readers_agree(small_cache):
    a = list(CacheReader(small_cache, "parquet", seed=5, micro_batch_size=4).micro_batches(Position()))
    b = list(CacheReader(small_cache, "zarr", seed=5, micro_batch_size=4).micro_batches(Position()))
    for (x, _), (y, _) in zip(a, b, strict=True):
        for key in x:
            assert np.array_equal(x[key].numpy(), y[key].numpy()), key


def test_a_reader_takes_an_opened_cache_or_its_folder(tmp_path):
    folder = write_synthetic_cache(tmp_path / "c", shard_rows=(3, 4, 2))
    by_path = list(CacheReader(folder, "zarr", seed=2, micro_batch_size=2).micro_batches(Position()))
    by_cache = list(CacheReader(Cache.open(folder), "zarr", seed=2, micro_batch_size=2).micro_batches(Position()))
    assert len(by_path) == 4
    for (x, _), (y, _) in zip(by_path, by_cache, strict=True):
        assert all(np.array_equal(x[key].numpy(), y[key].numpy()) for key in x)
    with pytest.raises(CacheMismatch, match="has no npz store"):
        CacheReader(folder, "npz")


def test_the_reader_reads_only_what_the_loss_uses(tmp_path, monkeypatch):
    folder = write_synthetic_cache(tmp_path / "c", shard_rows=(3, 4, 2), with_strong_ref=True)
    asked = []
    read_shard = Cache.read_shard
    monkeypatch.setattr(
        Cache, "read_shard", lambda self, *a, **k: asked.append(k["columns"]) or read_shard(self, *a, **k)
    )
    batch, _ = next(CacheReader(folder, "parquet", micro_batch_size=2).micro_batches(Position()))
    assert asked[0] == ("row_id", "input_ids", "prompt_len", "weak_log_ratio", "logp_strong_ref")
    assert "logp_weak_base" not in batch and "logp_strong_ref" in batch
    batch, _ = next(CacheReader(folder, "zarr", micro_batch_size=2, fields=()).micro_batches(Position()))
    assert asked[-1] == ("row_id", "input_ids", "prompt_len") and "weak_log_ratio" not in batch
    with pytest.raises(CacheMismatch, match=r"holds no logp_weak_base \(it holds"):
        CacheReader(write_synthetic_cache(tmp_path / "k", store="compact"), fields=("logp_weak_base",))


@pytest.mark.parametrize("fmt", ["parquet", "zarr"])
def test_a_compact_cache_gives_the_batches_of_a_full_one(tmp_path, fmt):
    full = write_synthetic_cache(tmp_path / "full", shard_rows=(3, 4, 2), with_strong_ref=True)
    compact = write_synthetic_cache(tmp_path / "compact", shard_rows=(3, 4, 2), with_strong_ref=True, store="compact")
    a = list(CacheReader(full, fmt, seed=4, micro_batch_size=2).micro_batches(Position()))
    b = list(CacheReader(compact, fmt, seed=4, micro_batch_size=2).micro_batches(Position()))
    assert len(a) == len(b) == 4
    for (x, _), (y, _) in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        assert all(np.array_equal(x[key].numpy(), y[key].numpy()) for key in x)


def test_the_reader_checks_row_ids_as_it_loads_a_shard(tmp_path):
    folder = write_synthetic_cache(tmp_path / "c", shard_rows=(3, 4, 2))
    shard = synthetic_shard(3, 4)
    shard.row_id = shard.row_id + 1
    rewrite_shard(folder, 1, "parquet", shard)  # sizes and checksums match the manifest again
    reader = CacheReader(folder, "parquet", seed=0, micro_batch_size=9)
    with pytest.raises(CacheMismatch, match=r"fails verification: .*shard-00001.parquet: row ids \[4, 5, 6\]"):
        list(reader.micro_batches(Position()))
