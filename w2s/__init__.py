"""w2s: weak-to-strong alignment with an offline logit cache.

The public API, imported on first use (so `import w2s` loads no model library):

- the cache: `Cache` (open a cache folder, read and verify shards), `FORMATS` and `BACKENDS` (its registries);
- the losses: `WSPO`, `SequenceWSPO`, `wspo_loss`, `wspo_chunk_loss`, `LOSSES`;
- the searches: `chunk_beam_search`, `best_of_n`, `search` (steer a model on in-memory prompts), `SEARCHES`;
- the tasks: `Task`, `LengthTask`, `RewardModelTask`, `load_task`, `TASKS`;
- `Registry`, the one registry style of all of the above.
"""

from __future__ import annotations

import importlib

from w2s.errors import quiet_deepspeed

quiet_deepspeed()  # before any stage imports DeepSpeed, which otherwise prints a banner guessing the CPU

_EXPORTS = {
    "Cache": "w2s.cache.store",
    "FORMATS": "w2s.cache.formats",
    "BACKENDS": "w2s.cache.backends",
    "WSPO": "w2s.train.losses",
    "SequenceWSPO": "w2s.train.losses",
    "wspo_loss": "w2s.train.losses",
    "wspo_chunk_loss": "w2s.train.losses",
    "LOSSES": "w2s.train.losses",
    "chunk_beam_search": "w2s.search.cbs",
    "best_of_n": "w2s.search.cbs",
    "search": "w2s.eval.generate",
    "SEARCHES": "w2s.search.components",
    "Task": "w2s.task",
    "LengthTask": "w2s.eval.tasks",
    "RewardModelTask": "w2s.eval.tasks",
    "load_task": "w2s.task",
    "TASKS": "w2s.task",
    "Registry": "w2s.registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'w2s' has no attribute {name!r}")
