"""Streams a logit cache for training: deterministic order, ranks split without overlap, exact resume.

The order of an epoch is a pure function of (seed, epoch): shards are permuted, grouped into blocks of
`block_shards`, and rows are permuted within each block (the mosaicml/streaming scheme), so only one block of
shards is ever in memory. Global position p of the epoch goes to rank p % world_size. The data position is two
integers, (epoch, consumed): a resumed run recomputes the order and skips `consumed` global samples, so no row
is repeated or skipped.

Every shard is checked as it is loaded, whatever `train.verify_cache` checked at start-up: `Cache.read_shard` reads
its bytes once and compares their sha256 with the manifest's before parsing them, so a shard damaged on disk
(even with its size and modification time put back) stops the run with `CacheMismatch` before any of its rows
reach a batch, hence before the optimiser step that would have used them. Only the columns the loss uses are
decoded (`fields`: by default `weak_log_ratio`, plus `logp_strong_ref` when the reference comes from the cache, and
`strong_chunk` in a cross-tokenizer cache, whose rows `collate` turns into the chunk loss's inputs),
but the whole file is read to be hashed (`benchmarks/read_hashing.py` measures the cost). The shard's row ids are
then checked against the manifest, which with the hash makes a full verification of each shard trained on.

The cache may lie on any filesystem fsspec reaches: pass its URL (`s3://bucket/cache`, `gs://...`, `memory://...`)
where a folder goes. `Cache.open` then reads the manifest, and the format readers the shards, through fsspec; a
plain path (or `file://` URL) is read as a local folder, as fast as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from w2s.cache.store import Cache
from w2s.errors import CacheMismatch
from w2s.logprobs import pad_right
from w2s.schemas.cache import STRONG_CHUNK_FIELD, STRONG_REF_FIELD, ShardData

ROW_COLUMNS = ("row_id", "input_ids", "prompt_len")
"""What every batch needs besides per-token values: the ids to run the policy on, and where the response starts."""


@dataclass
class Position:
    """Where the reader stands: `consumed` global samples into `epoch`."""

    epoch: int = 0
    consumed: int = 0


def epoch_order(shard_rows: list[int], seed: int, epoch: int, block_shards: int) -> np.ndarray:
    """Global sample order of one epoch as (shard, row-in-shard) pairs, `[rows, 2]`.

    Args:
        shard_rows: rows of each shard, in manifest order.
        seed: training seed.
        epoch: epoch number.
        block_shards: shards whose rows are shuffled together.
    """
    rng = np.random.default_rng([seed, epoch])
    shards = rng.permutation(len(shard_rows))
    blocks = []
    for start in range(0, len(shards), block_shards):
        block = shards[start : start + block_shards]
        pairs = np.concatenate([np.stack([np.full(shard_rows[s], s), np.arange(shard_rows[s])], 1) for s in block])
        blocks.append(pairs[rng.permutation(len(pairs))])
    return np.concatenate(blocks)


class CacheReader:
    """Yields this rank's micro-batches of cached rows; holds at most one block of shards in memory."""

    def __init__(
        self,
        cache: Cache | str | Path,
        fmt: str = "parquet",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        micro_batch_size: int = 4,
        block_shards: int = 4,
        fields: Sequence[str] | None = None,
    ):
        """`cache`: an opened `Cache`, or its folder or URL (opened here); `fields`: the per-token fields to read (None:
        `weak_log_ratio`, and `logp_strong_ref` and `strong_chunk` when the cache holds them). Raises CacheMismatch
        when the cache has no `fmt` store or lacks a field asked for."""
        self.cache = cache if isinstance(cache, Cache) else Cache.open(cache)
        self.fmt = self.cache.require_format(fmt)
        held = self.cache.layout.token_fields()
        wanted = default_fields(True, cross_tokenizer=True)
        self.fields = tuple(fields) if fields is not None else tuple(f for f in held if f in wanted)
        missing = [name for name in self.fields if name not in held]
        if missing:
            raise CacheMismatch(f"{self.cache.path}: the cache holds no {', '.join(missing)} (it holds {held})")
        self.shard_rows = [s["rows"] for s in self.cache.shards]  # rows of each shard, in manifest order
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.micro_batch_size, self.block_shards = micro_batch_size, block_shards
        self.rows = sum(self.shard_rows)
        self._loaded: dict[int, ShardData] = {}  # at most block_shards shards, oldest first

    @property
    def global_batch(self) -> int:
        return self.micro_batch_size * self.world_size

    def steps_per_epoch(self) -> int:
        """Micro-batches per epoch for each rank (a last incomplete global batch is dropped)."""
        return self.rows // self.global_batch

    def _shard(self, index: int) -> ShardData:
        if index not in self._loaded:
            if len(self._loaded) >= self.block_shards:
                self._loaded.pop(next(iter(self._loaded)))
            data = self.cache.read_shard(index, self.fmt, columns=(*ROW_COLUMNS, *self.fields))
            path = self.cache.shard_path(index, self.fmt)
            problems = Cache.check_row_ids(self.cache.shards[index], path, data.row_id.tolist())
            if problems:
                raise CacheMismatch(f"{self.cache.path}: the cache fails verification: {problems[0]}")
            self._loaded[index] = data
        return self._loaded[index]

    def micro_batches(self, position: Position):
        """Yields (batch dict, position after it) from `position` to the end of its epoch."""
        order = epoch_order(self.shard_rows, self.seed, position.epoch, self.block_shards)
        usable = self.steps_per_epoch() * self.global_batch
        for start in range(position.consumed, usable, self.global_batch):
            mine = order[start + self.rank : start + self.global_batch : self.world_size]
            rows = [self._row(int(shard), int(row)) for shard, row in mine]
            yield collate(rows), Position(position.epoch, start + self.global_batch)

    def _row(self, shard_index: int, row: int) -> dict:
        data = self._shard(shard_index)
        return {
            "row_id": int(data.row_id[row]),
            "input_ids": data.sequence(row),
            "prompt_len": int(data.prompt_len[row]),
            "values": data.values(row),
        }


