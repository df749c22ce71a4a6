"""What a cache build may keep from an earlier run into the same folder, and who may write there.

Resume: each finished shard is renamed into place and then recorded in this worker's `ledger-*.json` (written
atomically); a restarted build keeps the recorded shards whose files still match their size and sha256 and redoes
the rest. A finished cache is trusted the same way: a rerun checks every shard file of its manifest, and when one
is missing or corrupt, the shards that still check become the ledger, the manifest is dropped, and the build goes
on as a resumed one (the manifest is written again last). A healthy finished cache is left as it is.

Folder and lock (`w2s.runs`): the folder is claimed as the cache's (new, empty, or a cache of the same inputs,
never a folder of the user's), and each worker (shard_index, num_shards) holds `flock` on its own lock file for
the whole build, so a second run of the same worker is refused instead of deleting the first one's temporary
files; the OS releases the lock when the holder dies, even by kill -9.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from w2s.cache.job import CacheJob, model_paths
from w2s.cache.manifest import MANIFEST, check_entry, part_manifest_name
from w2s.errors import CacheMismatch
from w2s.io import atomic_write_json
from w2s.provenance import provenance_key
from w2s.runs import LOCK, RunFolder, claim
from w2s.schemas.cache import stale_temporaries

if TYPE_CHECKING:
    from w2s.cache.config import CacheConfig


def worker_lock_name(shard_index: int, num_shards: int) -> str:
    """Each worker of a build locks its own file: workers share the folder, two runs of one worker never do."""
    return f"{LOCK}-{shard_index:05d}-of-{num_shards:05d}"


def claim_folder(job: CacheJob) -> RunFolder:
    """Claims the cache folder for this worker (`w2s.runs`): new, empty or a cache of the same inputs; outside the
    dataset and the models; this worker's lock held. A finished cache whose manifest changed since it was
    published loses its manifest here, so the shards are checked and redone as for an unfinished build.

    Raises:
        FolderRefused: another folder, an input, a cache of other inputs, or this worker already running.
    """
    identity = {k: v for k, v in job.provenance.items() if k != "code_version"}
    inputs = {"dataset": job.config.data.path, **model_paths(job.config)}
    lock = worker_lock_name(job.config.shard_index, job.config.num_shards)
    folder = claim(job.out_dir, "cache", identity=identity, inputs=inputs, lock=lock)
    if folder.finished and folder.problems:
        print(f"w2s cache: {folder.problems[0]}; checking the cache and redoing what is damaged", file=sys.stderr)
        if manifest_name(job.config) in folder.damaged:  # a changed manifest is not trusted: the shards are checked
            (job.out_dir / manifest_name(job.config)).unlink(missing_ok=True)
        folder.reset([])
    return folder


def manifest_name(config: CacheConfig) -> str:
    """This worker's manifest: the cache's own with one worker, else its part manifest."""
    return MANIFEST if config.num_shards == 1 else part_manifest_name(config.shard_index, config.num_shards)


def ledger_path(job: CacheJob) -> Path:
    """Each worker keeps its own ledger, so workers sharing one folder never write the same file."""
    return job.out_dir / f"ledger-{job.config.shard_index:05d}-of-{job.config.num_shards:05d}.json"


def _read_record(path: Path, keys: tuple[str, ...]) -> dict | None:
    """A manifest or ledger as a dict holding `keys`; None when absent; refuses one that is not such a record."""
    if not path.exists():
        return None
    try:
        body = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CacheMismatch(f"{path}: not valid JSON ({err}); delete it to rebuild") from None
    if not isinstance(body, dict) or any(key not in body for key in keys):
        raise CacheMismatch(f"{path}: not a w2s cache record (no {' or '.join(keys)}); delete it to rebuild")
    return body


def finished_manifest(job: CacheJob) -> dict | None:
    """This worker's finished manifest when one exists for the same inputs; refuses one from other inputs."""
    path = job.out_dir / manifest_name(job.config)
    body = _read_record(path, ("provenance", "shards"))
    if body is not None and provenance_key(body["provenance"]) != provenance_key(job.provenance):
        raise CacheMismatch(
            f"{path}: a finished cache from different inputs or settings is there; "
            "use another out_dir, or delete it to rebuild"
        )
    return body


def read_ledger(job: CacheJob) -> dict[int, dict]:
    """Every shard this worker's ledger records (unchecked); refuses a ledger from other inputs."""
    body = _read_record(ledger_path(job), ("provenance_key", "shards"))
    if body is None:
        return {}
    if body["provenance_key"] != provenance_key(job.provenance):
        raise CacheMismatch(
            f"{job.out_dir}: holds an unfinished cache built from different inputs or settings; "
            "use another out_dir, or delete the folder to start over"
        )
    return {int(index): entry for index, entry in body["shards"].items()}


def save_ledger(job: CacheJob, done: dict[int, dict]) -> None:
    atomic_write_json(
        ledger_path(job),
        {"provenance_key": provenance_key(job.provenance), "shards": {str(k): v for k, v in sorted(done.items())}},
    )


def remove_stale_temporaries(job: CacheJob) -> None:
    """Deletes temporary files a killed run of this worker left behind (never another worker's)."""
    for index in job.my_shards:
        for stale in stale_temporaries(job.out_dir, index):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()


def sound_shards(out_dir: Path, entries: list[dict]) -> dict[int, dict]:
    """The shard entries whose every file is there with its recorded size and sha256."""
    return {
        entry["index"]: entry
        for entry in entries
        if all(check_entry(out_dir, file) is None for file in entry["files"].values())
    }


@dataclass
class Resume:
    """Where a build starts: the shards it keeps, and what the check of a finished cache found."""

    done: dict[int, dict]
    """Shards kept, by index (their files checked)."""
    finished: dict | None = None
    """The manifest of a finished cache whose shards all check: nothing to do."""
    checked: int = 0
    """Shards of a finished cache that were checked (0: there was none)."""
    redone: list[int] = field(default_factory=list)
    """Shards of a finished cache that were missing or corrupt, and are to be redone."""


def resume_point(job: CacheJob) -> Resume:
    """What an earlier run into this folder left that this build may keep (call it holding the worker's lock)."""
    finished = finished_manifest(job)
    if finished is None:
        return Resume(sound_shards(job.out_dir, list(read_ledger(job).values())))
    done = sound_shards(job.out_dir, finished["shards"])
    redone = sorted(entry["index"] for entry in finished["shards"] if entry["index"] not in done)
    if not redone:
        return Resume(done, finished, checked=len(finished["shards"]))
    # the shards that still check become the ledger, and only then does the manifest go: killed at any point, a
    # rerun finds either the manifest (and checks again) or the ledger (and resumes), never a manifest over
    # shards that are being rewritten
    save_ledger(job, done)
    (job.out_dir / manifest_name(job.config)).unlink()
    return Resume(done, checked=len(finished["shards"]), redone=redone)
