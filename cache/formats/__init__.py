"""The registry of shard formats: every way a shard is written to and read from disk goes through here.

A format is an object with a `name` (also its folder and file suffix, see `w2s.schemas.cache.shard_name`), a
`write(shard, path, dtype)` that writes under a temporary name and renames into place, and a
`read(path, columns=None)` that returns a `ShardData`. Adding a format (Lance, say) takes one new module here
with such a class, and one `register(...)` line below; the build, the manifest, `Cache`, `verify` and the
trainer's reader then handle it with no other change.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from w2s.cache.formats.parquet import ParquetFormat
from w2s.cache.formats.zarr import ZarrFormat
from w2s.errors import ConfigError
from w2s.schemas.cache import ShardData, StorageDtype

BOTH = ("parquet", "zarr")
"""What `format=both` writes."""


class ShardFormat(Protocol):
    """How one shard is stored on disk."""

    name: str

    def write(self, shard: ShardData, path: Path, dtype: StorageDtype) -> None:
        """Writes `shard` at `path` (temporary name, then an atomic rename), per-token values stored as `dtype`."""
        ...

    def read(self, path: Path, columns: Sequence[str] | None = None) -> ShardData:
        """Reads the shard at `path` (only `columns` when given); per-token values come back as float32."""
        ...


_REGISTRY: dict[str, ShardFormat] = {}


def register(fmt: ShardFormat) -> ShardFormat:
    """Adds a format under `fmt.name`; refuses a name already taken (and the reserved name 'both')."""
    if fmt.name in _REGISTRY or fmt.name == "both":
        raise ValueError(f"a cache format named {fmt.name!r} is already registered")
    _REGISTRY[fmt.name] = fmt
    return fmt


def unregister(name: str) -> None:
    """Removes a registered format (for plug-ins and tests)."""
    _REGISTRY.pop(name, None)


def format_names() -> tuple[str, ...]:
    """Names of the registered formats, in registration order."""
    return tuple(_REGISTRY)


def get_format(name: str) -> ShardFormat:
    """The format registered as `name`.

    Raises:
        ConfigError: no format has that name (the message lists those that do).
    """
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown cache format {name!r}: this w2s knows {', '.join(format_names())} "
            f"(and 'both' = {' + '.join(BOTH)})"
        )
    return _REGISTRY[name]


def formats_for(choice: str) -> tuple[ShardFormat, ...]:
    """The formats a build with `format=choice` writes: one registered name, or 'both'."""
    return tuple(get_format(name) for name in (BOTH if choice == "both" else (choice,)))


register(ParquetFormat())
register(ZarrFormat())
