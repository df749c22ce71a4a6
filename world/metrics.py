"""The tiny world's metrics: two rewards (length, tone), two capability scores (content, clause accuracy), means.

Both take plain values (a token count; a summary string and the document's facts), so they can be tested on
hand-made cases and reused by any loop: the world builder's table and `w2s.world.task.SummaryTask`.
"""

from __future__ import annotations

from statistics import mean

from transformers import PreTrainedTokenizerBase

from w2s.rewards import length_reward  # the paper reward, shared with w2s.eval.tasks
from w2s.world.corpus import NEGATIVE, POSITIVE, Fact, document_facts, parse_summary

FACT_FIELDS = ("verb", "count", "item", "city")
"""The fields of a clause besides its subject, each worth a quarter of the clause's credit."""


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


def clause_accuracy(summary: str, facts: list[Fact]) -> float:
    """Share of the summary's clauses that state a true fact of the document, all five fields right.

    A clause is right or wrong as a whole (no partial credit); a fact stated twice counts once, a malformed
    clause counts as wrong. Each clause is judged on its own, so writing more or fewer clauses does not move the
    score unless the extra clauses are more or less often right: the capability measure that does not depend on
    the length of the summary.

    Returns:
        Right clauses over clauses; 0.0 for a summary with no clause.
    """
    truths = set(facts)
    clauses = parse_summary(summary)
    if not clauses:
        return 0.0
    seen: set[Fact] = set()
    right = 0
    for clause in clauses:
        if clause is not None and clause in truths and clause not in seen:
            right += 1
            seen.add(clause)
    return right / len(clauses)


def tone_reward(summary: str) -> float:
    """Tone reward of the controlled-style task, in [0, 1]: the share of the summary's tone words that are positive.

    Returns:
        positive / (positive + negative) tone words; 0.5 (neutral) when the summary has none.
    """
    words = summary.split()
    positive = sum(word in POSITIVE for word in words)
    negative = sum(word in NEGATIVE for word in words)
    return positive / (positive + negative) if positive + negative else 0.5


def example_scores(text: str, num_tokens: int, facts: list[Fact], l_min: int, l_max: int) -> dict[str, float]:
    """Every metric of one summary: both rewards, both capability scores, its length and whether it is in window."""
    return {
        "length_reward": length_reward(num_tokens, l_min, l_max),
        "tone_reward": tone_reward(text),
        "content": content_score(text, facts),
        "clause_accuracy": clause_accuracy(text, facts),
        "tokens": float(num_tokens),
        "in_window": float(l_min <= num_tokens <= l_max),
    }


def score_summaries(
    texts: list[str], lengths: list[int], facts: list[list[Fact]], l_min: int, l_max: int
) -> dict[str, float]:
    """Means over a test set of `example_scores` (`tokens` reported as `mean_tokens`).

    Args:
        texts: the generated summaries.
        lengths: their lengths in tokens, EOS excluded.
        facts: each summary's document facts.
    """
    return mean_scores([example_scores(text, n, truth, l_min, l_max) for text, n, truth in zip(texts, lengths, facts)])


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    """Means of `example_scores` rows over a test set (`tokens` reported as `mean_tokens`)."""
    means = {key: mean(row[key] for row in rows) for key in rows[0]}
    means["mean_tokens"] = means.pop("tokens")
    return means


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
