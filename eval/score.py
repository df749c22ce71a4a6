"""Scores generated responses on the tiny world's test examples with both task metrics."""

from __future__ import annotations

from statistics import mean

from transformers import PreTrainedTokenizerBase

from w2s.eval.metrics import content_score, length_reward
from w2s.world.corpus import document_facts


def score_responses(
    tokenizer: PreTrainedTokenizerBase,
    responses: list[list[int]],
    examples: list[dict],
    l_min: int,
    l_max: int,
) -> dict[str, float]:
    """Mean length reward, content score and length over (response token ids, example) pairs."""
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in responses]
    return {
        "length_reward": mean(length_reward(len(ids), l_min, l_max) for ids in responses),
        "content": mean(content_score(text, document_facts(ex)) for text, ex in zip(texts, examples)),
        "mean_tokens": mean(len(ids) for ids in responses),
        "in_window": mean(float(l_min <= len(ids) <= l_max) for ids in responses),
    }
