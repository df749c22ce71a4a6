"""The tiny world's two task metrics: a length reward and a content score, and their means over a test set.

Both take plain values (a token count; a summary string and the document's facts), so they can be tested on
hand-made cases and reused by any loop: the world builder's table and `w2s.world.task.SummaryTask`.
"""

from __future__ import annotations

from statistics import mean

from transformers import PreTrainedTokenizerBase

from w2s.world.corpus import Fact, document_facts, parse_summary

FACT_FIELDS = ("verb", "count", "item", "city")
"""The fields of a clause besides its subject, each worth a quarter of the clause's credit."""


def length_reward(num_tokens: int, l_min: int = 20, l_max: int = 30, tolerance: int = 10) -> float:
    """Length reward of the paper's XSUM experiment, bounded to [0, 1].

    Args:
        num_tokens: summary length in tokens, EOS excluded.
        l_min: shortest length that earns the full reward.
        l_max: longest length that earns the full reward.
        tolerance: tokens outside [l_min, l_max] at which the reward has fallen linearly to zero.

    Returns:
        1.0 inside [l_min, l_max], then 1 - distance / tolerance, never below 0.
    """
    distance = max(0, l_min - num_tokens, num_tokens - l_max)
    return max(0.0, 1.0 - distance / tolerance)


def content_score(summary: str, facts: list[Fact]) -> float:
    """Share of what the summary states that is true of the document (fact precision, with partial credit).

    Each clause of the summary must name a subject of the document; it earns the share of the four other fields
    (verb, count, item, city) that match that subject's fact. A subject stated twice earns nothing the second
    time, and a clause that does not parse earns nothing. Precision, not recall: a longer summary is not more
    correct, so this score does not move with the length reward.

    Args:
        summary: generated text.
        facts: the document's key facts.

    Returns:
        Mean credit over the summary's clauses; 0.0 for an empty summary.
    """
    by_subject = {fact.name: fact for fact in facts}
    clauses = parse_summary(summary)
    if not clauses:
        return 0.0
    seen: set[str] = set()
    credit = 0.0
    for clause in clauses:
        if clause is None or clause.name not in by_subject or clause.name in seen:
            continue
        seen.add(clause.name)
        truth = by_subject[clause.name]
        credit += sum(getattr(clause, key) == getattr(truth, key) for key in FACT_FIELDS) / len(FACT_FIELDS)
    return credit / len(clauses)


def score_summaries(
    texts: list[str], lengths: list[int], facts: list[list[Fact]], l_min: int, l_max: int
) -> dict[str, float]:
    """Means over a test set: length reward, content score, length, and share of lengths in [l_min, l_max].

    Args:
        texts: the generated summaries.
        lengths: their lengths in tokens, EOS excluded.
        facts: each summary's document facts.
    """
    return {
        "length_reward": mean(length_reward(n, l_min, l_max) for n in lengths),
        "content": mean(content_score(text, truth) for text, truth in zip(texts, facts)),
        "mean_tokens": mean(lengths),
        "in_window": mean(float(l_min <= n <= l_max) for n in lengths),
    }


def score_responses(
    tokenizer: PreTrainedTokenizerBase,
    responses: list[list[int]],
    examples: list[dict],
    l_min: int,
    l_max: int,
) -> dict[str, float]:
    """`score_summaries` of response token ids (decoded without special tokens) on the world's test examples."""
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in responses]
    facts = [document_facts(example) for example in examples]
    return score_summaries(texts, [len(ids) for ids in responses], facts, l_min, l_max)
