"""Streams a logit cache for training: deterministic order, ranks split without overlap, exact resume.

The order of an epoch is a pure function of (seed, epoch): shards are permuted, grouped into blocks of
`block_shards`, and rows are permuted within each block (the mosaicml/streaming scheme), so only one block of
shards is ever in memory. Global position p of the epoch goes to rank p % world_size. The data position is two
integers, (epoch, consumed): a resumed run recomputes the order and skips `consumed` global samples, so no row
is repeated or skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from w2s.cache.store import Cache
from w2s.logprobs import pad_right
from w2s.schemas.cache import ShardData


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
    ):
        """`cache`: an opened `Cache`, or its folder (opened here). Raises CacheMismatch when it has no `fmt` store."""
        self.cache = cache if isinstance(cache, Cache) else Cache.open(cache)
        self.fmt = self.cache.require_format(fmt)
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
            self._loaded[index] = self.cache.read_shard(index, self.fmt)
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


def collate(rows: list[dict], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pads rows; per-token values are placed on target positions (t-1 predicts t), `[batch, seq - 1]`."""
    input_ids, attention_mask = pad_right([row["input_ids"] for row in rows], pad_id)  # each [batch, seq]
    width = input_ids.shape[1]
    mask = torch.zeros((len(rows), width - 1))  # [batch, seq-1]: 1 where the target is a response token
    values = {name: torch.zeros((len(rows), width - 1)) for name in rows[0]["values"]}  # each [batch, seq-1]
    for b, row in enumerate(rows):
        length, prompt_len = len(row["input_ids"]), row["prompt_len"]
        mask[b, prompt_len - 1 : length - 1] = 1.0
        for name, tensor in values.items():
            tensor[b, prompt_len - 1 : length - 1] = torch.tensor(row["values"][name])
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mask": mask,
        "row_id": torch.tensor([row["row_id"] for row in rows]),
    }
    return {**batch, **values}
