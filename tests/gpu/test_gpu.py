"""The paths that only a GPU runs: vLLM's scorer on CUDA, bf16 scoring, and tensor parallelism. Every test here
carries the `gpu` marker and is skipped where no CUDA device is present (tests/conftest.py); `make test` runs
them on a GPU machine with vLLM installed (`pip install -e .[gpu]`).

Each compares against the transformers scorer in float32 on the same micro-world rows, the reference that the CPU
tests check everywhere else.
"""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch

from tests.cache.helpers import build

pytestmark = [pytest.mark.gpu, pytest.mark.integration]

TOKEN_COLUMNS = ("logp_weak_base", "logp_weak_aligned", "weak_log_ratio")


def read_table(cache_dir):
    return ds.dataset(str(cache_dir / "parquet"), format="parquet").to_table().sort_by("row_id")


def worst_difference(got, want, column: str) -> float:
    """The largest absolute difference of one per-token column over every row (shapes must agree)."""
    worst = 0.0
    for row in range(want.num_rows):
        a = np.asarray(got[column][row].as_py(), np.float64)
        b = np.asarray(want[column][row].as_py(), np.float64)
        assert a.shape == b.shape, f"{column}, row {row}: {a.shape} against {b.shape} tokens"
        worst = max(worst, float(np.abs(a - b).max(initial=0.0)))
    return worst


def test_vllm_gpu_scorer_equals_transformers(micro_world, tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e .[gpu])")
    build(micro_world, tmp_path / "hf", format="parquet", backend="transformers", device="cpu")
    build(micro_world, tmp_path / "vllm", format="parquet", backend="vllm")
    got, want = read_table(tmp_path / "vllm"), read_table(tmp_path / "hf")
    assert got["input_ids"].to_pylist() == want["input_ids"].to_pylist()
    for column in TOKEN_COLUMNS:
        assert worst_difference(got, want, column) < 2e-3, column  # fp32 on GPU kernels against CPU


def test_bf16_scores_stay_within_their_measured_error(micro_world, tmp_path):
    build(micro_world, tmp_path / "fp32", format="parquet", backend="transformers", device="cpu")
    build(micro_world, tmp_path / "bf16", format="parquet", backend="transformers", device="cuda",
          model_dtype="bfloat16")  # fmt: skip
    got, want = read_table(tmp_path / "bf16"), read_table(tmp_path / "fp32")
    ratio = worst_difference(got, want, "weak_log_ratio")
    assert 0 < ratio < 0.5, f"bf16 weak_log_ratio differs from fp32 by {ratio} nats at most"  # 0: not bf16 at all


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="tensor parallelism needs 2 GPUs")
def test_tensor_parallel_scorer_equals_one_gpu(micro_world, tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e .[gpu])")
    build(micro_world, tmp_path / "tp1", format="parquet", backend="vllm")
    build(micro_world, tmp_path / "tp2", format="parquet", backend="vllm", tensor_parallel_size=2)
    got, want = read_table(tmp_path / "tp2"), read_table(tmp_path / "tp1")
    for column in TOKEN_COLUMNS:
        assert worst_difference(got, want, column) < 2e-3, column
