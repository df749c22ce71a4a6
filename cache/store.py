"""Writes and reads one cache shard in Parquet and in Zarr v3 (schema: `w2s.schemas.cache`).

A shard is held in memory as a `ShardData` (plain numpy, flat values plus offsets), written to a temporary name
and renamed into place, so a reader never sees half a shard.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from w2s.schemas.cache import arrow_schema

NUMPY_STORAGE = {"float32": np.float32, "float16": np.float16}

ROW_FIELDS = ("row_id", "prompt_len", "response_len", "weak_seq_reward")
ROW_DTYPES = {"row_id": np.int64, "prompt_len": np.int32, "response_len": np.int32, "weak_seq_reward": np.float32}


@dataclass
class ShardData:
    """One shard's rows, columnar: per-row arrays, flat token ids and flat per-response-token values."""

    row_id: np.ndarray  # [rows] int64
    example_id: list[str]
    input_ids: np.ndarray  # [sum of sequence lengths] int32
    input_offsets: np.ndarray  # [rows + 1] int64
    prompt_len: np.ndarray  # [rows] int32
    response_len: np.ndarray  # [rows] int32
    weak_seq_reward: np.ndarray  # [rows] float32
    token_values: dict[str, np.ndarray]  # field -> [sum of response lengths] float32 (or float16 when stored so)
    offsets: np.ndarray  # [rows + 1] int64, into the token_values arrays

    @property
    def num_rows(self) -> int:
        return len(self.row_id)

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])


def _list_array(flat: np.ndarray, offsets: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat, type=value_type))


def write_parquet(shard: ShardData, path: Path, dtype: str) -> None:
    """Writes `shard` as a Parquet file at `path` (temporary name, then rename)."""
    schema = arrow_schema(dtype, with_strong_ref="logp_strong_ref" in shard.token_values)
    columns = {
        "row_id": pa.array(shard.row_id, pa.int64()),
        "example_id": pa.array(shard.example_id, pa.string()),
        "input_ids": _list_array(shard.input_ids, shard.input_offsets, pa.int32()),
        "prompt_len": pa.array(shard.prompt_len, pa.int32()),
        "response_len": pa.array(shard.response_len, pa.int32()),
        "weak_seq_reward": pa.array(shard.weak_seq_reward, pa.float32()),
    }
    for name, values in shard.token_values.items():
        stored = values.astype(NUMPY_STORAGE[dtype], copy=False)
        columns[name] = _list_array(stored, shard.offsets, schema.field(name).type.value_type)
    table = pa.table([columns[field.name] for field in schema], schema=schema)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd", row_group_size=max(1, shard.num_rows))
    os.replace(tmp, path)


def _zarr_array(group: zarr.Group, name: str, values: np.ndarray) -> None:
    # chunks of ~64k values inside one shard object per array: few files, cheap partial reads
    chunk = max(1, min(len(values), 65536))
    array = group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=(chunk,), shards=(max(1, len(values)),))
    if len(values):
        array[:] = values


def write_zarr(shard: ShardData, path: Path, dtype: str) -> None:
    """Writes `shard` as a Zarr v3 group (sharding codec) at `path` (temporary folder, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    for name in ROW_FIELDS:
        _zarr_array(group, name, getattr(shard, name))
    _zarr_array(group, "input_ids", shard.input_ids)
    _zarr_array(group, "input_offsets", shard.input_offsets)
    _zarr_array(group, "offsets", shard.offsets)
    for name, values in shard.token_values.items():
        _zarr_array(group, name, values.astype(NUMPY_STORAGE[dtype], copy=False))
    example_ids = group.create_array("example_id", shape=(shard.num_rows,), dtype=str, chunks=(max(1, shard.num_rows),))
    example_ids[:] = np.array(shard.example_id, dtype=object)
    group.attrs["token_fields"] = list(shard.token_values)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def _flat(column: pa.ChunkedArray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    array = column.combine_chunks()
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return values[offsets[0] : offsets[-1]], offsets - offsets[0]


def read_parquet(path: str | Path, columns: list[str] | None = None) -> ShardData:
    """Reads a Parquet shard back into a `ShardData` (per-token values as float32)."""
    table = pq.read_table(path, columns=columns)
    names = set(table.column_names)
    token_names = [n for n in table.column_names if n.startswith("logp_") or n == "weak_log_ratio"]
    token_values, offsets = {}, np.zeros(table.num_rows + 1, dtype=np.int64)
    for name in token_names:
        token_values[name], offsets = _flat(table[name], np.float32)
    input_ids, input_offsets = _flat(table["input_ids"], np.int32) if "input_ids" in names else (np.zeros(0, np.int32), np.zeros(1, np.int64))
    column = lambda name, dtype: table[name].to_numpy().astype(dtype) if name in names else np.zeros(0, dtype)  # noqa: E731
    return ShardData(
        row_id=column("row_id", np.int64),
        example_id=table["example_id"].to_pylist() if "example_id" in names else [],
        input_ids=input_ids,
        input_offsets=input_offsets,
        prompt_len=column("prompt_len", np.int32),
        response_len=column("response_len", np.int32),
        weak_seq_reward=column("weak_seq_reward", np.float32),
        token_values=token_values,
        offsets=offsets,
    )


def read_zarr(path: str | Path) -> ShardData:
    """Reads a Zarr shard back into a `ShardData` (per-token values as float32)."""
    group = zarr.open_group(str(path), mode="r")
    get = lambda name, dtype: np.asarray(group[name][:]).astype(dtype)  # noqa: E731
    return ShardData(
        row_id=get("row_id", np.int64),
        example_id=[str(x) for x in group["example_id"][:]],
        input_ids=get("input_ids", np.int32),
        input_offsets=get("input_offsets", np.int64),
        prompt_len=get("prompt_len", np.int32),
        response_len=get("response_len", np.int32),
        weak_seq_reward=get("weak_seq_reward", np.float32),
        token_values={name: get(name, np.float32) for name in group.attrs["token_fields"]},
        offsets=get("offsets", np.int64),
    )
