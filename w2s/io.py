"""Small file helpers shared by every stage: atomic writes and content hashes.

Nothing a stage publishes may ever be seen half-written, so every file goes to a temporary name in the same
folder and is renamed into place (rename is atomic on POSIX filesystems).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def publish_dir(tmp_dir: str | Path, final_dir: str | Path) -> None:
    """Moves a fully written folder into place, replacing any previous one."""
    final_dir = Path(final_dir)
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_dir(path: str | Path, pattern: str = "*") -> str:
    """One hash over the names and contents of the files in a folder that match `pattern`, in sorted order."""
    digest = hashlib.sha256()
    for file in sorted(Path(path).glob(pattern)):
        if file.is_file():
            digest.update(file.relative_to(path).as_posix().encode())
            digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def read_jsonl(path: str | Path) -> list[dict]:
    """Every non-blank line of a jsonl file, parsed."""
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]
