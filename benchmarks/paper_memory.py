"""The paper configs (`configs/paper_*.yaml`: Qwen2-1.5B weak pair, Qwen2-7B strong) on paper: per-GPU memory of
their cache and training stages from `w2s.memory`'s formulas (nothing runs, nothing is downloaded).

The tables in docs/memory.md come from here (`benchmarks/big_vocab.py --readme`, `benchmarks/train_memory.py`);
`tests/w2s/test_memory.py` checks them. They were in the runtime module `w2s.memory` until the layout review: no
command needs them.
"""

from __future__ import annotations

import json
from pathlib import Path

from w2s.cache.config import CacheConfig
from w2s.config import read_yaml
from w2s.device import pick_batch_tokens
from w2s.memory import (
    DTYPE_BYTES,
    GIB,
    Shape,
    TrainMemory,
    logprob_step_bytes,
    model_state_bytes,
    prompt_logprobs_bytes,
    train_memory,
)

QWEN2 = {
    "Qwen2-1.5B": dict(
        vocab_size=151_936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "Qwen2-7B": dict(
        vocab_size=152_064,
        hidden_size=3584,
        intermediate_size=18_944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    ),
}
"""The paper configs' models, from their published config.json (the shapes only: nothing is downloaded)."""


def qwen2_shape(name: str) -> Shape:
    from transformers import Qwen2Config

    return Shape.of(Qwen2Config(**QWEN2[name]))


def paper_settings(path) -> dict:
    """The settings of a paper config (`configs/paper_*.yaml`) that the memory formulas need."""
    config = read_yaml(Path(path).read_text())  # the loader every config goes through: a duplicated key is refused
    cache, train = config["cache"], config["train"]
    if train.get("deepspeed_config"):
        ds_path = Path(path).parent.parent / train["deepspeed_config"]
        zero = json.loads(ds_path.read_text()).get("zero_optimization", {})
    else:  # the train section's own settings (train.zero_stage, train.offload)
        zero = {"stage": train.get("zero_stage", 0), "offload_optimizer": {"device": train.get("offload", "none")}}
    return dict(
        max_len=cache["max_len"],
        # the paper's runs are on GPUs: `auto` (the default) is the GPU budget there (w2s.device)
        batch_tokens=pick_batch_tokens(cache.get("batch_tokens", CacheConfig.batch_tokens), "cuda"),
        b=DTYPE_BYTES[cache.get("model_dtype", "float32")],
        micro_batch=train["micro_batch_size"],
        lora=bool(train.get("lora", False)),
        zero_stage=zero.get("stage", 0),
        offload=zero.get("offload_optimizer", {}).get("device", "none") != "none",
        lora_rank=train.get("lora_rank", 8),
        gradient_checkpointing=bool(train.get("gradient_checkpointing", False)),
    )


def paper_rows(path, device_gib: float = 80.0, gpus: int = 4) -> list[tuple[str, tuple, tuple]]:
    """(stage, (model bytes, log-prob bytes) before, the same after) per GPU, for one paper config: a Qwen2-1.5B
    weak pair and a Qwen2-7B strong reference cached on one GPU (vLLM, or the transformers backend), and the
    Qwen2-7B policy's training step on `gpus` GPUs with the cached reference (a micro-batch of max_len rows)."""
    s, weak, strong = paper_settings(path), qwen2_shape("Qwen2-1.5B"), qwen2_shape("Qwen2-7B")
    models, b, step_tokens = (weak, weak, strong), s["b"], max(s["batch_tokens"], s["max_len"] + 1)
    # vLLM: each engine got 0.85/3 of the GPU and the prompt_logprobs tensors came on top; now they are reserved
    # inside that share (vllm_budget), so the engines' total stays at 0.85 of the GPU
    share = 0.85 * device_gib * GIB
    reserve = sum(prompt_logprobs_bytes(m.vocab, b, s["max_len"], step_tokens) for m in models)
    rows = [("cache, vLLM, 3 models on one GPU", (share, reserve), (share - reserve, reserve))]
    # transformers backend: the largest forward is the 7B reference over batch_tokens positions
    weights = sum(m.params for m in models) * b
    plain = logprob_step_bytes(s["batch_tokens"], strong.vocab, strong.hidden, b, path="plain")
    fused = logprob_step_bytes(s["batch_tokens"], strong.vocab, strong.hidden, b)
    rows.append(("cache, transformers backend, 3 models on one GPU", (weights, plain), (weights, fused)))
    tokens = s["micro_batch"] * s["max_len"]
    states = model_state_bytes(strong.params, s["zero_stage"], gpus, s["offload"], s["lora"])
    after_path = "module" if s["zero_stage"] == 3 else "linear"  # ZeRO-3 partitions the output layer's weight
    step = dict(train=True, head_grad=not s["lora"])
    before = logprob_step_bytes(tokens, strong.vocab, strong.hidden, b, path="plain", **step)
    after = logprob_step_bytes(tokens, strong.vocab, strong.hidden, b, path=after_path, **step)
    how = ["LoRA"] * s["lora"] + [f"ZeRO-{s['zero_stage']}"] + ["optimizer offload"] * s["offload"]
    rows.append((f"train, 7B policy on {gpus} GPUs ({', '.join(how)})", (states, before), (states, after)))
    return rows


def paper_table(repo, device_gib: float = 80.0, gpus: int = 4) -> str:
    """The markdown table of per-GPU memory for the paper configs, before and after, from the formulas
    (docs/memory.md)."""
    lines = [
        "| config | stage | before: model + log-probs = total | after: model + log-probs = total |",
        "|---|---|---:|---:|",
    ]
    for config in sorted(Path(repo, "configs").glob("paper_*.yaml")):
        for stage, *cases in paper_rows(config, device_gib, gpus):
            cells = [f"{m / GIB:.1f} + {lp / GIB:.1f} = **{(m + lp) / GIB:.1f} GiB**" for m, lp in cases]
            lines.append(f"| {config.stem} | {stage} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def paper_train_memory(path, gpus: int = 4, checkpointing: bool | None = None) -> TrainMemory:
    """`train_memory` of a paper config (`configs/paper_*.yaml`): its Qwen2-7B policy on `gpus` GPUs, as the config
    sets it (ZeRO stage, offload, LoRA, micro-batch, max_len, dtype); `checkpointing` overrides the config's."""
    s = paper_settings(path)
    checkpointing = s["gradient_checkpointing"] if checkpointing is None else checkpointing
    lora_rank = s["lora_rank"] if s["lora"] else 0
    return train_memory(
        qwen2_shape("Qwen2-7B"), s["micro_batch"], s["max_len"], gpus, s["zero_stage"], s["offload"], s["b"],
        checkpointing, lora_rank,
    )  # fmt: skip
