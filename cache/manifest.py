"""`manifest.json` and its parts: the one place that writes, reads and checks them.

The manifest is written last and atomically; it records the schema version, the provenance, the build's
config, the `layout` (which store, which fields with their storage dtypes, and each format's encodings: all a
reader needs), totals, and every shard with its rows, tokens and, per format, the bytes and sha256 of its file
(Parquet) or folder (Zarr). A cache without it is unfinished, whatever else the folder holds. A build split
between workers writes one part manifest per worker instead, which `w2s cache merge` joins.

Checking a shard file against its entry comes at two costs: `check_entry(..., hashed=False)` compares sizes
(a stat per file), the default also re-hashes the contents.

A manifest must also agree with itself (`check_consistency`, run by `load_manifest`): shards indexed 0..n-1 with
contiguous rows, totals that are the sums over them, and as many rows as the dataset had. A hand-edited or
forged manifest is refused before any shard is read, naming the field that disagrees.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from w2s.cache.formats import format_encodings, formats_for
from w2s.cache.fs import Place, local_stat
from w2s.errors import CacheMismatch
from w2s.io import sha256_dir, sha256_file
from w2s.schemas.cache import KNOWN_SCHEMA_VERSIONS, SCHEMA_VERSION, Layout

if TYPE_CHECKING:
    from w2s.cache.config import CacheConfig

MANIFEST = "manifest.json"
PART_MANIFESTS = "manifest.part-*-of-*.json"


def part_manifest_name(shard_index: int, num_shards: int) -> str:
    """The part manifest of worker `shard_index` of `num_shards`."""
    return f"manifest.part-{shard_index:05d}-of-{num_shards:05d}.json"


def cache_layout(config: CacheConfig, provenance: dict) -> Layout:
    """The layout a build with `config` writes (the strong reference is stored when it was scored, `strong_chunk`
    when the strong tokenizer is not the weak pair's)."""
    models, cross = provenance.get("models", {}), bool(provenance.get("cross_tokenizer"))
    return Layout(config.store, config.storage_dtype, "strong_ref" in models, cross)


def layout_entry(config: CacheConfig, provenance: dict) -> dict:
    """The manifest's `layout`: store, fields and their storage dtypes, and the encodings of each format built."""
    layout = cache_layout(config, provenance)
    encodings = {fmt.name: format_encodings(fmt, layout) for fmt in formats_for(config.format)}
    return {**layout.describe(), "encodings": encodings}


RUN_ONLY = ("engine", "ray_address", "ray_actors", "ray_max_retries")
"""Settings of how a build ran, never of what it wrote: left out of the manifest, so that a store built through
Ray is byte-identical, manifest included, to one built by a single process."""


def recorded_config(config: CacheConfig) -> dict:
    """The build's settings as the manifest records them (without `RUN_ONLY`, and without `strong_tokenizer` when
    it is not set, so that a same-tokenizer cache's manifest is what it was before that setting existed)."""
    unset = ("strong_tokenizer",) if not config.strong_tokenizer else ()
    recorded = {key: value for key, value in asdict(config).items() if key not in RUN_ONLY + unset}
    recorded["batch_tokens"] = config.scoring_batch_tokens()  # auto: the budget the scorers used
    return recorded


def manifest_body(provenance: dict, shards: list[dict], config: CacheConfig) -> dict:
    """A (part) manifest over `shards` (entries from `shard_entry`), sorted by index, with their totals."""
    shards = sorted(shards, key=lambda s: s["index"])
    return {
        "schema_version": SCHEMA_VERSION,
        "provenance": provenance,
        "config": recorded_config(config),
        "layout": layout_entry(config, provenance),
        "totals": {
            "rows": sum(s["rows"] for s in shards),
            "tokens": sum(s["tokens"] for s in shards),
            "response_tokens": sum(s["response_tokens"] for s in shards),
            "bytes": sum(f["bytes"] for s in shards for f in s["files"].values()),
        },
        "shards": shards,
    }


def shard_entry(index: int, row_start: int, rows: int, tokens: int, response_tokens: int, files: dict) -> dict:
    """One shard's manifest entry; `files` maps each format's name to its `file_entry`."""
    return {
        "index": index,
        "row_start": row_start,
        "rows": rows,
        "tokens": tokens,
        "response_tokens": response_tokens,
        "files": files,
    }


def file_entry(path: Path) -> dict:
    """Name (relative to the cache folder), size and sha256 of a shard file (Parquet) or folder (Zarr)."""
    name = f"{path.parent.name}/{path.name}"
    if path.is_dir():
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return {"name": name, "bytes": size, "sha256": sha256_dir(path, "**/*")}
    return {"name": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def file_stat(path: Path) -> tuple[int, int]:
    """Bytes and newest modification time (ns) of a shard file, or of every file in a shard folder."""
    return local_stat(path)


def check_entry(cache_dir: str | Path | Place, entry: dict, hashed: bool = True) -> str | None:
    """Why a recorded shard file no longer matches its entry (its size, and its sha256 when `hashed`), or None
    when it does. `cache_dir` may be a URL (`w2s.cache.fs`)."""
    place = Place.of(cache_dir)
    path = place.join(entry["name"])
    if not place.exists(entry["name"]):
        return f"{path}: missing"
    size = place.stat(entry["name"])[0]
    if size != entry["bytes"]:
        return f"{path}: {size} bytes, manifest says {entry['bytes']}"
    if hashed:
        digest = place.sha256(entry["name"])
        if digest != entry["sha256"]:
            return f"{path}: sha256 {digest[:12]}..., manifest says {entry['sha256'][:12]}..."
    return None


def load_manifest(cache_dir: str | Path | Place) -> dict:
    """A finished cache's manifest (read once by `Cache.open`); `cache_dir` may be a URL (`w2s.cache.fs`).

    Raises:
        CacheMismatch: no manifest (an unfinished cache), one that is not JSON, an unknown schema version, or a
            manifest that disagrees with itself (`check_consistency`), naming the field.
    """
    place = Place.of(cache_dir)
    path = place.join(MANIFEST)
    if not place.exists(MANIFEST):
        raise CacheMismatch(f"{place.root}: no {MANIFEST}: not a finished cache (build it, or merge its parts)")
    try:
        manifest = json.loads(place.read_text(MANIFEST))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CacheMismatch(f"{path}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("schema_version") not in KNOWN_SCHEMA_VERSIONS:
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise CacheMismatch(f"{path}: schema version {version!r} is not one this w2s reads {KNOWN_SCHEMA_VERSIONS}")
    problem = check_consistency(manifest)
    if problem:
        raise CacheMismatch(f"{path}: {problem}; the manifest disagrees with itself: delete it and rerun `w2s cache`")
    return manifest


SUMMED = ("rows", "tokens", "response_tokens")
"""Totals that are sums over the shards (`bytes` is not checked: it is informative, and sizes are checked per file)."""


def check_consistency(manifest: dict) -> str | None:
    """Why a finished manifest disagrees with itself, naming the field, or None when it agrees: shard `index` runs
    0..n-1, each `row_start` follows the rows before it, every file entry has its name, bytes and sha256, `totals`
    are the sums over the shards, and the dataset's recorded row count (when provenance has one) is `totals.rows`."""
    shards, totals = manifest.get("shards"), manifest.get("totals")
    if not isinstance(shards, list) or not isinstance(totals, dict):
        return "shards (a list) or totals (an object) is missing"
    sums = dict.fromkeys(SUMMED, 0)
    for position, shard in enumerate(shards):
        problem = _shard_problem(position, shard, sums["rows"])
        if problem:
            return problem
        for key in SUMMED:
            sums[key] += shard[key]
    for key in SUMMED:
        if totals.get(key) != sums[key]:
            return f"totals.{key} is {totals.get(key)!r}, but its shards sum to {sums[key]}"
    provenance = manifest.get("provenance")
    dataset = provenance.get("dataset") if isinstance(provenance, dict) else None
    if isinstance(dataset, dict) and "rows" in dataset and dataset["rows"] != totals["rows"]:
        return f"provenance.dataset.rows is {dataset['rows']!r}, but totals.rows is {totals['rows']}"
    return None


def _shard_problem(position: int, shard: dict, row_start: int) -> str | None:
    """What is wrong with the entry of the shard at `position`, which should start at `row_start`, or None."""
    where = f"shards[{position}]"
    counts = (*SUMMED, "index", "row_start")
    missing = next((key for key in counts if not isinstance(shard, dict) or not _is_count(shard.get(key))), None)
    if missing:
        return f"{where}.{missing} is missing or not a whole number"
    if shard["index"] != position:
        return f"{where}.index is {shard['index']}, expected {position} (shards run 0..n-1 in order)"
    if shard["row_start"] != row_start:
        return f"{where}.row_start is {shard['row_start']}, expected {row_start} (contiguous rows)"
    files = shard.get("files")
    if not isinstance(files, dict) or not files:
        return f"{where}.files is missing or empty"
    for fmt, entry in files.items():
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("name", "sha256")):
            return f"{where}.files.{fmt} lacks its name or sha256"
        if not _is_count(entry.get("bytes")):
            return f"{where}.files.{fmt}.bytes is missing or not a whole number"
    return None


def _is_count(value) -> bool:
    """A non-negative whole number (JSON gives `int`; `bool` is one in Python, and is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
