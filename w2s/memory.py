"""Memory on paper: the log-prob step (plain and chunked), vLLM's prompt_logprobs and the paper configs' table.

One set of formulas serves three readers: `tests/w2s/test_logprob_memory.py` and `tests/cache/test_vllm_reserve.py`
measure the real computations against them, `w2s cache` (vLLM backend) reserves GPU memory with them, and
`benchmarks/big_vocab.py --readme` prints the README table from them. Sizes are bytes; `b` is the model dtype's
bytes per element (4 for float32, 2 for bfloat16).
"""

from __future__ import annotations

from dataclasses import dataclass

from w2s.errors import ConfigError
from w2s.logprobs import chunk_rows

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GIB = 2**30


def logprob_step_bytes(
    tokens: int,
    vocab: int,
    hidden: int,
    b: int = 4,
    *,
    path: str = "linear",
    train: bool = False,
    head_grad: bool | None = None,
    chunk: int | None = None,
    softcap: bool = False,
) -> int:
    """Peak bytes the log-prob step holds beyond the model body, measured by `tests/w2s/test_logprob_memory.py`.

    `path` is how `w2s.logprobs` computes it; `head_grad` (default: `train`) whether the output layer's weight
    is trained (not with LoRA), whose gradient (vocab x hidden x b) every path then holds.
      plain:  full logits over every position (`tokens` counts them all, prompt included):
              inference tokens x vocab x (b + 4, + 4 if b != 4): the logits, their float32 copy, the log-softmax;
              training  tokens x vocab x 12: the saved log-softmax, the gather's and the log-softmax's gradients.
      linear: `LinearTargetLogprobs` over the scored positions: one block of rows = min(tokens, chunk) positions,
              rows x vocab x (4, + b if b != 4, + 4 with a soft cap in training), the kept hidden states
              (tokens x hidden x b, twice in training) and, when the head is trained, the float32 sum of its
              weight gradient (vocab x hidden x 4) in place of the model-dtype one.
      module: the output layer called chunk by chunk under checkpointing (ZeRO-3, a LoRA-wrapped head, autocast):
              as linear in inference; rows x vocab x (16, + 4 with a soft cap) in training.
    Only `plain` grows with tokens x vocab.
    """
    head_grad = train if head_grad is None else head_grad
    wide = b != 4
    weight_grad = vocab * hidden * b if head_grad else 0
    if path == "plain":
        return tokens * vocab * (12 if train else b + 4 + (4 if wide else 0)) + weight_grad
    rows = min(tokens, chunk or chunk_rows(vocab))
    kept = tokens * (hidden * b * (2 if train else 1) + 16)
    if path == "module" and train:
        return rows * vocab * (16 + (4 if softcap else 0)) + kept + weight_grad
    block = rows * vocab * (4 + (b if wide else 0) + (4 if softcap and train else 0))
    return block + kept + (vocab * hidden * 4 if head_grad else 0)


