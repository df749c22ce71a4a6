"""Parquet shards: one row per example, one column per field of the cache's layout, zstd-compressed, with the
encoding of each column chosen for what it holds (measured by `benchmarks/cache_storage.py --encodings`).

Parquet's writer dictionary-encodes every column by default. That pays for token ids (a shard uses a few
thousand distinct ids, so the dictionary indices are bit-packed to ~10-13 bits) and costs for floats (log-probs
are nearly all distinct: the dictionary page repeats the values and the indices come on top, 5.4 bytes per
float32 measured on SmolLM2). Floats are therefore written BYTE_STREAM_SPLIT (the bytes of each value in
separate streams, so zstd sees the slowly varying sign/exponent bytes together), and dense integers that grow
by small steps (row ids) DELTA_BINARY_PACKED. All are standard Parquet encodings that pyarrow, pandas, polars,
duckdb and `datasets` read as ordinary columns.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from w2s.cache.formats import FORMATS
from w2s.cache.fs import filesystem, is_url, local_path
from w2s.schemas.cache import (
    FIELD_BY_NAME,
    Field,
    Layout,
    ShardData,
    arrow_schema,
    layout_from_metadata,
    shard_arrays,
    shard_from_arrays,
    temporary_path,
)

ZSTD_LEVELS = {"full": 9, "compact": 19}
"""zstd level by store, measured (`benchmarks/cache_storage.py --encodings`, tiny world): from 9 to 19 shards
shrink 3-8% while writing slows 4-10x (to ~0.1-0.2 M response tokens/s on one CPU core). The full store, for
inspection, stops at the knee (9); the compact store exists to be small, and its writing still outpaces scoring."""
DICTIONARY = "RLE_DICTIONARY"
NEW_ENCODINGS = "BYTE_STREAM_SPLIT"
"""BYTE_STREAM_SPLIT on integers and float16 (Parquet 2.11, 2024): pyarrow >= 17 reads it, older readers may not,
so only the compact store uses it there; on float32 it is old and read everywhere."""


def column_encoding(spec: Field, layout: Layout) -> str:
    """The Parquet encoding of one field's values (the list elements for `ids` and `token` fields)."""
    stored_float = spec.kind == "token" and spec.dtype is None  # per-token values in the storage dtype
    if stored_float and layout.dtype == "float32" or spec.dtype == "float32":
        return "BYTE_STREAM_SPLIT"  # sign and exponent bytes together: zstd packs them; the dictionary costs here
    if spec.kind == "ids" or stored_float:  # token ids (which zstd matches as phrases), 16-bit floats
        return NEW_ENCODINGS if layout.store == "compact" else "PLAIN"
    if spec.dtype in ("int64", "int32"):
        return "DELTA_BINARY_PACKED"  # row ids step by 1, lengths and chunk numbers (`strong_chunk`) by little
    return "PLAIN"  # example ids are unique strings: a dictionary would only repeat them


def _leaf(spec: Field) -> str:
    """The Parquet column path of a field's values (list columns keep theirs in `<name>.list.element`)."""
    return f"{spec.name}.list.element" if spec.kind in ("ids", "token") else spec.name


def writer_options(layout: Layout) -> dict:
    """`pq.write_table` keyword arguments for a shard of `layout`: dictionary only where it pays (nowhere, on the
    fields the cache holds today), statistics only on per-row columns (what a reader filters on), and no copy of
    the Arrow schema in the footer (the Parquet schema's logical types give back every column type; that copy cost
    2.6 KB per shard)."""
    encodings = {spec: column_encoding(spec, layout) for spec in layout.fields()}
    return {
        "compression": "zstd",
        "compression_level": ZSTD_LEVELS[layout.store],
        "use_dictionary": [_leaf(spec) for spec, encoding in encodings.items() if encoding == DICTIONARY],
        "column_encoding": {_leaf(spec): encoding for spec, encoding in encodings.items() if encoding != DICTIONARY},
        "write_statistics": [spec.name for spec in layout.fields() if spec.kind == "row"],
        "store_schema": False,
    }


