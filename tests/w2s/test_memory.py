"""The memory formulas on paper: model shapes, the vLLM budget (and its refusal), the docs' table."""

import sys
from pathlib import Path

import pytest
import yaml
from transformers import Qwen2Config

from benchmarks.paper_memory import QWEN2, paper_rows, paper_table, paper_train_memory
from w2s.errors import ConfigError
from w2s.logprobs import chunk_rows
from w2s.memory import (
    GIB,
    Shape,
    activation_bytes,
    layer_activation_bytes,
    layer_params,
    logprob_step_bytes,
    lora_params,
    model_state_bytes,
    prompt_logprobs_bytes,
    train_memory,
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


SMALL = Shape(params=10_000, vocab=100, hidden=8, layers=2, kv_width=4, intermediate=16)


def test_layer_sizes_by_hand():
    # q, o: 8x8 each; k, v: 8x4 each; gate, up, down: 8x16 each; q/k/v biases 8 + 4 + 4; two norms of 8
    assert layer_params(SMALL) == 2 * 64 + 2 * 32 + 3 * 128 + 16 + 16 == 608
    large = Shape.of(Qwen2Config(**QWEN2["Qwen2-7B"]))
    assert 28 * layer_params(large) + 2 * 152_064 * 3584 + 3584 == large.params  # layers, embedding, head, norm
    # per position in bf16: 2 x (5h + 3k + 4f) = 2 x 116 = 232 bytes, + two float32 norm inputs and rsqrt 2 x 36
    assert layer_activation_bytes(SMALL, tokens=3, b=2) == 3 * (232 + 72) == 912
    assert layer_activation_bytes(SMALL, tokens=3, b=4) == 3 * (4 * 116 + 8)
    assert activation_bytes(SMALL, 3, 2, checkpointing=False) == 2 * 912
    assert activation_bytes(SMALL, 3, 2, checkpointing=True) == 2 * 3 * 8 * 2 + 912  # layer inputs + one layer
    assert lora_params(SMALL, rank=2) == 2 * 2 * (2 * 16 + 2 * 12)


def test_training_estimate_of_the_xsum_config_by_hand():
    """Qwen2-7B, 4 GPUs, ZeRO-3, optimizer offload, bf16, 2 rows of 1536 tokens: every part worked out by hand."""
    memory = paper_train_memory(REPO / "configs" / "paper_xsum_qwen2.yaml", gpus=4, checkpointing=False)
    params, vocab, hidden = 7_615_616_512, 152_064, 3584
    assert memory.weights == memory.gradients == 2 * params / 4 == 3_807_808_256
    assert memory.optimizer == 0 and memory.host == (12 + 4) * params / 4 == 30_462_466_048  # on the CPU
    assert memory.gathered == 2 * (vocab * hidden + 50_000_000) == 1_189_994_752  # the head, then the prefetch
    # per position and layer: 2 x (5 x 3584 + 3 x 512 + 4 x 18944) + 2 x (4 x 3584 + 4) = 219,144 bytes
    assert memory.activations == 28 * 3072 * 219_144 == 18_849_890_304
    # ZeRO-3 calls the head chunk by chunk: 220 rows x vocab x 16, the kept hidden states, the head's gradient
    assert chunk_rows(vocab) == 220
    assert memory.logprobs == 220 * vocab * 16 + 3072 * (hidden * 2 * 2 + 16) + vocab * hidden * 2 == 1_669_349_376
    assert memory.total == 29_324_850_944 and f"{memory.total / GIB:.1f}" == "27.3"
    states = memory.weights + memory.gradients + memory.optimizer
    assert states == model_state_bytes(params, 3, 4, True, False)  # the same accounting as the log-prob table
    checkpointed = paper_train_memory(REPO / "configs" / "paper_xsum_qwen2.yaml", gpus=4, checkpointing=True)
    assert checkpointed.activations == 28 * 3072 * hidden * 2 + 3072 * 219_144 == 1_289_773_056


def test_training_estimate_with_lora_and_without_zero():
    memory = train_memory(SMALL, micro_batch=1, max_len=3, gpus=4, zero_stage=2, b=2, lora_rank=2)
    adapters = lora_params(SMALL, 2)
    assert memory.weights == 2 * (10_000 + adapters)  # the frozen weights whole on every GPU
    assert memory.gradients == 2 * adapters / 4 and memory.optimizer == 12 * adapters / 4
    assert memory.gathered == 0 and memory.host == 0
    whole = train_memory(SMALL, micro_batch=1, max_len=3, gpus=4, zero_stage=0, b=4)
    assert (whole.weights, whole.gradients, whole.optimizer) == (40_000, 40_000, 120_000)


def test_paper_settings_read_the_train_sections_own_zero_keys(tmp_path):
    """A paper config that sets train.zero_stage/offload (no DeepSpeed JSON) gives the same estimate."""
    text = (REPO / "configs" / "paper_xsum_qwen2.yaml").read_text()
    (tmp_path / "configs").mkdir()
    own = tmp_path / "configs" / "paper_xsum_qwen2.yaml"
    config = yaml.safe_load(text)
    config["train"].pop("deepspeed_config", None)
    config["train"].update(zero_stage=3, offload="cpu")
    own.write_text(yaml.safe_dump(config))
    assert paper_train_memory(own) == paper_train_memory(REPO / "configs" / "paper_xsum_qwen2.yaml")


def test_the_train_memory_script_writes_between_the_markers(tmp_path, monkeypatch, capsys):
    from benchmarks.train_memory import main

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- train-memory-table -->\nold table\n<!-- /train-memory-table -->\nafter\n")
    monkeypatch.setattr(sys, "argv", ["train_memory.py", "--readme", str(readme)])
    main()
    text = readme.read_text()
    assert text.startswith("intro\n<!-- train-memory-table -->\n| config |") and text.endswith("after\n")
    assert "old table" not in text and text.count("| paper_") == 4 and "**27.3 GiB**" in text
    assert capsys.readouterr().out.strip() in text
    readme.write_text("no markers")
    with pytest.raises(SystemExit, match="no <!-- train-memory-table -->"):
        main()
