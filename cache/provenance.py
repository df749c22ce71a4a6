"""What made a cache: fingerprints of its tokenizer, its models and the code, recorded in the manifest.

The trainer compares the same fingerprints at start-up (`w2s.train.checks`), so they are computed here only.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from importlib.metadata import version
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from w2s.io import sha256_file

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


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
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"w2s {version('w2s')}" + (f" (git {commit})" if commit else "")


def provenance_key(provenance: dict) -> str:
    """Hash of the provenance that fixes the shards' content (the code version aside): two builds with the same
    key write the same bytes, so a resumed or repeated build may keep what the other wrote."""
    fixed = {k: v for k, v in provenance.items() if k not in ("code_version",)}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()
