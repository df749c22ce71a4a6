"""How w2s draws tokens from a causal LM: one step over a batch of rows (`sample_token`) or whole responses
(`generate`, batched, left-padded). Neutral ground shared by the world builder (which scores its three models
after training) and evaluation (plain sampling, search, EFT), so neither imports the other.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from w2s.models import ModelError
from w2s.tokens import prompt_ids


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict]) -> list[int]:
    """Token ids of the prompt as the model sees it: chat template and generation marker, no extra specials, and
    the prompt's own text tokenised as text, special-token spellings included (`w2s.tokens`)."""
    return prompt_ids(tokenizer, prompt)


def require_finite(scores: torch.Tensor, model: PreTrainedModel) -> torch.Tensor:
    """`scores` ([rows, vocab] next-token logits or log-probs), refused when one is NaN or +inf, or a row rules out
    every token (NaN weights, a float16 overflow): sampling would crash on them and greedy decoding would emit
    garbage as if it were text. A -inf beside finite scores is a token the model rules out, and stays. One pass:
    a row's max is NaN if any of its scores is (torch propagates NaN), +inf if one is, -inf if all are."""
    if not bool(torch.isfinite(scores.amax(dim=-1)).all()):
        raise ModelError(
            f"the model at {model.name_or_path} gave non-finite next-token scores (NaN, +inf, or every token ruled "
            "out): check its weights "
            "(in float16 or bfloat16, try float32)"
        )
    return scores


class FiniteScores(LogitsProcessor):
    """`require_finite` inside transformers' `generate`, before its sampler (or argmax) sees the scores."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return require_finite(scores, self.model)


def warp_scores(scores: torch.Tensor, temperature: float = 0.7, top_k: int = 50, top_p: float = 1.0) -> torch.Tensor:
    """The scores `sample_token` draws from (temperature > 0): scores / temperature, -inf outside top-k and top-p;
    their softmax is the warped distribution."""
    scores = scores / temperature  # [rows, vocab]
    if 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]  # [rows, 1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(scores, dim=-1, descending=True)  # [rows, vocab]
        probs = torch.softmax(ordered, dim=-1)
        drop = (probs.cumsum(dim=-1) - probs) >= top_p  # mass before this token already reaches top_p
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return scores


def sample_token(
    scores: torch.Tensor, generator: torch.Generator, temperature: float = 0.7, top_k: int = 50, top_p: float = 1.0
) -> torch.Tensor:
    """Draws one token per row from softmax(scores / temperature), restricted to top-k and nucleus top-p.

    Args:
        scores: [rows, vocab] unnormalised log-probabilities (e.g. log-softmaxed logits).
        generator: source of randomness (on the scores' device).
        temperature: 0 or below means greedy (argmax).
        top_k: keep the k highest scores (0 keeps all).
        top_p: keep the smallest set of tokens whose probability reaches top_p (1.0 keeps all).

    Returns:
        [rows] sampled token ids.
    """
    if temperature <= 0:
        return scores.argmax(dim=-1)
    probs = torch.softmax(warp_scores(scores, temperature, top_k, top_p), dim=-1)  # [rows, vocab]
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # [rows]


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int = 64,
    temperature: float = 0.7,
    top_k: int = 50,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
) -> list[list[int]]:
    """Samples one response per prompt (chat template applied) with transformers' `generate`; 0 is greedy.

    Returns:
        The response token ids of each prompt, cut at (and excluding) the first EOS.
    """
    torch.manual_seed(seed)
    tokenizer.padding_side = "left"  # every row's last prompt token sits at the same position
    sampling = dict(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p) if temperature > 0 else {}
    responses: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        rows = [encode_prompt(tokenizer, prompt) for prompt in prompts[start : start + batch_size]]
        batch = tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt").to(model.device)
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList([FiniteScores(model)]),
            **(sampling or dict(do_sample=False)),
        )  # [batch, prompt + new]
        for row in out[:, batch["input_ids"].shape[1] :].tolist():
            responses.append(row[: row.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in row else row)
    return responses
