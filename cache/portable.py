"""What lets a cache be used from any directory: the paths its manifest records are absolute, and it keeps its own
copy of the tokenizer, so `w2s inspect` (or anything else that decodes its tokens) works from anywhere, even
once the models it was built from have moved.

- `absolute_paths`: the output folder, and the dataset and model paths that name local files or folders, made
  absolute before anything is recorded (a hub id, which names nothing on disk, stays as it is).
- `save_tokenizer_copy`: `<cache>/tokenizer/`, the shared tokenizer saved with `save_pretrained` into a
  temporary folder and renamed into place, before the manifest is written.
- `cache_tokenizer`: the copy when it is there and still the cache's tokenizer (same fingerprint as the
  manifest records), else the tokenizer at the recorded weak_base path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from w2s.cache.provenance import tokenizer_fingerprint
from w2s.models import ModelError, load_tokenizer, save_tokenizer  # noqa: F401 (save_tokenizer: used here and re-exported)

if TYPE_CHECKING:
    from w2s.cache.config import CacheConfig
    from w2s.cache.store import Cache

TOKENIZER_DIR = "tokenizer"
"""The cache's copy of its tokenizer, beside the shards."""


def _absolute_if_local(path: str) -> str:
    return os.path.abspath(path) if path and Path(path).exists() else path


def absolute_paths(config: CacheConfig) -> CacheConfig:
    """`config` with out_dir absolute, and the dataset and model paths absolute where they name something on disk."""
    local = {key: _absolute_if_local(getattr(config, key)) for key in ("dataset", "weak_base", "weak_aligned")}
    return replace(
        config, out_dir=os.path.abspath(config.out_dir), strong_ref=_absolute_if_local(config.strong_ref), **local
    )


def save_tokenizer_copy(tokenizer, out_dir: Path) -> Path:
    """Saves `tokenizer` as `out_dir/tokenizer/` unless a copy with its fingerprint is there; atomic (a temporary
    folder renamed into place), and safe beside another worker saving the same copy into the same folder.

    Raises:
        OSError: the copy cannot be written (a full disk, a read-only folder), with the file and the reason.
    """
    target = out_dir / TOKENIZER_DIR
    expected = tokenizer_fingerprint(tokenizer)
    if target.is_dir() and _fingerprint_of(target) == expected:
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".{TOKENIZER_DIR}.tmp-", dir=out_dir))
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


def cache_tokenizer(cache: Cache):
    """The cache's tokenizer: its own copy when it holds one that matches the manifest, else the recorded path's."""
    if cache.place.exists(f"{TOKENIZER_DIR}/tokenizer_config.json"):
        with tempfile.TemporaryDirectory() as scratch:
            folder = cache.place.local_copy(TOKENIZER_DIR, Path(scratch))
            tokenizer = load_tokenizer("cache tokenizer", str(folder))
            if tokenizer_fingerprint(tokenizer) == cache.provenance.get("tokenizer_sha256"):
                return tokenizer
    return load_tokenizer("weak_base", cache.provenance["models"]["weak_base"]["name_or_path"])
