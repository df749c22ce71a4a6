"""Builds caches of the micro world for the cache tests."""

from __future__ import annotations

from pathlib import Path

from w2s.cache.build import build_cache, setup
from w2s.cache.config import CacheConfig


def cache_config(world: Path, out_dir: Path, **overrides) -> CacheConfig:
    """A cache of the micro world's cache split, small shards so that resume and merge have work to split."""
    settings = dict(
        out_dir=str(out_dir),
        data=str(world / "data" / "cache.jsonl"),
        weak_base=str(world / "weak_base"),
        weak_aligned=str(world / "weak_aligned"),
        rows_per_shard=8,
        batch_tokens=2048,
    )
    settings.update(overrides)
    return CacheConfig(**settings)


def build(world: Path, out_dir: Path, **overrides) -> dict:
    return build_cache(setup(cache_config(world, out_dir, **overrides)))


def synthetic_shard(row_start: int, rows: int, seed: int = 0, with_strong_ref: bool = False):
    """A shard of `rows` made-up rows from `row_start` on (no models): random ids, log-probs and ratios."""
    import numpy as np

    from w2s.schemas.cache import ShardData

    rng = np.random.default_rng([seed, row_start])
    prompt_len = rng.integers(2, 6, rows).astype(np.int32)  # [rows]
    response_len = rng.integers(1, 5, rows).astype(np.int32)  # [rows]
    offsets = np.concatenate([[0], np.cumsum(response_len)]).astype(np.int64)  # [rows + 1]
    base = -rng.random(int(offsets[-1]), dtype=np.float32)  # [response tokens]
    aligned = -rng.random(int(offsets[-1]), dtype=np.float32)
    ratio = aligned - base
    values = {"logp_weak_base": base, "logp_weak_aligned": aligned, "weak_log_ratio": ratio}
    if with_strong_ref:
        values["logp_strong_ref"] = -rng.random(int(offsets[-1]), dtype=np.float32)
    lengths = prompt_len + response_len
    return ShardData(
        row_id=np.arange(row_start, row_start + rows, dtype=np.int64),
        example_id=[f"row-{row_start + i}" for i in range(rows)],
        input_ids=rng.integers(1, 100, int(lengths.sum())).astype(np.int32),
        input_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        prompt_len=prompt_len,
        response_len=response_len,
        weak_seq_reward=np.array(
            [ratio[offsets[i] : offsets[i + 1]].sum(dtype=np.float32) for i in range(rows)], dtype=np.float32
        ),
        token_values=values,
        offsets=offsets,
    )


def write_synthetic_cache(
    out_dir: Path,
    formats=("parquet", "zarr"),
    shard_rows=(3, 4, 2),
    dtype="float32",
    store="full",
    with_strong_ref=False,
) -> Path:
    """A finished cache of made-up rows, written through the format registry with a real manifest (fast)."""
    from w2s.cache.formats import get_format
    from w2s.cache.manifest import MANIFEST, cache_layout, file_entry, manifest_body, shard_entry
    from w2s.io import atomic_write_json
    from w2s.schemas.cache import shard_name

    config = CacheConfig(
        out_dir=str(out_dir),
        format=formats[0] if len(formats) == 1 else "both",
        storage_dtype=dtype,
        store=store,
    )
    provenance = {"num_shards": 1, **({"models": {"strong_ref": {}}} if with_strong_ref else {})}
    layout = cache_layout(config, provenance)
    entries, row_start = [], 0
    for index, rows in enumerate(shard_rows):
        shard = synthetic_shard(row_start, rows, with_strong_ref=with_strong_ref)
        files = {}
        for name in formats:
            path = out_dir / shard_name(index, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            get_format(name).write(shard, path, layout)
            files[name] = file_entry(path)
        entries.append(shard_entry(index, row_start, rows, int(shard.input_offsets[-1]), shard.num_tokens, files))
        row_start += rows
    atomic_write_json(out_dir / MANIFEST, manifest_body(provenance, entries, config))
    return out_dir


def rewrite_shard(cache_dir: Path, index: int, fmt: str, shard) -> None:
    """Replaces shard `index` in format `fmt` by `shard` and records the new file in the manifest, so that
    its size and checksum match again and only what is inside it can be wrong."""
    import json

    from w2s.cache.formats import get_format
    from w2s.cache.manifest import MANIFEST, file_entry
    from w2s.schemas.cache import Layout

    manifest = json.loads((cache_dir / MANIFEST).read_text())
    path = cache_dir / manifest["shards"][index]["files"][fmt]["name"]
    get_format(fmt).write(shard, path, Layout.from_manifest(manifest))
    manifest["shards"][index]["files"][fmt] = file_entry(path)
    (cache_dir / MANIFEST).write_text(json.dumps(manifest))


def stored_columns(cache_dir: Path) -> dict:
    """Every Parquet shard's columns as Python lists, by shard name: what a build stored, without file metadata."""
    import pyarrow.parquet as pq

    return {path.name: pq.read_table(path).to_pydict() for path in sorted(cache_dir.rglob("*.parquet"))}
