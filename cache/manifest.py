"""What made a cache, and what it holds: provenance fingerprints, the manifest, and `verify`.

`manifest.json` is written last and atomically; it lists every shard with its rows, tokens, bytes and sha256.
A cache without it is unfinished, whatever else the folder holds.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from importlib.metadata import version
from pathlib import Path

import pyarrow.parquet as pq
from transformers import PreTrainedTokenizerBase

from w2s.io import sha256_dir, sha256_file
from w2s.schemas.cache import KNOWN_SCHEMA_VERSIONS

MANIFEST = "manifest.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


class CacheMismatch(ValueError):
    """A cache that does not match what a stage was handed; the message says what differs."""


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the tokenizer's full definition (vocabulary, merges, normaliser, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()


def model_fingerprint(name_or_path: str) -> dict:
    """Path or hub id of a model, with hashes of its config and of its weight files."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(name_or_path))
    weights = hashlib.sha256()
    for file in sorted(folder.iterdir()):
        if file.suffix in WEIGHT_SUFFIXES:
            weights.update(file.name.encode() + sha256_file(file).encode())
    config = folder / "config.json"
    return {
        "name_or_path": name_or_path,
        "config_sha256": sha256_file(config) if config.exists() else None,
        "weights_sha256": weights.hexdigest(),
    }


def code_version() -> str:
    """The installed w2s version, with the git commit when run from a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"w2s {version('w2s')}" + (f" (git {commit})" if commit else "")


def read_manifest(cache_dir: str | Path) -> dict:
    """Loads a finished cache's manifest, refusing unknown schema versions."""
    path = Path(cache_dir) / MANIFEST
    if not path.exists():
        raise CacheMismatch(f"{cache_dir}: no {MANIFEST}: not a finished cache (build it, or merge its parts)")
    manifest = json.loads(path.read_text())
    if manifest.get("schema_version") not in KNOWN_SCHEMA_VERSIONS:
        raise CacheMismatch(
            f"{path}: schema version {manifest.get('schema_version')!r} is not one this w2s reads {KNOWN_SCHEMA_VERSIONS}"
        )
    return manifest


def file_entry(path: Path) -> dict:
    """Name (relative to the cache folder), size and sha256 of a shard file (Parquet) or folder (Zarr)."""
    name = f"{path.parent.name}/{path.name}"
    if path.is_dir():
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return {"name": name, "bytes": size, "sha256": sha256_dir(path, "**/*")}
    return {"name": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def check_entry(cache_dir: Path, entry: dict) -> str | None:
    """Why a recorded shard file no longer matches its entry, or None when it does."""
    path = cache_dir / entry["name"]
    if not path.exists():
        return f"{path}: missing"
    actual = file_entry(path)
    if actual["bytes"] != entry["bytes"]:
        return f"{path}: {actual['bytes']} bytes, manifest says {entry['bytes']}"
    if actual["sha256"] != entry["sha256"]:
        return f"{path}: sha256 {actual['sha256'][:12]}..., manifest says {entry['sha256'][:12]}..."
    return None


def verify_cache(cache_dir: str | Path) -> list[str]:
    """Checks schema version, every shard's checksum and row count, and that row ids are dense from 0.

    Returns:
        One line per problem; empty when the cache is sound.
    """
    cache_dir = Path(cache_dir)
    try:
        manifest = read_manifest(cache_dir)
    except (CacheMismatch, json.JSONDecodeError) as err:
        return [str(err)]
    problems = []
    next_row = 0
    for shard in manifest["shards"]:
        for fmt, entry in shard["files"].items():
            problem = check_entry(cache_dir, entry)
            if problem:
                problems.append(problem)
            elif fmt == "parquet":
                problems += _check_parquet_rows(cache_dir / entry["name"], shard)
        if shard["row_start"] != next_row:
            problems.append(f"shard {shard['index']}: starts at row {shard['row_start']}, expected {next_row}")
        next_row = shard["row_start"] + shard["rows"]
    if next_row != manifest["totals"]["rows"]:
        problems.append(f"shards hold {next_row} rows, manifest totals say {manifest['totals']['rows']}")
    return problems


def _check_parquet_rows(path: Path, shard: dict) -> list[str]:
    row_ids = pq.read_table(path, columns=["row_id"])["row_id"].to_pylist()
    expected = list(range(shard["row_start"], shard["row_start"] + shard["rows"]))
    if row_ids != expected:
        return [f"{path}: row ids {row_ids[:3]}... do not match rows {shard['row_start']}..{expected[-1] if expected else ''}"]
    return []


def describe_mismatch(recorded: dict, actual: dict, keys: tuple[str, ...]) -> list[str]:
    """Lines naming each provenance key whose recorded and actual values differ."""
    return [f"{key}: cache has {recorded.get(key)!r}, given {actual.get(key)!r}" for key in keys if recorded.get(key) != actual.get(key)]