def prompt_logprobs_bytes(vocab: int, b: int, max_len: int, batch_tokens: int) -> int:
    """Peak bytes of vLLM's prompt_logprobs step (V1 model runner), which vLLM's start-up profiling does not count.

    Per request of n prompt rows the runner holds the logits (n x vocab x b), the float32 log-softmax (x 4) and a
    bool rank mask (x 1), and the previous request's logits and log-softmax are still referenced while the next
    request's are made: at most max(2b + 4, b + 8) bytes per row and vocabulary entry, for n = min(max_len,
    batch_tokens) rows (one step schedules at most batch_tokens tokens). vLLM pads the vocabulary to 64.
    The V2 model runner works in chunks of 1024 rows, so this bounds it too.
    """
    rows = min(max_len, batch_tokens)
    padded = -(-vocab // 64) * 64
    return rows * padded * max(2 * b + 4, b + 8)


@dataclass(frozen=True)
class Shape:
    """What the formulas need of a model: parameters, vocabulary, width, layers and the KV width per layer."""

    params: int
    vocab: int
    hidden: int
    layers: int
    kv_width: int  # num_key_value_heads x head_dim
    intermediate: int = 0  # the MLP's width (the training estimate needs it)

    @classmethod
    def of(cls, config) -> Shape:
        """The shape of a Hugging Face config, its parameters counted on the meta device (nothing allocated)."""
        import torch
        from transformers import AutoModelForCausalLM

        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        with torch.device("meta"):
            params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        width = getattr(text, "intermediate_size", 0) or 0
        return cls(params, text.vocab_size, text.hidden_size, text.num_hidden_layers, kv_heads * head_dim, width)

    def kv_bytes(self, tokens: int, b: int) -> int:
        """KV cache of `tokens` positions: keys and values of every layer."""
        return 2 * self.layers * self.kv_width * b * tokens


def vllm_budget(
    role: str,
    shape: Shape,
    dtype: str,
    max_len: int,
    batch_tokens: int,
    share: float,
    device_bytes: int,
    tensor_parallel: int = 1,
) -> float:
    """The `gpu_memory_utilization` to give vLLM so that `prompt_logprobs_bytes` stays free beside it.

    vLLM sizes its KV cache to fill `gpu_memory_utilization` of each GPU after profiling a forward, but the
    prompt-logprob tensors come later and are not counted (vllm#5907, #5424), so the model's `share` is cut by
    that reserve. Weights and KV cache are split over `tensor_parallel` GPUs; the gathered logits are not.
    Refuses (ConfigError) when the share cannot hold the weights, the reserve and the KV cache of one longest
    sequence: the largest batch could not run. `batch_tokens` is the engine's max_num_batched_tokens.
    """
    b = DTYPE_BYTES[dtype]
    weights = shape.params * b // tensor_parallel
    reserve = prompt_logprobs_bytes(shape.vocab, b, max_len, batch_tokens)
    kv = shape.kv_bytes(max_len + 1, b) // tensor_parallel
    budget = share * device_bytes
    if weights + reserve + kv > budget:
        raise ConfigError(
            f"cache: the {role} model needs {weights / GIB:.1f} GiB of weights + {reserve / GIB:.1f} GiB for "
            f"prompt_logprobs ({batch_tokens} tokens per engine step, max_len={max_len}, vocabulary "
            f"{shape.vocab:,}) + {kv / GIB:.2f} GiB of KV cache per GPU, more than its {budget / GIB:.1f} GiB share "
            "of the GPU; lower cache.batch_tokens or cache.max_len, raise cache.tensor_parallel_size, or score "
            "fewer models at once (cache.strong_ref empty)"
        )
    return (budget - reserve) / device_bytes


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


def model_state_bytes(params: int, zero_stage: int, gpus: int, offload_optimizer: bool, lora: bool) -> float:
    """Per-GPU bytes of a bf16 policy's weights, gradients and Adam state (float32 master, two moments).

    LoRA trains a negligible share: the frozen weights are held whole (ZeRO-3 is refused with LoRA). Otherwise
    2 + 2 + 12 bytes per parameter, partitioned by ZeRO stage: 1 splits the 12, 2 also the gradients, 3 all; an
    offloaded optimizer keeps the 12 on the CPU.
    """
    if lora:
        return 2.0 * params
    optimizer = 0.0 if offload_optimizer else 12.0
    weights, grads = 2.0, 2.0
    optimizer /= gpus if zero_stage >= 1 else 1
    grads /= gpus if zero_stage >= 2 else 1
    weights /= gpus if zero_stage >= 3 else 1
    return (weights + grads + optimizer) * params


def _qwen2(name: str) -> Shape:
    from transformers import Qwen2Config

    return Shape.of(Qwen2Config(**QWEN2[name]))


def _paper_settings(path) -> dict:
    """The settings of a paper config (`configs/paper_*.yaml`) that the memory formulas need."""
    import json
    from pathlib import Path

    from w2s.cache.config import CacheConfig
    from w2s.config import read_yaml

    config = read_yaml(Path(path).read_text())  # the loader every config goes through: a duplicated key is refused
    cache, train = config["cache"], config["train"]
    if train.get("deepspeed_config"):
        ds_path = Path(path).parent.parent / train["deepspeed_config"]
        zero = json.loads(ds_path.read_text()).get("zero_optimization", {})
    else:  # the train section's own settings (train.zero_stage, train.offload)
        zero = {"stage": train.get("zero_stage", 0), "offload_optimizer": {"device": train.get("offload", "none")}}
    return dict(
        max_len=cache["max_len"],
        batch_tokens=cache.get("batch_tokens", CacheConfig.batch_tokens),
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
    s, weak, strong = _paper_settings(path), _qwen2("Qwen2-1.5B"), _qwen2("Qwen2-7B")
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
    """The README's markdown table of per-GPU memory for the paper configs, before and after, from the formulas."""
    from pathlib import Path

    lines = [
        "| config | stage | before: model + log-probs = total | after: model + log-probs = total |",
        "|---|---|---:|---:|",
    ]
    for config in sorted(Path(repo, "configs").glob("paper_*.yaml")):
        for stage, *cases in paper_rows(config, device_gib, gpus):
            cells = [f"{m / GIB:.1f} + {lp / GIB:.1f} = **{(m + lp) / GIB:.1f} GiB**" for m, lp in cases]
            lines.append(f"| {config.stem} | {stage} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


ZERO3_PREFETCH = 50_000_000
"""DeepSpeed's `stage3_prefetch_bucket_size` default: parameters gathered ahead of the layer being computed."""


def layer_params(shape: Shape) -> int:
    """Parameters of one Llama/Qwen2-style decoder layer: q, k, v, o (with q/k/v biases), gate/up/down, 2 norms."""
    h, k, f = shape.hidden, shape.kv_width, shape.intermediate
    return 2 * h * h + 2 * h * k + 3 * h * f + (h + 2 * k) + 2 * h


def layer_activation_bytes(shape: Shape, tokens: int, b: int) -> int:
    """Bytes one decoder layer saves for its backward over `tokens` positions (model dtype `b` bytes).

    Per position: the two RMSNorms' normalised outputs (2h x b) and, in 16-bit, their float32 inputs and
    reciprocal RMS (2 x (4h + 4)); q, k, v (h + 2k); the rotated q and k (h + k); the attention output (h);
    gate, up, SiLU(gate) and their product (4f). Attention runs as SDPA/flash: no [seq, seq] matrix is kept.
    """
    h, k, f = shape.hidden, shape.kv_width, shape.intermediate
    norms = 2 * (4 * h + 4) if b != 4 else 2 * 4
    return tokens * (b * (5 * h + 3 * k + 4 * f) + norms)


def activation_bytes(shape: Shape, tokens: int, b: int, checkpointing: bool) -> int:
    """Activations of the model body kept for the backward: every layer's (see `layer_activation_bytes`), or,
    with gradient checkpointing, each layer's input (tokens x hidden x b) plus one layer recomputed at a time."""
    one = layer_activation_bytes(shape, tokens, b)
    if checkpointing:
        return shape.layers * tokens * shape.hidden * b + one
    return shape.layers * one


def lora_params(shape: Shape, rank: int) -> int:
    """LoRA adapters on q, k, v, o of every layer (w2s's targets): rank x (in + out) each."""
    h, k = shape.hidden, shape.kv_width
    return shape.layers * rank * (2 * (h + h) + 2 * (h + k))


@dataclass(frozen=True)
class TrainMemory:
    """Per-GPU bytes of one training step, by part; `host` is the CPU memory an offloaded optimizer takes per GPU."""

    weights: float
    gradients: float
    optimizer: float
    gathered: float
    activations: float
    logprobs: float
    host: float = 0.0

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.gathered + self.activations + self.logprobs


def train_memory(
    shape: Shape,
    micro_batch: int,
    max_len: int,
    gpus: int,
    zero_stage: int,
    offload: bool = False,
    b: int = 2,
    checkpointing: bool = False,
    lora_rank: int = 0,
) -> TrainMemory:
    """Per-GPU memory of a WSPO step on the cached reference (the policy alone on the GPU), on paper.

    Model states as `model_state_bytes` (b + b + 12 bytes per trained parameter, split by ZeRO stage; an
    offloaded optimizer keeps its 12, plus a float32 copy of the gradients, on the CPU); with LoRA (`lora_rank` >
    0) the frozen weights are whole on every GPU and only the adapters are trained. ZeRO-3 gathers the weights of
    the module being computed (at most the embedding or output layer, vocab x hidden) plus the prefetch bucket.
    Activations of a micro-batch of `max_len` rows, and the chunked log-prob step over every position.
    """
    tokens, trained = micro_batch * max_len, shape.params
    weights = b * shape.params
    if lora_rank:
        trained = lora_params(shape, lora_rank)
        weights += b * trained
    split = {stage: gpus if zero_stage >= stage else 1 for stage in (1, 2, 3)}
    if not lora_rank:
        weights /= split[3]
    optimizer = 12 * trained / split[1]
    host = (optimizer + 4 * trained / split[2]) if offload else 0.0
    gathered = b * (max(shape.vocab * shape.hidden, layer_params(shape)) + ZERO3_PREFETCH) if zero_stage == 3 else 0
    path = "module" if zero_stage == 3 else "linear"
    head = logprob_step_bytes(tokens, shape.vocab, shape.hidden, b, path=path, train=True, head_grad=not lora_rank)
    return TrainMemory(
        weights=weights,
        gradients=b * trained / split[2],
        optimizer=0.0 if offload else optimizer,
        gathered=gathered,
        activations=activation_bytes(shape, tokens, b, checkpointing),
        logprobs=head,
        host=host,
    )


def paper_train_memory(path, gpus: int = 4, checkpointing: bool | None = None) -> TrainMemory:
    """`train_memory` of a paper config (`configs/paper_*.yaml`): its Qwen2-7B policy on `gpus` GPUs, as the config
    sets it (ZeRO stage, offload, LoRA, micro-batch, max_len, dtype); `checkpointing` overrides the config's."""
    s = _paper_settings(path)
    checkpointing = s["gradient_checkpointing"] if checkpointing is None else checkpointing
    lora_rank = s["lora_rank"] if s["lora"] else 0
    return train_memory(
        _qwen2("Qwen2-7B"), s["micro_batch"], s["max_len"], gpus, s["zero_stage"], s["offload"], s["b"],
        checkpointing, lora_rank,
    )  # fmt: skip
