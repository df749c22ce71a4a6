"""A cache job: the settings, rows and provenance one worker of `w2s cache` builds from (made by
`w2s.cache.build.setup`). Its own module so that the ledger and the engines can name it without importing the
build loop (which imports them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from w2s.cache.backends import Scorer
from w2s.cache.config import CacheConfig
from w2s.data import Row
from w2s.schemas.cache import Layout


@dataclass
class CacheJob:
    """Everything the shard loop needs, prepared by `setup()`."""

    config: CacheConfig
    out_dir: Path
    rows: list[Row]
    provenance: dict
    my_shards: list[int]
    layout: Layout
    """Which store is written and how (from the config; `w2s.cache.manifest.cache_layout`)."""
    scorers: dict[str, Scorer] | None = None
    tokenizer: Any = None
    """The weak pair's shared tokenizer (its copy goes into the cache: `w2s.cache.portable`)."""
    strong_tokenizer: Any = None
    """A cross-tokenizer cache's strong tokenizer (copied too); None when it is the weak pair's."""


def model_paths(config: CacheConfig) -> dict[str, str]:
    paths = {"weak_base": config.weak_base, "weak_aligned": config.weak_aligned, "strong_ref": config.strong_ref}
    return {role: path for role, path in paths.items() if path}
