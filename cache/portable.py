"""What lets a cache be used from any directory: the paths its manifest records are absolute, and it keeps its own
copy of the tokenizer, so `w2s inspect` (or anything else that decodes its tokens) works from anywhere, even
once the models it was built from have moved.

- `absolute_paths`: the output folder, and the dataset and model paths that name local files or folders, made
  absolute before anything is recorded (a hub id, which names nothing on disk, stays as it is).
- `save_tokenizer_copy`: `<cache>/tokenizer/`, the shared tokenizer saved with `save_pretrained` into a
  temporary folder and renamed into place, before the manifest is written; a cross-tokenizer cache keeps the
  strong model's tokenizer too, as `<cache>/strong_tokenizer/` (its ids are the ones stored).
- `cache_tokenizer`: the copy when it is there and still the cache's tokenizer (same fingerprint as the
  manifest records), else the tokenizer at the recorded weak_base path; `cache_strong_tokenizer`: the tokenizer
  of the stored ids (the strong copy in a cross-tokenizer cache, else `cache_tokenizer`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from w2s.models import ModelError, load_tokenizer, save_tokenizer  # noqa: F401 (save_tokenizer: used here and re-exported)
from w2s.provenance import tokenizer_fingerprint

if TYPE_CHECKING:
    from w2s.cache.config import CacheConfig
    from w2s.cache.store import Cache

TOKENIZER_DIR = "tokenizer"
"""The cache's copy of its tokenizer, beside the shards."""
STRONG_TOKENIZER_DIR = "strong_tokenizer"
"""A cross-tokenizer cache's copy of the strong model's tokenizer, beside the shards."""


def _absolute_if_local(path: str) -> str:
    return os.path.abspath(path) if path and Path(path).exists() else path


def absolute_paths(config: CacheConfig) -> CacheConfig:
    """`config` with out_dir absolute, and the dataset and model paths absolute where they name something on disk."""
    keys = ("weak_base", "weak_aligned", "strong_ref", "strong_tokenizer")
    local = {key: _absolute_if_local(getattr(config, key)) for key in keys}
    data = replace(config.data, path=_absolute_if_local(config.data.path))
    return replace(config, out_dir=os.path.abspath(config.out_dir), data=data, **local)


def save_tokenizer_copy(tokenizer, out_dir: Path, name: str = TOKENIZER_DIR) -> Path:
    """Saves `tokenizer` as `out_dir/<name>/` (`tokenizer/`, or `strong_tokenizer/`) unless a copy with its
    fingerprint is there; atomic (a temporary folder renamed into place), and safe beside another worker saving the
    same copy into the same folder.

    Raises:
        OSError: the copy cannot be written (a full disk, a read-only folder), with the file and the reason.
    """
    target = out_dir / name
    expected = tokenizer_fingerprint(tokenizer)
    if target.is_dir() and _fingerprint_of(target) == expected:
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out_dir))
    try:
        save_tokenizer(tokenizer, tmp)
        if target.exists():
            shutil.rmtree(target)  # a copy from other inputs (its cache was refused or rebuilt)
        os.replace(tmp, target)
    except OSError:
        # another worker renamed its (identical) copy first: keep that one; anything else (a full disk) is raised
        if not (target.is_dir() and _fingerprint_of(target) == expected):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _fingerprint_of(folder: Path) -> str | None:
    try:
        return tokenizer_fingerprint(load_tokenizer("cache tokenizer", str(folder)))
    except (ModelError, OSError, ValueError):
        return None


def _own_copy(cache: Cache, name: str, recorded: str | None):
    """The cache's copy `<cache>/<name>/` when it is there and has the fingerprint the manifest records, else None."""
    if cache.place.exists(f"{name}/tokenizer_config.json"):
        with tempfile.TemporaryDirectory() as scratch:
            folder = cache.place.local_copy(name, Path(scratch))
            tokenizer = load_tokenizer("cache tokenizer", str(folder))
            if tokenizer_fingerprint(tokenizer) == recorded:
                return tokenizer
    return None


def cache_tokenizer(cache: Cache):
    """The cache's tokenizer: its own copy when it holds one that matches the manifest, else the recorded path's."""
    tokenizer = _own_copy(cache, TOKENIZER_DIR, cache.provenance.get("tokenizer_sha256"))
    if tokenizer is not None:
        return tokenizer
    return load_tokenizer("weak_base", cache.provenance["models"]["weak_base"]["name_or_path"])


def cache_strong_tokenizer(cache: Cache):
    """The tokenizer of the ids the cache stores: in a cross-tokenizer cache the strong model's (its own copy when
    it matches the manifest, else the recorded strong_ref or strong_tokenizer path's), else `cache_tokenizer`."""
    if not cache.provenance.get("cross_tokenizer"):
        return cache_tokenizer(cache)
    tokenizer = _own_copy(cache, STRONG_TOKENIZER_DIR, cache.provenance.get("strong_tokenizer_sha256"))
    if tokenizer is not None:
        return tokenizer
    strong_ref = cache.provenance["models"].get("strong_ref")
    if strong_ref is not None:
        return load_tokenizer("strong_ref", strong_ref["name_or_path"])
    return load_tokenizer("strong_tokenizer", cache.manifest["config"]["strong_tokenizer"])


def published_files(out_dir: Path) -> list[str]:
    """What a finished cache publishes besides its shards (whose sha256 the manifest holds): the manifest and the
    tokenizer copies (`w2s.runs` records their sha256 and a rerun checks them)."""
    return ["manifest.json", *(name for name in (TOKENIZER_DIR, STRONG_TOKENIZER_DIR) if (out_dir / name).is_dir())]
