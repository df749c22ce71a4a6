"""Memory on paper: the log-prob step (plain and chunked), vLLM's prompt_logprobs and a training step.

One set of formulas serves three readers: `tests/w2s/test_logprob_memory.py` and `tests/cache/test_vllm_reserve.py`
measure the real computations against them, `w2s cache` (vLLM backend) reserves GPU memory with them, and
`benchmarks/paper_memory.py` applies them to the paper configs (the docs' tables). Sizes are bytes; `b` is the
model dtype's bytes per element (4 for float32, 2 for bfloat16).
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
