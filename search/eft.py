"""Emulated fine-tuning (EFT), the per-token baseline of weak-to-strong search.

Each token is drawn from log p_strong + beta * (log p_tuned - log p_untuned), which needs the strong model's
whole next-token distribution at every step and one vocabulary shared by the three models. Only the
transformers sampler exposes that distribution (its `LMStepper`); a vLLM sampler is refused with the reason.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from w2s.sampling import encode_prompt, sample_token
from w2s.search.cbs import SearchResult
from w2s.search.samplers import HFSampler, LMStepper, Sampler


def check_same_vocab(strong_model, weak_models, tokenizer=None, weak_tokenizer=None) -> None:
    """Raises ValueError, naming both sizes, unless the models (and tokenizers, if given) share one vocabulary."""
    strong_size = strong_model.get_output_embeddings().weight.shape[0]
    sizes = [weak.get_output_embeddings().weight.shape[0] for weak in weak_models]
    if weak_tokenizer is not None and weak_tokenizer.get_vocab() != tokenizer.get_vocab():
        strong_size, sizes = len(tokenizer), [len(weak_tokenizer)]  # same size, different ids also refused
    elif all(size == strong_size for size in sizes):
        return
    raise ValueError(
        f"EFT needs one shared vocabulary: the strong vocabulary has {strong_size} tokens, the weak one "
        f"{next((size for size in sizes if size != strong_size), strong_size)} (or other token ids); "
        "use chunk_beam_search, which scores text, for different tokenizers"
    )


def require_distributions(sampler: Sampler) -> HFSampler:
    """The sampler, if it exposes next-token distributions (an `HFSampler`); ValueError otherwise."""
    if not isinstance(sampler, HFSampler):
        raise ValueError(
            f"EFT needs the strong model's next-token distribution at every step, which {type(sampler).__name__} "
            "does not expose: use the transformers sampler (HFSampler, engine: hf)"
        )
    return sampler


@torch.no_grad()
def eft_generate(
    sampler: Sampler,
    weak_tuned: PreTrainedModel,
    weak_untuned: PreTrainedModel,
    prompt: str | list[dict],
    beta: float = 1.0,
    max_new_tokens: int = 50,
    seed: int = 0,
    weak_tokenizer: PreTrainedTokenizerBase | None = None,
) -> SearchResult:
    """Emulated fine-tuning: sample from log p_strong + beta * (log p_tuned - log p_untuned), token by token.

    Args:
        sampler: an `HFSampler` of the strong model; its sampling settings (temperature, top-k, top-p) apply.
        weak_tuned, weak_untuned: the weak pair, over the strong model's vocabulary.
        prompt: the user message (or chat messages); the strong tokenizer renders it.
        beta: weight of the weak log-ratio; 0 is plain sampling from the strong model (same tokens, same seed).
        max_new_tokens: token budget.
        seed: seeds the sampling generator, as `HFSampler.begin` does.
        weak_tokenizer: when given, must map tokens to the same ids as the strong tokenizer.

    Returns:
        The response; `score` and `strong_logprob` sum log p_tuned - log p_untuned and log p_strong over its
        tokens (EOS included if sampled).

    Raises:
        ValueError: for a sampler without next-token distributions (vLLM), or, naming both vocabulary sizes,
            when the models (or tokenizers) do not share a vocabulary.
    """
    hf = require_distributions(sampler)
    tokenizer = hf.tokenizer
    check_same_vocab(hf.model, (weak_tuned, weak_untuned), tokenizer, weak_tokenizer)
    prompt_ids = encode_prompt(tokenizer, prompt)
    strong, tuned, untuned = (LMStepper(m, [prompt_ids], hf.use_cache) for m in (hf.model, weak_tuned, weak_untuned))
    generator = torch.Generator(device=hf.model.device).manual_seed(seed)
    sampling = dict(temperature=hf.sampling.temperature, top_k=hf.sampling.top_k, top_p=hf.sampling.top_p)
    ids, score, strong_logprob, finished = [], 0.0, 0.0, False
    for _ in range(max_new_tokens):
        base = strong.logprobs()  # [1, vocab]
        ratio = tuned.logprobs().to(base.device) - untuned.logprobs().to(base.device)  # [1, vocab]
        token = sample_token(base + beta * ratio, generator, **sampling)  # [1]
        score, strong_logprob = score + ratio[0, token].item(), strong_logprob + base[0, token].item()
        if token.item() == tokenizer.eos_token_id:
            finished = True
            break
        ids.append(token.item())
        for stepper in (strong, tuned, untuned):
            stepper.append(token.to(stepper.seqs.device))
    text = tokenizer.decode(ids, skip_special_tokens=True)
    drawn = len(ids) + finished  # every drawn token had both weak models' next-token distribution
    return SearchResult(text, ids, score, drawn, finished, strong_logprob, weak_tokens=drawn)
