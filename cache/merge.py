"""`w2s cache merge`: joins the part manifests of a sharded build under one manifest.

Workers of one build write their shards into the same folder (any filesystem they all reach) and a part
manifest each. Merging checks that every part is there, that all parts were made from the same inputs, and
that together they hold every shard exactly once; then it writes `manifest.json` (atomically, last).
"""

from __future__ import annotations

import json
from pathlib import Path

from w2s.cache.config import CacheConfig
from w2s.cache.manifest import MANIFEST, PART_MANIFESTS, check_entry, manifest_body
from w2s.cache.portable import published_files
from w2s.config import from_dict
from w2s.errors import CacheMismatch
from w2s.io import atomic_write_json
from w2s.runs import LOCK, MARKER, FolderRefused, claim, read_marker


def _check_parts(cache_dir: Path, parts: list[Path], bodies: list[dict]) -> list[dict]:
    """The shards of all parts, once every part is there, all from the same inputs, each shard held once."""
    expected = bodies[0]["provenance"]["num_shards"]
    indices = sorted(b["config"]["shard_index"] for b in bodies)
    if indices != list(range(expected)):
        raise CacheMismatch(
            f"{cache_dir}: parts {indices} found, a build of {expected} workers needs 0..{expected - 1}"
        )
    for part, body in zip(parts[1:], bodies[1:]):
        if body["provenance"] != bodies[0]["provenance"]:
            differ = sorted(k for k in body["provenance"] if body["provenance"][k] != bodies[0]["provenance"].get(k))
            raise CacheMismatch(f"{part}: made from different inputs than {parts[0].name} (differs in {differ})")
    shards = [shard for body in bodies for shard in body["shards"]]
    seen = sorted(s["index"] for s in shards)
    if seen != list(range(len(seen))):
        raise CacheMismatch(f"{cache_dir}: the parts hold shards {seen}, not each of 0..{len(seen) - 1} once")
    return shards


def merge_parts(cache_dir: str | Path) -> dict:
    """Writes `manifest.json` from the part manifests in `cache_dir`; returns it.

    Raises:
        CacheMismatch: a missing part, parts from different inputs, a missing or doubled shard, or a shard file
            that no longer matches its part manifest.
    """
    cache_dir = Path(cache_dir)
    marker = read_marker(cache_dir) if cache_dir.is_dir() else None
    if marker is None or marker["command"] != "cache":  # merge writes only into a folder `w2s cache` made
        raise FolderRefused(f"{cache_dir}: this folder was not made by `w2s cache` (no {MARKER}); nothing to merge")
    identity = marker["identity"]
    parts = sorted(cache_dir.glob(PART_MANIFESTS))
    if not parts:
        raise CacheMismatch(f"{cache_dir}: no part manifests ({PART_MANIFESTS}) to merge")
    bodies = [json.loads(p.read_text()) for p in parts]
    shards = _check_parts(cache_dir, parts, bodies)
    for shard in shards:
        for entry in shard["files"].values():
            problem = check_entry(cache_dir, entry)
            if problem:
                raise CacheMismatch(problem)
    config = from_dict(CacheConfig, {**bodies[0]["config"], "shard_index": 0})
    manifest = manifest_body(bodies[0]["provenance"], shards, config)
    with claim(cache_dir, "cache", identity=identity, lock=f"{LOCK}-merge") as folder:
        atomic_write_json(cache_dir / MANIFEST, manifest)
        folder.finish(published_files(cache_dir))
    return manifest
