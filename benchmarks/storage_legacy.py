"""For `cache_storage.py`: the writers the cache had before its encodings were chosen (to compare against, side
by side), and the sweeps that chose them: each Parquet column under each candidate encoding, and compression
levels against size and write speed, for Parquet and Zarr."""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest import mock

import pyarrow.parquet as pq
import zarr

from w2s.cache.formats import parquet as parquet_format
from w2s.cache.formats import zarr as zarr_format
from w2s.cache.manifest import file_stat
from w2s.schemas.cache import Layout, shard_arrays, temporary_path

CANDIDATES = ("PLAIN", "RLE_DICTIONARY", "BYTE_STREAM_SPLIT", "DELTA_BINARY_PACKED", "DELTA_BYTE_ARRAY")
SWEPT = (Layout("full", "float32", True), Layout("compact", "bfloat16", True))


def legacy_parquet_write(self, shard, path: Path, layout: Layout) -> None:
    """The Parquet writer as it was: pyarrow's defaults (dictionary on every column, zstd's default level, the
    Arrow schema stored in the footer)."""
    tmp = temporary_path(path)
    pq.write_table(parquet_format.shard_table(shard, layout), tmp, compression="zstd", row_group_size=shard.num_rows)
    os.replace(tmp, path)


def legacy_zarr_write(self, shard, path: Path, layout: Layout) -> None:
    """The Zarr writer as it was: default codecs (zstd level 0), every array sharded, metadata pretty-printed."""
    tmp = temporary_path(path)
    shutil.rmtree(tmp, ignore_errors=True)
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    for name, values in shard_arrays(shard, layout).items():
        if isinstance(values, list):
            zarr_format._string_array(group, name, values)
            continue
        chunk, whole = max(1, min(len(values), zarr_format.CHUNK_VALUES)), max(1, len(values))
        array = group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=(chunk,), shards=(whole,))
        if len(values):
            array[:] = values
    group.attrs["token_fields"] = list(layout.token_fields())
    os.replace(tmp, path)


@contextmanager
def writers(legacy: bool) -> Iterator[None]:
    """Within the block, the registered Parquet and Zarr formats write as they used to (when `legacy`)."""
    with ExitStack() as stack:
        if legacy:
            stack.enter_context(mock.patch.object(parquet_format.ParquetFormat, "write", legacy_parquet_write))
            stack.enter_context(mock.patch.object(zarr_format.ZarrFormat, "write", legacy_zarr_write))
        yield


def _one_column_bytes(shards, layout: Layout, name: str, encoding: str) -> int | None:
    """Bytes of column `name` alone, written with `encoding` at the store's level, over all shards (None: the
    encoding does not apply to the column's type)."""
    spec = next(f for f in layout.fields() if f.name == name)
    leaf = f"{name}.list.element" if spec.kind in ("ids", "token") else name
    options = {"compression": "zstd", "compression_level": parquet_format.ZSTD_LEVELS[layout.store]}
    options |= {"use_dictionary": encoding == "RLE_DICTIONARY", "store_schema": False}
    if encoding not in ("PLAIN", "RLE_DICTIONARY"):
        options["column_encoding"] = {leaf: encoding}
    total = 0
    for shard in shards:
        buffer = io.BytesIO()
        try:
            pq.write_table(parquet_format.shard_table(shard, layout).select([name]), buffer, **options)
        except Exception:  # e.g. DELTA_BINARY_PACKED on floats: not a candidate for that column
            return None
        total += buffer.getbuffer().nbytes
    return total


def column_sweep(shards) -> str:
    """Markdown: bytes per response token of each column under each candidate Parquet encoding."""
    tokens = sum(shard.num_tokens for shard in shards)
    lines = [
        "Parquet, bytes per response token of each column alone, by encoding (* = the writer's choice):\n",
        "| store | column | " + " | ".join(CANDIDATES) + " |",
        "|---|---|" + "---:|" * len(CANDIDATES),
    ]
    for layout in SWEPT:
        for spec in layout.fields():
            chosen = parquet_format.column_encoding(spec, layout)
            cells = []
            for encoding in CANDIDATES:
                size = _one_column_bytes(shards, layout, spec.name, encoding)
                mark = "*" if encoding == chosen else ""
                cells.append("" if size is None else f"{size / tokens:.3f}{mark}")
            lines.append(f"| {layout.store} {layout.dtype} + ref | {spec.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_all(fmt, shards, layout: Layout, folder: Path) -> tuple[int, float]:
    """(bytes, fastest of two passes' seconds) of writing every shard in `fmt`."""
    best, size = float("inf"), 0
    for _ in range(2):
        started, size = time.perf_counter(), 0
        for index, shard in enumerate(shards):
            path = folder / f"shard-{index:05d}.{fmt.name}"
            fmt.write(shard, path, layout)
            size += file_stat(path)[0]
        best = min(best, time.perf_counter() - started)
    return size, best


def level_sweep(shards, tmp: str) -> str:
    """Markdown: size and write speed against the compression levels, Parquet then Zarr."""
    tokens, folder = sum(shard.num_tokens for shard in shards), Path(tmp)
    lines = ["| format | store | level | bytes/token | write (k tokens/s) |", "|---|---|---|---:|---:|"]
    for layout in SWEPT:
        for level in (1, 3, 6, 9, 12, 15, 19):
            with mock.patch.dict(parquet_format.ZSTD_LEVELS, {layout.store: level}):
                size, seconds = _write_all(parquet_format.ParquetFormat(), shards, layout, folder)
            lines.append(
                f"| parquet | {layout.store} {layout.dtype} + ref | zstd {level} | {size / tokens:.2f} | "
                f"{tokens / seconds / 1e3:,.0f} |"
            )
        for floats, ints in ((1, 3), (5, 9), (9, 9), (9, 19)):
            with mock.patch.multiple(zarr_format, BLOSC_LEVEL=floats, ZSTD_LEVEL=ints):
                size, seconds = _write_all(zarr_format.ZarrFormat(), shards, layout, folder)
            lines.append(
                f"| zarr | {layout.store} {layout.dtype} + ref | blosc {floats} / zstd {ints} | {size / tokens:.2f} | "
                f"{tokens / seconds / 1e3:,.0f} |"
            )
    shutil.rmtree(folder, ignore_errors=True)
    return (
        "Compression levels (* in the code: Parquet zstd 9 full, 19 compact; Zarr blosc 9 / zstd 19):\n\n"
        + "\n".join(lines)
    )
