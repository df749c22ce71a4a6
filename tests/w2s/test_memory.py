"""The memory formulas on paper: model shapes, the vLLM budget (and its refusal), the README table."""

from pathlib import Path

import pytest
from transformers import Qwen2Config

from w2s.errors import ConfigError
from w2s.memory import (
    GIB,
    QWEN2,
    Shape,
    logprob_step_bytes,
    model_state_bytes,
    paper_rows,
    paper_table,
    prompt_logprobs_bytes,
    vllm_budget,
)

REPO = Path(__file__).resolve().parents[2]


def test_shapes_of_the_paper_models():
    small, large = (Shape.of(Qwen2Config(**QWEN2[name])) for name in ("Qwen2-1.5B", "Qwen2-7B"))
    assert small.params == 1_543_714_304 and large.params == 7_615_616_512  # as published
    assert (large.vocab, large.hidden, large.layers, large.kv_width) == (152_064, 3584, 28, 512)
    assert large.kv_bytes(1, 2) == 2 * 28 * 512 * 2


def test_prompt_logprobs_reserve_formula():
    # fp32: this request's logits and log-softmax and the previous request's two: 12 bytes per row and entry
    assert prompt_logprobs_bytes(151_936, 4, max_len=512, batch_tokens=8192) == 512 * 151_936 * 12
    # bf16: b + 8 = 10 bytes; rows capped by one engine step; the vocabulary padded to 64 as vLLM does
    assert prompt_logprobs_bytes(100, 2, max_len=512, batch_tokens=300) == 300 * 128 * 10


def test_vllm_budget_keeps_the_reserve_free_and_refuses_what_cannot_fit():
    shape = Shape.of(Qwen2Config(**QWEN2["Qwen2-7B"]))
    device = 80 * GIB
    utilization = vllm_budget("strong_ref", shape, "bfloat16", 1536, 8192, 0.85 / 3, device)
    reserve = prompt_logprobs_bytes(shape.vocab, 2, 1536, 8192)
    assert utilization == pytest.approx(0.85 / 3 - reserve / device)
    with pytest.raises(ConfigError, match=r"the strong_ref model needs 14\.2 GiB of weights .* cache\.batch_tokens"):
        vllm_budget("strong_ref", shape, "bfloat16", 1536, 8192, 0.85 / 3, 40 * GIB)
    # split over two GPUs, weights and KV halve but the gathered logits do not
    assert vllm_budget("strong_ref", shape, "bfloat16", 1536, 8192, 0.85 / 3, 40 * GIB, tensor_parallel=2) > 0


def test_model_states_per_gpu():
    psi = 1_000
    assert model_state_bytes(psi, 0, 4, False, False) == 16 * psi
    assert model_state_bytes(psi, 2, 4, False, False) == (2 + 2 / 4 + 12 / 4) * psi
    assert model_state_bytes(psi, 3, 4, True, False) == (2 + 2) / 4 * psi
    assert model_state_bytes(psi, 2, 4, False, True) == 2 * psi


def test_readme_table_comes_from_the_formulas():
    table = paper_table(REPO)
    assert table.count("| paper_") == 6 and "ZeRO-3, optimizer offload" in table and "LoRA, ZeRO-2" in table
    for config in sorted((REPO / "configs").glob("paper_*.yaml")):
        (_, vllm_before, vllm_after), _, (_, train_before, train_after) = paper_rows(config)
        assert train_after[0] == train_before[0] and train_after[1] < train_before[1]  # the step shrinks
        assert sum(vllm_after) == pytest.approx(0.85 * 80 * GIB)  # the reserve is inside the engines' 0.85 now
        assert sum(vllm_before) > sum(vllm_after)
    plain = logprob_step_bytes(8192, 152_064, 3584, 2, path="plain")
    assert f"{plain / GIB:.1f}" in table  # the transformers backend's 'before' is the plain formula
