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

from w2s.cache.manifest import read_manifest
from w2s.cache.store import ShardData, read_parquet, read_zarr


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
        pairs = np.concatenate([np.stack([np.full(shard_rows[s], s), np.arange(shard_rows[s])], 1) for s in shards[start : start + block_shards]])
        blocks.append(pairs[rng.permutation(len(pairs))])
    return np.concatenate(blocks)


class CacheReader:
    """Yields this rank's micro-batches of cached rows; holds at most one block of shards in memory."""

    def __init__(self, cache_dir: str | Path, fmt: str = "parquet", seed: int = 0, rank: int = 0, world_size: int = 1,
                 micro_batch_size: int = 4, block_shards: int = 4):
        self.cache_dir = Path(cache_dir)
        self.manifest = read_manifest(cache_dir)
        self.shards = self.manifest["shards"]
        if any(fmt not in s["files"] for s in self.shards):
            raise ValueError(f"{cache_dir}: the cache has no {fmt} store (it was built with format={self.manifest['config']['format']})")
        self.fmt, self.seed, self.rank, self.world_size = fmt, seed, rank, world_size
        self.micro_batch_size, self.block_shards = micro_batch_size, block_shards
        self.rows = sum(s["rows"] for s in self.shards)
        self._loaded: dict[int, ShardData] = {}

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
            entry = self.shards[index]["files"][self.fmt]
            read = read_parquet if self.fmt == "parquet" else read_zarr
            self._loaded[index] = read(self.cache_dir / entry["name"])
        return self._loaded[index]

    def micro_batches(self, position: Position):
        """Yields (batch dict, position after it) from `position` to the end of its epoch."""
        order = epoch_order([s["rows"] for s in self.shards], self.seed, position.epoch, self.block_shards)
        usable = self.steps_per_epoch() * self.global_batch
        for start in range(position.consumed, usable, self.global_batch):
            mine = order[start + self.rank : start + self.global_batch : self.world_size]
            rows = [self._row(int(shard), int(row)) for shard, row in mine]
            yield collate(rows), Position(position.epoch, start + self.global_batch)

    def _row(self, shard_index: int, row: int) -> dict:
        data = self._shard(shard_index)
        ids = data.input_ids[data.input_offsets[row] : data.input_offsets[row + 1]]
        start, end = data.offsets[row], data.offsets[row + 1]
        return {"row_id": int(data.row_id[row]), "input_ids": ids, "prompt_len": int(data.prompt_len[row]),
                "values": {name: values[start:end] for name, values in data.token_values.items()}}


def collate(rows: list[dict], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pads rows; per-token values are placed on target positions (t-1 predicts t), `[batch, seq - 1]`."""
    width = max(len(row["input_ids"]) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [batch, seq]
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # [batch, seq]
    mask = torch.zeros((len(rows), width - 1))  # [batch, seq-1]: 1 where the target is a response token
    values = {name: torch.zeros((len(rows), width - 1)) for name in rows[0]["values"]}  # each [batch, seq-1]
    for b, row in enumerate(rows):
        length, prompt_len = len(row["input_ids"]), row["prompt_len"]
        input_ids[b, :length] = torch.from_numpy(row["input_ids"].astype(np.int64))
        attention_mask[b, :length] = 1
        mask[b, prompt_len - 1 : length - 1] = 1.0
        for name, tensor in values.items():
            tensor[b, prompt_len - 1 : length - 1] = torch.tensor(row["values"][name])
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "mask": mask,
             "row_id": torch.tensor([row["row_id"] for row in rows])}
    return {**batch, **values}
