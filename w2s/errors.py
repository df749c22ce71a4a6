"""The user-facing errors: each one is a refusal the CLI prints as one line and exits 2 on, never a traceback.

Every stage raises one of these for a mistake in what the user handed it (a config, a dataset, a model folder,
a cache); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path


class UserError(ValueError):
    """A refusal caused by the user's input; the message names the file, row and field (or the model and path)."""


class ConfigError(UserError):
    """A config file or override that does not fit the schema; the message names the key."""


class DataError(UserError):
    """A dataset that cannot be cached as it is; the message names the file, row and field."""


class CacheMismatch(UserError):
    """A cache that does not match what a stage was handed; the message says what differs."""


def quiet_deepspeed() -> None:
    """On a machine with no accelerator device, tells DeepSpeed so (DS_ACCELERATOR=cpu), which it otherwise
    guesses with a warning banner on every import. A device (NVIDIA, AMD, Intel, Habana) or the user's own
    DS_ACCELERATOR leaves DeepSpeed's detection alone."""
    devices = ("nvidia[0-9]*", "kfd", "dri/renderD*", "accel*", "hl[0-9]*")
    if "DS_ACCELERATOR" not in os.environ and not any(any(Path("/dev").glob(d)) for d in devices):
        os.environ["DS_ACCELERATOR"] = "cpu"


def run_as_command(command: str, action: Callable[[], int]) -> int:
    """Runs `action` as the command `command`: a refusal, an interrupt or a failed read or write becomes one line on
    stderr and an exit status (2; 130 for Ctrl-C), never a traceback. Every output w2s writes is published
    atomically and its folder's marker says what finished (`w2s.runs`), so an interrupted run resumes on rerun."""
    try:
        return action()
    except UserError as err:
        print(f"{command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"{command}: interrupted; nothing half-written was published: rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    except OSError as err:  # a read-only or full disk, a missing file: the path and the reason
        where = f"{err.filename}: " if err.filename else ""
        print(f"{command}: {where}{err.strerror or err}", file=sys.stderr)
        return 2
