"""The registry of shard formats: every way a shard is written to and read from disk goes through here.

A format is an object with a `name` (also its folder and file suffix, see `w2s.schemas.cache.shard_name`), a
`write(shard, path, layout)` that writes under a temporary name and renames into place, and a
`read(path, columns=None)` that returns a `ShardData`. The `layout` (`w2s.schemas.cache.Layout`) says which
fields the cache's store holds and how per-token values are stored; `shard_arrays(shard, layout)` gives them as
flat arrays in their stored dtypes and `shard_from_arrays` turns what was read back into a `ShardData`, so a
format only moves named arrays (and the layout) to and from disk. An optional `encodings(layout)` describes the
codecs for the manifest. Adding a format (Lance, say) takes one new module with such a class, decorated
`@FORMATS.register("lance")` (`w2s.registry`), and, for a built-in, its module in `FORMATS.builtins` below; the
build, the manifest, `Cache`, `verify` and the trainer's reader then handle it with no other change.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from w2s.errors import ConfigError
from w2s.registry import Registry
from w2s.schemas.cache import Layout, ShardData

BOTH = ("parquet", "zarr")
"""What `format=both` writes."""


class ShardFormat(Protocol):
    """How one shard is stored on disk."""

    name: str

    def write(self, shard: ShardData, path: Path, layout: Layout) -> None:
        """Writes the fields of `layout` from `shard` at `path` (temporary name, then an atomic rename)."""
        ...

    def read(self, path: Path, columns: Sequence[str] | None = None) -> ShardData:
        """Reads the shard at `path` (only those of `columns` it holds, when given); per-token values as float32."""
        ...

    # Optional: `parse(contents, columns)` decodes a shard from the bytes `Cache.read_shard` already read and
    # hashed (`w2s.cache.fs.Place.contents`), so a shard is read once and every byte used is checked. A format
    # without it is hashed first and then read through `read`.


def format_encodings(fmt: ShardFormat, layout: Layout) -> dict:
    """What `fmt` says about its codecs for `layout` (empty for a format that says nothing)."""
    describe = getattr(fmt, "encodings", None)
    return describe(layout) if describe is not None else {}


FORMATS: Registry[type] = Registry("cache format", builtins=("w2s.cache.formats.parquet", "w2s.cache.formats.zarr"))
"""Shard format classes by name (their `name`: folder and file suffix); 'both' is reserved for parquet + zarr."""


def format_names() -> tuple[str, ...]:
    """Names of the registered formats, in registration order."""
    return FORMATS.names()


def get_format(name: str) -> ShardFormat:
    """The format registered as `name`.

    Raises:
        ConfigError: no format has that name (the message lists those that do).
    """
    if name == "both" or name not in FORMATS.names():
        raise ConfigError(
            f"unknown cache format {name!r}: this w2s knows {', '.join(format_names())} "
            f"(and 'both' = {' + '.join(BOTH)})"
        )
    return FORMATS.get(name)()


def formats_for(choice: str) -> tuple[ShardFormat, ...]:
    """The formats a build with `format=choice` writes: one registered name, or 'both'."""
    return tuple(get_format(name) for name in (BOTH if choice == "both" else (choice,)))
