"""Builds caches of the micro world for the cache tests."""

from __future__ import annotations

from pathlib import Path

from w2s.cache.build import build_cache, setup
from w2s.cache.config import CacheConfig


def cache_config(world: Path, out_dir: Path, **overrides) -> CacheConfig:
    """A cache of the micro world's cache split, small shards so that resume and merge have work to split."""
    settings = dict(
        out_dir=str(out_dir),
        dataset=str(world / "data" / "cache.jsonl"),
        weak_base=str(world / "weak_base"),
        weak_aligned=str(world / "weak_aligned"),
        rows_per_shard=8,
        batch_tokens=2048,
    )
    settings.update(overrides)
    return CacheConfig(**settings)


def build(world: Path, out_dir: Path, **overrides) -> dict:
    return build_cache(setup(cache_config(world, out_dir, **overrides)))
