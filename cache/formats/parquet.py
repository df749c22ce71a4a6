"""Parquet shards: one row per example, one column per field of `w2s.schemas.cache.FIELDS`, zstd-compressed."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from w2s.schemas.cache import (
    FIELD_BY_NAME,
    NUMPY_STORAGE,
    STRONG_REF_FIELD,
    ShardData,
    StorageDtype,
    arrow_schema,
    temporary_path,
)


def _list_array(flat: np.ndarray, offsets: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat, type=value_type))


def _flat(column: pa.ChunkedArray, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """A list column as flat values `[total]` and offsets `[rows + 1]` from 0."""
    array = column.combine_chunks()
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return values[offsets[0] : offsets[-1]], offsets - offsets[0]


def _column(shard: ShardData, name: str, arrow_type: pa.DataType, dtype: StorageDtype) -> pa.Array:
    """One field of `shard` as an Arrow array of `arrow_type`."""
    kind = FIELD_BY_NAME[name].kind
    if kind == "ids":
        return _list_array(shard.input_ids, shard.input_offsets, arrow_type.value_type)
    if kind == "token":
        stored = shard.token_values[name].astype(NUMPY_STORAGE[dtype], copy=False)
        return _list_array(stored, shard.offsets, arrow_type.value_type)
    return pa.array(getattr(shard, name), arrow_type)


class ParquetFormat:
    """`parquet/shard-00000.parquet`: one row group per shard; readable by pyarrow, polars, duckdb, pandas."""

    name = "parquet"

    def write(self, shard: ShardData, path: Path, dtype: StorageDtype) -> None:
        """Writes `shard` as a Parquet file at `path` (temporary name, then rename)."""
        schema = arrow_schema(dtype, with_strong_ref=STRONG_REF_FIELD in shard.token_values)
        table = pa.table([_column(shard, f.name, f.type, dtype) for f in schema], schema=schema)
        tmp = temporary_path(path)
        pq.write_table(table, tmp, compression="zstd", row_group_size=max(1, shard.num_rows))
        os.replace(tmp, path)

    def read(self, path: Path, columns: Sequence[str] | None = None) -> ShardData:
        """Reads a Parquet shard (only `columns` when given); per-token values as float32."""
        table = pq.read_table(path, columns=list(columns) if columns is not None else None)
        shard = ShardData(offsets=np.zeros(table.num_rows + 1, dtype=np.int64))
        for name in table.column_names:
            spec = FIELD_BY_NAME[name]
            if spec.kind == "token":
                shard.token_values[name], shard.offsets = _flat(table[name], np.float32)
            elif spec.kind == "ids":
                shard.input_ids, shard.input_offsets = _flat(table[name], np.int32)
            elif spec.dtype == "string":
                setattr(shard, name, table[name].to_pylist())
            else:
                setattr(shard, name, table[name].to_numpy().astype(spec.dtype))
        return shard
