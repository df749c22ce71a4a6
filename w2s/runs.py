"""The one owner of every output folder: claim, lock, resume, fresh start, publish and "already done".

Every command that writes (`world`, `cache`, `cache merge`, `train`, `generate`, `search`, `eval`, `export`,
`make science`, the real world's builder) goes through `claim()`:

- **Claimed only if ours.** A folder is claimed when it is absent, empty, or holds the marker `.w2s-run.json` of
  the same command. The marker is written first, before any other file, and records the command, the run's
  identity (what fixes its result) and its provenance. A folder holding anything else is refused, naming the
  folder and one of its files: w2s never writes into, replaces or deletes a folder it did not make.
- **Not inside an input.** An output that is, contains or lies inside one of the run's inputs (a model, a
  dataset, a cache, a prompt file) is refused before anything is written.
- **One writer.** The claimant holds `flock` on a lock file in the folder for as long as it writes; a second
  writer is refused in one line naming the holder's pid. The OS drops the lock when the holder dies (kill -9
  included), so a killed run never blocks its rerun.
- **Same run or not.** A marker whose identity differs from this run's is refused, naming the settings that
  differ, unless the command replaces its own output (`on_change="replace"`: eval, world) or `--force` is given;
  either removes only the files the marker lists and the command's own artefact names, never anything else.
- **Fresh start.** `RunFolder.reset(names)` removes a command's own artefacts (metrics, curves, TensorBoard
  events, summaries) when a run starts from nothing, so nothing of an earlier run is reported as this one's.
- **Already done is checked.** `RunFolder.finish(files)` records the sha256 of every published file in the
  marker (written last, atomically); `RunFolder.done` is true only when every one of them still matches. A damaged
  output is redone or refused by the command, never reported as done.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from w2s.errors import UserError
from w2s.io import atomic_write_json, sha256_file

MARKER = ".w2s-run.json"
LOCK = ".w2s-lock"
SCRATCH = ".w2s-tmp-"
FORMAT = "w2s-run/1"
BOOKKEEPING = (MARKER, "config.yaml", "inspect.png")
"""Files w2s writes into every folder it claims besides the published ones (lock files are matched by prefix)."""


class FolderRefused(UserError):
    """An output folder that w2s may not write into (not its own, an input, another run's, or busy)."""


class FolderBusy(FolderRefused):
    """Another live process is writing into the folder."""


def identity_key(identity: Any) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two identities (the whole value when not both mappings)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return (
            []
            if json.dumps(old, sort_keys=True, default=str) == json.dumps(new, sort_keys=True, default=str)
            else [prefix.rstrip(".") or "identity"]
        )
    found = []
    for key in sorted(set(old) | set(new)):
        found += differences(old.get(key), new.get(key), f"{prefix}{key}.")
    return found


def is_bookkeeping(name: str) -> bool:
    return name in BOOKKEEPING or name.startswith((LOCK, SCRATCH))


def first_entry(path: Path) -> str | None:
    """One entry of a folder (sorted, so messages are stable), bookkeeping aside; None when there is none."""
    names = sorted(entry.name for entry in os.scandir(path) if not is_bookkeeping(entry.name))
    return names[0] if names else None


def local_inputs(inputs: Mapping[str, str | Path | None]) -> dict[str, Path]:
    """The inputs that are local paths (hub names and URLs are not folders on this disk)."""
    found = {}
    for role, value in inputs.items():
        if value and "://" not in str(value) and Path(value).exists():
            found[role] = Path(value).resolve()
    return found


def check_outside_inputs(path: Path, inputs: Mapping[str, str | Path | None]) -> None:
    """Refuses an output that is, contains, or lies inside one of the run's inputs."""
    out = path.resolve()
    for role, source in local_inputs(inputs).items():
        if out == source or source.is_relative_to(out) or out.is_relative_to(source):
            how = "is" if out == source else ("contains" if source.is_relative_to(out) else "lies inside")
            raise FolderRefused(
                f"{path}: the output folder {how} the {role} input {source}; choose an out_dir outside every input"
            )


def read_marker(path: Path) -> dict | None:
    """The marker of a folder, None when it has none; a marker w2s cannot read is refused."""
    file = path / MARKER
    if not file.is_file():
        return None
    try:
        body = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FolderRefused(f"{file}: not a readable w2s marker ({err}); use another out_dir") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT or "command" not in body:
        raise FolderRefused(f"{file}: not a w2s marker; use another out_dir")
    return body


def lock_folder(path: Path, name: str = LOCK) -> IO:
    """Takes `flock` on `path/name` without waiting; returns the open handle (closing it releases the lock)."""
    handle = open(path / name, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise FolderBusy(
            f"{path}: another w2s process (pid {holder}) is writing here; wait for it to finish, or stop it and rerun"
        ) from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


@dataclass
class RunFolder:
    """A claimed output folder: its marker, its lock, and what a rerun may trust."""

    path: Path
    command: str
    identity: Any
    marker: dict
    handle: IO | None = None
    resumed: bool = False
    """The folder held this run's marker before this claim (a killed or finished run of the same identity)."""
    problems: list[str] = field(default_factory=list)
    """Published files of a finished run that no longer match, each as '<path>: <why>' (empty when none, or when
    the run never finished)."""
    damaged: list[str] = field(default_factory=list)
    """The same files' names, relative to the folder."""

    @property
    def finished(self) -> bool:
        """The marker says this run published its files (checked or not)."""
        return self.marker.get("state") == "done"

    @property
    def done(self) -> bool:
        """This very run finished, and every file it published still has the sha256 it recorded."""
        return self.finished and not self.problems

    def verify(self) -> list[str]:
        """The published files that are missing or changed since `finish()` recorded them (also kept in
        `problems` and, by name, in `damaged`)."""
        self.problems, self.damaged = [], []
        for name, digest in self.marker.get("published", {}).items():
            file = self.path / name
            why = "missing" if not file.is_file() else None
            if why is None and sha256_file(file) != digest:
                why = "changed since w2s published it (sha256 differs)"
            if why:
                self.problems.append(f"{file}: {why}")
                self.damaged.append(name)
        return self.problems

    def reset(self, names: Iterable[str]) -> None:
        """A fresh start: removes this command's own artefacts by name (files or folders) and forgets any earlier
        publication. Only names the command lists are touched; anything else in the folder stays."""
        for name in names:
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
        self.marker = {**self.marker, "state": "running", "published": {}}
        self.problems, self.damaged = [], []
        atomic_write_json(self.path / MARKER, self.marker)

    def finish(self, files: Iterable[str | Path] = ()) -> None:
        """Records the sha256 of every published file (relative to the folder; a folder stands for every file in
        it) and marks the run done: written last, so a run killed before it is never taken for finished."""
        published = {}
        for name in files:
            target = self.path / name
            members = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
            for member in members:
                published[member.relative_to(self.path).as_posix()] = sha256_file(member)
        self.marker = {**self.marker, "state": "done", "published": published, "finished": time.time()}
        self.problems, self.damaged = [], []
        atomic_write_json(self.path / MARKER, self.marker)

    def scratch(self) -> Path:
        """A new temporary folder inside this one, for a build published whole at its end (a killed run's
        scratch folders are removed first: they are this command's own)."""
        for stale in self.path.glob(f"{SCRATCH}*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.path / f"{SCRATCH}{os.getpid()}"
        tmp.mkdir()
        return tmp

    def publish_tree(self, tmp: Path, last: str) -> None:
        """Moves every entry of the scratch folder `tmp` into place, `last` (the file that says "finished") at the
        end, then removes `tmp`. A name already taken is refused: the caller cleared its own names first."""
        for entry in sorted(tmp.iterdir(), key=lambda p: (p.name == last, p.name)):
            target = self.path / entry.name
            if target.exists() or target.is_symlink():
                raise FolderRefused(f"{target}: already there; w2s publishes only into names it has cleared")
            os.replace(entry, target)
        tmp.rmdir()

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def new_marker(command: str, identity: Any) -> dict:
    from w2s.provenance import code_version  # lazily: the core module imports no stage at load time

    return {
        "format": FORMAT,
        "command": command,
        "identity": identity,
        "identity_key": identity_key(identity),
        "state": "running",
        "published": {},
        "made_by": {
            "code_version": code_version(),
            "argv": sys.argv,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "time": time.time(),
        },
    }


def refuse_foreign(path: Path, command: str) -> None:
    """Refuses a folder that is not empty and has no marker: w2s did not make it."""
    entry = first_entry(path)
    if entry is not None:
        raise FolderRefused(
            f"{path}: this folder was not made by `w2s {command}` and is not empty (it holds {entry!r}); w2s writes "
            "only into a new or empty folder, or one it made: choose another out_dir"
        )


def claim(
    path: str | Path,
    command: str,
    identity: Any = None,
    inputs: Mapping[str, str | Path | None] | None = None,
    on_change: Literal["refuse", "replace"] = "refuse",
    force: bool = False,
    lock: str | None = LOCK,
    artefacts: Iterable[str] = (),
) -> RunFolder:
    """Claims `path` for `command` and holds its lock (release it, or use the result as a context manager).

    Args:
        identity: what fixes the run's result; a folder holding another identity is refused (or replaced).
        inputs: role -> path of every input, to refuse an output that overlaps one.
        on_change: "replace" lets a rerun with another identity start afresh in its own folder (its `artefacts`
            and published files are removed; anything else stays).
        force: start afresh in a folder of this command, removing only its `artefacts` and the files its marker
            lists as published (anything else in the folder stays).
        lock: the lock file's name (cache workers sharing one folder lock one name each); None takes none.
        artefacts: the command's own file and folder names, removed on a replacing fresh start.

    Raises:
        FolderRefused: the folder is not this command's, overlaps an input, holds another run, or is busy.
    """
    if not str(path).strip():
        raise FolderRefused(f"`w2s {command}`: the output folder is empty (an unset variable?); name a folder")
    path = Path(path)
    identity = json.loads(json.dumps(identity, default=str))  # as the marker holds it, so the two compare equal
    check_outside_inputs(path, inputs or {})
    if path.exists() and not path.is_dir():
        raise FolderRefused(f"{path}: exists and is not a folder; choose another out_dir")
    marker = read_marker(path) if path.is_dir() else None
    if marker is None and path.is_dir():
        refuse_foreign(path, command)
    if marker is not None and marker["command"] != command:
        raise FolderRefused(
            f"{path}: this folder belongs to `w2s {marker['command']}`, not `w2s {command}`; choose another out_dir"
        )
    path.mkdir(parents=True, exist_ok=True)
    handle = lock_folder(path, lock) if lock else None
    try:
        folder = _settle(path, command, identity, "replace" if force else on_change, artefacts, handle)
        if force and folder.resumed:  # --force: start afresh, removing only what this command wrote
            folder.reset([*artefacts, *folder.marker.get("published", {})])
            folder.resumed = False
        return folder
    except BaseException:
        if handle is not None:
            handle.close()
        raise


def refuse_links(path: Path) -> None:
    """w2s never makes a symbolic link in its folders: one found there (a shard folder pointed at the user's own
    files, say) is refused, so that nothing is written, reset or removed through it."""
    for entry in sorted(path.iterdir()):
        if entry.is_symlink():
            raise FolderRefused(
                f"{entry}: a link w2s did not make (to {os.readlink(entry)}); w2s writes only into what it made: "
                "remove the link or choose another out_dir"
            )


def _settle(path, command, identity, on_change, artefacts, handle) -> RunFolder:
    """Under the lock: reread the marker (a racing claimant may have written it), then write or compare it."""
    marker = read_marker(path)
    if marker is None:
        refuse_foreign(path, command)  # a racing writer's files, or the user's, appeared meanwhile
        marker = new_marker(command, identity)
        atomic_write_json(path / MARKER, marker)
        return RunFolder(path, command, identity, marker, handle)
    if marker["command"] != command:
        raise FolderRefused(f"{path}: this folder belongs to `w2s {marker['command']}`; choose another out_dir")
    refuse_links(path)
    folder = RunFolder(path, command, identity, marker, handle, resumed=True)
    if marker.get("identity_key") != identity_key(identity):
        changed = differences(marker.get("identity"), identity)
        if on_change != "replace":
            raise FolderRefused(
                f"{path}: holds another run of `w2s {command}` ({', '.join(changed[:4]) or 'identity'} differ); "
                "use another out_dir (or, where the command has it, --force: it removes only what w2s wrote there)"
            )
        folder.reset([*artefacts, *marker.get("published", {})])
        folder.marker = {**new_marker(command, identity)}
        folder.resumed = False
        atomic_write_json(path / MARKER, folder.marker)
        return folder
    if folder.finished:
        folder.verify()
    return folder


def finished_run(path: str | Path, command: str) -> bool:
    """True when `path` holds a finished run of `command` whose published files all check (no lock taken)."""
    path = Path(path)
    marker = read_marker(path) if path.is_dir() else None
    if marker is None or marker["command"] != command or marker.get("state") != "done":
        return False
    return not RunFolder(path, command, marker.get("identity"), marker).verify()
