"""What made a cache: fingerprints of its tokenizer, its models and the code, recorded in the manifest.

The trainer compares the same fingerprints at start-up (`w2s.train.checks`), so they are computed here only.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from w2s.io import sha256_file

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


RUNTIME_STATE = ("truncation", "padding")
"""Keys of a backend tokenizer's JSON that hold call-time settings (transformers sets them per call), not its
definition: left out, or a tokenizer's fingerprint would change once it has padded or truncated a batch."""

BEHAVIOUR_PROBE = "a b"
"""Text encoded with and without special tokens to record what the tokenizer adds around it (add_bos/add_eos)."""


def _sha256(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def tokenizer_parts(tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
    """sha256 of each part of a tokenizer's definition, so a mismatch can say which part differs.

    - 'vocabulary': vocabulary, merges, normaliser, pre-tokeniser and decoder.
    - 'special tokens': which token is bos/eos/pad/unk/..., every special token, every added token (with its
      special flag and matching options), the post-processor, and the ids it adds around a text (add_bos/add_eos).
    - 'chat template': the chat template(s), or None.

    Nothing here depends on the folder it was loaded from, so a tokenizer saved and loaded again (a cache's own copy)
    keeps its fingerprint.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition_sha, added_in_backend, post_processor = backend_parts(backend.to_str())
    else:
        definition_sha, added_in_backend, post_processor = (
            _sha256({"vocab": sorted(tokenizer.get_vocab().items())}),
            None,
            None,
        )
    added = {
        str(index): [token.content, token.special, token.lstrip, token.rstrip, token.single_word, token.normalized]
        for index, token in sorted(tokenizer.added_tokens_decoder.items())
    }
    special = {
        "named": tokenizer.special_tokens_map,  # which token is bos, eos, pad, unk... (the ones set)
        "all": sorted(tokenizer.all_special_tokens),
        "added": added,
        "added_in_backend": added_in_backend,
        "post_processor": post_processor,
        "added_around_text": added_around_text(tokenizer),
    }
    return {
        "vocabulary": definition_sha,
        "special tokens": _sha256(special),
        "chat template": _sha256(getattr(tokenizer, "chat_template", None)),
    }


@functools.lru_cache(maxsize=4)
def backend_parts(backend_json: str) -> tuple[str, object, object]:
    """A backend tokenizer's JSON -> (sha256 of its definition, its added tokens, its post-processor), the call-time
    state left out. Remembered per JSON text: a cache build fingerprints its weak tokenizer and then its own saved
    copy, whose JSON is the same text when the copy is faithful. The collector is paused while the JSON's hundred
    thousand objects are made and walked: its collections took 0.2 of the 0.31 s this took (SmolLM2, measured)."""
    with collector_paused():
        definition = json.loads(backend_json)
        for key in RUNTIME_STATE:
            definition.pop(key, None)
        added, post_processor = definition.pop("added_tokens", None), definition.pop("post_processor", None)
        return _sha256(definition), added, post_processor


@contextmanager
def collector_paused():
    """The garbage collector off inside, as it was after (it may already be off: `w2s.cli.main` at start-up)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def added_around_text(tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """The ids the tokenizer adds before and after a text when asked for special tokens (BOS, EOS...): its
    add_bos/add_eos behaviour, however it is configured (attributes or post-processor)."""
    bare = tokenizer(BEHAVIOUR_PROBE, add_special_tokens=False)["input_ids"]
    full = tokenizer(BEHAVIOUR_PROBE)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return [full[:start], full[start + len(bare) :]]
    return [full, bare]  # specials woven into the text: both, as they are


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the tokenizer's full definition: vocabulary, special and added tokens, add_bos/add_eos behaviour
    and chat template (`tokenizer_parts`): all that decides the ids of a text and the rendering of a chat."""
    return _sha256(tokenizer_parts(tokenizer))


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


def model_fingerprints(paths: dict[str, str]) -> dict[str, dict]:
    """`model_fingerprint` of each role's model, the models hashed at once on threads: hashlib lets go of the GIL
    while it hashes, so on two cores a weak pair's weights hash in about the time of one model (0.41 s against
    0.80-0.95 s for SmolLM2's two 538 MB files, measured)."""
    if len(paths) < 2:
        return {role: model_fingerprint(path) for role, path in paths.items()}
    with ThreadPoolExecutor(len(paths), thread_name_prefix="w2s-hash") as pool:
        return dict(zip(paths, pool.map(model_fingerprint, paths.values())))


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
