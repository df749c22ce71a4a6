"""The tiny world's two task metrics: a length reward and a content score.

Both take plain values (a token count; a summary string and the document's facts), so they can be tested on
hand-made cases and reused by any evaluation loop.
"""

from __future__ import annotations

from w2s.world.corpus import Fact, parse_summary

FACT_FIELDS = ("verb", "count", "item", "city")


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
