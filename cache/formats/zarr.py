"""Zarr v3 shards: one group per shard, every field a flat 1-D array (sharding codec), with offsets."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr

from w2s.schemas.cache import FIELDS, NUMPY_STORAGE, ShardData, StorageDtype, temporary_path

CHUNK_VALUES = 65536
"""Values per chunk: ~64k values inside one shard object per array gives few files and cheap partial reads."""


def _flat_array(group: zarr.Group, name: str, values: np.ndarray) -> None:
    chunk = max(1, min(len(values), CHUNK_VALUES))
    shard = max(1, len(values))  # the whole array in one shard object
    array = group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=(chunk,), shards=(shard,))
    if len(values):
        array[:] = values


def _string_array(group: zarr.Group, name: str, values: list[str]) -> None:
    array = group.create_array(name, shape=(len(values),), dtype=str, chunks=(max(1, len(values)),))
    array[:] = np.array(values, dtype=object)


def _write_fields(group: zarr.Group, shard: ShardData, dtype: StorageDtype) -> None:
    """One array per field of `FIELDS`, plus `input_offsets` and `offsets` for the jagged ones."""
    for spec in FIELDS:
        if spec.kind == "ids":
            _flat_array(group, "input_ids", shard.input_ids)
            _flat_array(group, "input_offsets", shard.input_offsets)
        elif spec.kind == "token" and spec.name in shard.token_values:
            _flat_array(group, spec.name, shard.token_values[spec.name].astype(NUMPY_STORAGE[dtype], copy=False))
        elif spec.kind == "row" and spec.dtype == "string":
            _string_array(group, spec.name, getattr(shard, spec.name))
        elif spec.kind == "row":
            _flat_array(group, spec.name, getattr(shard, spec.name))
    _flat_array(group, "offsets", shard.offsets)
    group.attrs["token_fields"] = list(shard.token_values)


def _read(group: zarr.Group, name: str, dtype: type | str) -> np.ndarray:
    return np.asarray(group[name][:]).astype(dtype)


class ZarrFormat:
    """`zarr/shard-00000.zarr/`: flat values plus offsets, read with `zarr` alone (see the README)."""

    name = "zarr"

    def write(self, shard: ShardData, path: Path, dtype: StorageDtype) -> None:
        """Writes `shard` as a Zarr v3 group at `path` (temporary folder, then rename)."""
        tmp = temporary_path(path)
        shutil.rmtree(tmp, ignore_errors=True)
        _write_fields(zarr.open_group(str(tmp), mode="w", zarr_format=3), shard, dtype)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)

    def read(self, path: Path, columns: Sequence[str] | None = None) -> ShardData:
        """Reads a Zarr shard (only `columns` when given); per-token values as float32."""
        group = zarr.open_group(str(path), mode="r")
        wanted = [spec for spec in FIELDS if columns is None or spec.name in columns]
        wanted_names = {spec.name for spec in wanted}
        token_names = [name for name in group.attrs["token_fields"] if name in wanted_names]
        shard = ShardData(token_values={name: _read(group, name, np.float32) for name in token_names})
        if token_names:
            shard.offsets = _read(group, "offsets", np.int64)
        for spec in wanted:
            if spec.kind == "ids":
                shard.input_ids = _read(group, "input_ids", np.int32)
                shard.input_offsets = _read(group, "input_offsets", np.int64)
            elif spec.kind == "row" and spec.dtype == "string":
                setattr(shard, spec.name, [str(x) for x in group[spec.name][:]])
            elif spec.kind == "row":
                setattr(shard, spec.name, _read(group, spec.name, spec.dtype))
        return shard
