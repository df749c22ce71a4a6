"""What a training run leaves on disk, and how a rerun finds it: checkpoints, `final/`, and the done marker.

- Checkpoints: DeepSpeed's own files (pickles: an output folder must be trusted, like any checkpoint) in
  `checkpoints/step-N/`, with the run's position beside them in plain JSON (`w2s_state.json`, written after
  DeepSpeed's files). A resumed run takes the newest tag whose JSON is there, so a save killed half-way is never
  loaded. Only the newest `keep` checkpoints are kept.
- `final/`: written to a temporary folder and renamed into place, so it is either whole or absent.
- `done.json`: written after `final/`, for people and scripts; what makes a rerun report "already done" is the
  folder's marker (`w2s.runs`), which records the sha256 of every published file and is checked on every rerun
  (no checkpoint is needed for that: the last one is written only when `train.save_final_checkpoint` asks).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from w2s.errors import UserError
from w2s.io import atomic_write_json


class CheckpointError(UserError):
    """A checkpoint folder whose position file w2s cannot use."""


CHECKPOINTS = "checkpoints"
STATE = "w2s_state.json"
DONE = "done.json"
ARTEFACTS = (
    "metrics.jsonl",
    "tensorboard",
    "summary.json",
    "curves.png",
    "final",
    DONE,
    CHECKPOINTS,
    "provenance.json",
)
"""Everything a training run writes into its folder: what a fresh start clears (`w2s.runs.RunFolder.reset`)."""
PUBLISHED = ("final", "metrics.jsonl", "summary.json", "curves.png", DONE)
"""What a finished run publishes; `w2s.runs` records their sha256 and a rerun checks them before "already done"."""
TAG = re.compile(r"step-(\d+)")


def checkpoint_tags(out_dir: Path) -> list[tuple[int, str]]:
    """(step, tag) of every complete checkpoint of a run, oldest first."""
    folder = out_dir / CHECKPOINTS
    found = []
    for path in folder.glob("step-*") if folder.is_dir() else []:
        match = TAG.fullmatch(path.name)
        if match and (path / STATE).exists():
            found.append((int(match.group(1)), path.name))
    return sorted(found)


def latest_checkpoint(out_dir: Path) -> tuple[str, dict] | None:
    """The newest complete checkpoint's tag and position (step, epoch, consumed), or None."""
    tags = checkpoint_tags(out_dir)
    if not tags:
        return None
    tag = tags[-1][1]
    path = out_dir / CHECKPOINTS / tag / STATE
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        state = None
    keys = ("step", "epoch", "consumed")
    if not isinstance(state, dict) or not all(isinstance(state.get(k), int) and state[k] >= 0 for k in keys):
        raise CheckpointError(
            f"{path}: not a w2s checkpoint position (integers {', '.join(keys)}); remove {path.parent} to resume "
            "from the checkpoint before it"
        )
    return tag, state


def save_checkpoint(engine, out_dir: Path, state: dict, keep: int, is_main: bool) -> None:
    """DeepSpeed checkpoint `step-<step>`, then its position as JSON, then the oldest beyond `keep` removed."""
    tag = f"step-{state['step']}"
    engine.save_checkpoint(str(out_dir / CHECKPOINTS), tag=tag)  # collective: every rank takes part
    if not is_main:
        return
    atomic_write_json(out_dir / CHECKPOINTS / tag / STATE, state)
    for _, old in checkpoint_tags(out_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(out_dir / CHECKPOINTS / old, ignore_errors=True)


def publish_final(out_dir: Path, write) -> Path:
    """Calls `write(folder)` on a temporary folder, then renames it to `out_dir/final` (replacing an older one)."""
    final = out_dir / "final"
    tmp = out_dir / f".final.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def mark_done(out_dir: Path, provenance: dict, steps: int) -> None:
    atomic_write_json(out_dir / DONE, {"steps": steps, "provenance": provenance})


def remove_stale_temporaries(out_dir: Path) -> None:
    """Deletes `final/` temporaries a killed run left behind."""
    for stale in out_dir.glob(".final.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