def _list_array(flat: np.ndarray, offsets: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat, type=value_type))


def _flat(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A list column as flat values `[total]` and offsets `[rows + 1]` from 0."""
    array = column.combine_chunks()
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.values.to_numpy(zero_copy_only=False)
    return values[offsets[0] : offsets[-1]], offsets - offsets[0]


def shard_table(shard: ShardData, layout: Layout) -> pa.Table:
    """The fields of `layout` from `shard` as an Arrow table: one row per example, jagged fields as lists."""
    arrays = shard_arrays(shard, layout)
    schema = arrow_schema(layout.dtype, layout.with_strong_ref, layout.store, layout.cross_tokenizer)
    columns = []
    for spec, column in zip(layout.fields(), schema):
        if spec.kind == "ids":
            columns.append(_list_array(arrays["input_ids"], arrays["input_offsets"], column.type.value_type))
        elif spec.kind == "token":
            columns.append(_list_array(arrays[spec.name], shard.offsets, column.type.value_type))
        else:
            columns.append(pa.array(arrays[spec.name], column.type))
    return pa.table(columns, schema=schema)


@FORMATS.register("parquet")
class ParquetFormat:
    """`parquet/shard-00000.parquet`: one row group per shard; readable by pyarrow, polars, duckdb, pandas."""

    name = "parquet"

    def write(self, shard: ShardData, path: Path, layout: Layout) -> None:
        """Writes `shard` as a Parquet file at `path` (temporary name, then rename)."""
        table = shard_table(shard, layout)
        tmp = temporary_path(path)
        with pq.ParquetWriter(tmp, table.schema, **writer_options(layout)) as writer:
            writer.write_table(table, row_group_size=max(1, shard.num_rows))
            writer.add_key_value_metadata(table.schema.metadata)  # without the Arrow schema's copy, ours goes here
        os.replace(tmp, path)

    def encodings(self, layout: Layout) -> dict:
        """How each column is written, for the manifest."""
        return {
            "compression": f"zstd level {ZSTD_LEVELS[layout.store]}",
            "columns": {spec.name: column_encoding(spec, layout) for spec in layout.fields()},
        }

    def read(self, path: Path | str, columns: Sequence[str] | None = None) -> ShardData:
        """Reads a Parquet shard (only those of `columns` it holds, when given); per-token values as float32.
        `path` may be a URL on any fsspec filesystem (`w2s.cache.fs`)."""
        if is_url(path):
            fs, inner = filesystem(str(path))
            return _shard(pq.ParquetFile(inner, filesystem=fs), columns)
        return _shard(pq.ParquetFile(local_path(path)), columns)

    def parse(self, contents: bytes, columns: Sequence[str] | None = None) -> ShardData:
        """A shard from the bytes of its file, already read (and hashed) by the caller: nothing is read again."""
        return _shard(pq.ParquetFile(pa.BufferReader(contents)), columns)


def _shard(file: pq.ParquetFile, columns: Sequence[str] | None) -> ShardData:
    """The fields of an open Parquet shard (only those of `columns` it holds, when given) as a `ShardData`."""
    stored = file.schema_arrow.names
    layout = layout_from_metadata(file.schema_arrow.metadata, stored)
    table = file.read(columns=[name for name in stored if columns is None or name in columns])
    arrays: dict = {}
    for name in table.column_names:
        kind = FIELD_BY_NAME[name].kind
        if kind == "token":
            arrays[name], arrays["offsets"] = _flat(table[name])
        elif kind == "ids":
            arrays["input_ids"], arrays["input_offsets"] = _flat(table[name])
        elif name == "example_id":
            arrays[name] = table[name].to_pylist()
        else:
            arrays[name] = table[name].to_numpy()
    return shard_from_arrays(arrays, layout)