def default_fields(cached_ref: bool = True, cross_tokenizer: bool = False) -> tuple[str, ...]:
    """The per-token fields the WSPO loss reads: the weak ratio, the strong reference when it is cached, and the
    chunk of each strong token in a cross-tokenizer cache."""
    chunks = (STRONG_CHUNK_FIELD,) if cross_tokenizer else ()
    return ("weak_log_ratio", STRONG_REF_FIELD, *chunks) if cached_ref else ("weak_log_ratio", *chunks)


def collate(rows: list[dict], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pads rows; per-token values are placed on target positions (t-1 predicts t), `[batch, seq - 1]`.
    Rows of a cross-tokenizer cache (with `strong_chunk`) give `chunk_index` and `weak_chunk_sums` instead of a
    `strong_chunk` value (`chunk_inputs`)."""
    input_ids, attention_mask = pad_right([row["input_ids"] for row in rows], pad_id)  # each [batch, seq]
    width = input_ids.shape[1]
    mask = np.zeros((len(rows), width - 1), np.float32)  # [batch, seq-1]: 1 where the target is a response token
    names = [name for name in rows[0]["values"] if name != STRONG_CHUNK_FIELD]
    values = {name: np.zeros((len(rows), width - 1), np.float32) for name in names}  # each [batch, seq-1]
    for b, row in enumerate(rows):
        start, end = row["prompt_len"] - 1, len(row["input_ids"]) - 1
        mask[b, start:end] = 1.0
        for name, array in values.items():
            array[b, start:end] = row["values"][name]
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mask": torch.from_numpy(mask),
        "row_id": torch.tensor([row["row_id"] for row in rows]),
    }
    if STRONG_CHUNK_FIELD in rows[0]["values"]:
        batch.update(chunk_inputs(rows, width - 1))
    return {**batch, **{name: torch.from_numpy(array) for name, array in values.items()}}


def chunk_inputs(rows: list[dict], width: int) -> dict[str, torch.Tensor]:
    """What `w2s.train.losses.wspo_chunk_loss` reads, from a cross-tokenizer cache's strong-space fields:
    `chunk_index` `[batch, width]` int64 (each response target's chunk, -1 elsewhere) and `weak_chunk_sums`
    `[batch, max chunks]` (each chunk's weak log-ratio: `weak_log_ratio` at the chunk's last strong token)."""
    chunks = [np.asarray(row["values"][STRONG_CHUNK_FIELD], np.int64) for row in rows]
    index = np.full((len(rows), width), -1, np.int64)
    sums = np.zeros((len(rows), max(int(c[-1]) + 1 for c in chunks)), np.float32)
    for b, (row, chunk) in enumerate(zip(rows, chunks)):
        start = row["prompt_len"] - 1
        index[b, start : start + len(chunk)] = chunk
        last = np.append(chunk[1:] != chunk[:-1], True)  # a chunk ends here
        sums[b, chunk[last]] = row["values"]["weak_log_ratio"][last]
    return {"chunk_index": torch.from_numpy(index), "weak_chunk_sums": torch.from_numpy(sums)}
