"""Zarr v3 shards: one group per shard, every stored array flat and 1-D, with offsets.

Codecs by what an array holds (`compressor`, measured by `benchmarks/cache_storage.py --encodings`): floats
byte-shuffled then zstd (Blosc), integers plain zstd. Small arrays are one chunk each, large ones chunks gathered
in one shard object (sharding codec), and the metadata is written on one line: on the tiny world a shard of 256
rows holds only ~5k response tokens, and pretty-printed, sharded metadata cost 2.5 bytes per token. Plain `zarr`
reads it all (it ships the Blosc codec).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec
from zarr.core.buffer.cpu import Buffer
from zarr.storage import MemoryStore

from w2s.cache.formats import FORMATS
from w2s.cache.fs import is_url, local_path
from w2s.schemas.cache import (
    FIELD_BY_NAME,
    LAYOUT_KEY,
    Layout,
    ShardData,
    shard_arrays,
    shard_from_arrays,
    temporary_path,
)

CHUNK_VALUES = 65536
"""Values per chunk: ~64k values inside one shard object per array gives few files and cheap partial reads."""


BLOSC_LEVEL = 9
"""Blosc level (0-9; Blosc maps it onto zstd's) of float arrays."""
ZSTD_LEVEL = 19
"""zstd level of integer arrays. Both levels are the highest that pay (`benchmarks/cache_storage.py --encodings`):
a Zarr shard's write time goes mostly to creating its arrays, so, unlike Parquet's, it hardly grows with them."""


def compressor(values: np.ndarray):
    """The codec of one flat array. Floats (and bfloat16 bit patterns): Blosc zstd, byte-shuffled, the Zarr
    counterpart of Parquet's BYTE_STREAM_SPLIT. Integers: plain zstd, which finds repeated phrases in token ids
    (bit-shuffling them, i.e. bit-packing, measured 25% larger on the tiny world)."""
    if values.dtype.kind == "f" or values.dtype == np.uint16:  # uint16: bfloat16 bit patterns
        return BloscCodec(cname="zstd", clevel=BLOSC_LEVEL, shuffle="shuffle")
    return ZstdCodec(level=ZSTD_LEVEL)


def _flat_array(group: zarr.Group, name: str, values: np.ndarray) -> None:
    """One flat array: a single chunk when it fits one, else chunks gathered in one shard object (the sharding
    codec's index and metadata cost ~0.5 KB per array, a lot beside a few hundred per-row values)."""
    chunk = max(1, min(len(values), CHUNK_VALUES))
    shards = (max(1, len(values)),) if len(values) > CHUNK_VALUES else None
    codec = compressor(values)
    array = group.create_array(
        name, shape=values.shape, dtype=values.dtype, chunks=(chunk,), shards=shards, compressors=codec
    )
    if len(values):
        array[:] = values


def _string_array(group: zarr.Group, name: str, values: list[str]) -> None:
    array = group.create_array(name, shape=(len(values),), dtype=str, chunks=(max(1, len(values)),))
    array[:] = np.array(values, dtype=object)


def _wanted(group: zarr.Group, columns: Sequence[str] | None) -> list[str]:
    """The stored arrays a read of `columns` needs: their own, offsets for jagged ones, and what the compact
    store derives `offsets` from."""
    stored = list(group.array_keys())
    if columns is None:
        return stored
    wanted = set(columns)
    if "input_ids" in wanted:
        wanted.add("input_offsets")
    if any(FIELD_BY_NAME[name].kind == "token" for name in columns if name in FIELD_BY_NAME):
        wanted |= {"offsets"} if "offsets" in stored else {"input_offsets", "prompt_len"}
    return [name for name in stored if name in wanted]


@FORMATS.register("zarr")
class ZarrFormat:
    """`zarr/shard-00000.zarr/`: flat values plus offsets, read with `zarr` alone (see docs/cache.md)."""

    name = "zarr"

    def write(self, shard: ShardData, path: Path, layout: Layout) -> None:
        """Writes `shard` as a Zarr v3 group at `path` (temporary folder, then rename)."""
        tmp = temporary_path(path)
        shutil.rmtree(tmp, ignore_errors=True)
        with zarr.config.set({"json_indent": None}):  # one-line metadata: a third of the pretty-printed bytes
            group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            for name, values in shard_arrays(shard, layout).items():
                if isinstance(values, list):
                    _string_array(group, name, values)
                else:
                    _flat_array(group, name, values)
            group.attrs.update({"token_fields": list(layout.token_fields()), LAYOUT_KEY: layout.summary()})
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)

    def encodings(self, layout: Layout) -> dict:
        """How the arrays are compressed, for the manifest."""
        return {
            "floats": f"blosc zstd level {BLOSC_LEVEL}, byte shuffle",
            "integers": f"zstd level {ZSTD_LEVEL}",
            "strings": "zarr's default (vlen-utf8, zstd)",
        }

    def read(self, path: Path | str, columns: Sequence[str] | None = None) -> ShardData:
        """Reads a Zarr shard (only `columns` when given); per-token values as float32. `path` may be a URL on any
        fsspec filesystem (`w2s.cache.fs`): zarr then reads it through its fsspec store."""
        return _shard(zarr.open_group(str(path) if is_url(path) else str(local_path(path)), mode="r"), columns)

    def parse(self, contents: dict[str, bytes], columns: Sequence[str] | None = None) -> ShardData:
        """A shard from the bytes of every file of its folder (by name within it), already read (and hashed) by the
        caller: zarr decodes them from memory, nothing is read again."""
        store = MemoryStore({name: Buffer.from_bytes(data) for name, data in contents.items()}, read_only=True)
        return _shard(zarr.open_group(store=store, mode="r"), columns)


def _shard(group: zarr.Group, columns: Sequence[str] | None) -> ShardData:
    """The arrays of an open Zarr shard group (only what `columns` need, when given) as a `ShardData`."""
    attrs = group.attrs.asdict()
    if LAYOUT_KEY in attrs:
        layout = Layout.from_description(attrs[LAYOUT_KEY])
    else:  # schema 1: a full float store
        layout = Layout("full", "float32", "logp_strong_ref" in attrs["token_fields"])
    arrays = {name: group[name][:] for name in _wanted(group, columns)}
    return shard_from_arrays(arrays, layout)
