"""How chunk-level beam search and best-of-N compare candidates (`rank`, a cbs/bon param): the ranks and their keys.

The paper's search ranks by the summed weak log-ratio, which moves with length at the weak pair's mean ratio per
token (`w2s.science.length` measures this); `mean` and `centred` take that length term out in two ways. Pure
Python: `w2s.search.components` validates configs against `RANKS` without loading a model library.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

RANKS = ("sum", "mean", "centred")
"""sum: the summed weak log-ratio (the paper's, the default); mean: per weak token; centred: the sum centred on
the round's mean ratio per token (a length-matched comparison)."""


class Ranked(Protocol):
    """What a rank reads of a candidate (`w2s.search.cbs.Hypothesis`)."""

    score: float
    weak_len: int


def rank_keys(candidates: Sequence[Ranked], rank: str = "sum") -> list[float]:
    """What `prune` sorts by (higher first), one key per candidate of a round (`RANKS`).

    sum: the summed weak log-ratio (the paper's). mean: the sum per weak token (0.0 for an empty hypothesis).
    centred: the sum minus the candidate's weak length times the round's pooled mean ratio per token (total score
    over total weak tokens of every candidate), i.e. the sum of (ratio - round mean) over its tokens. Ranking by it
    equals projecting every candidate to one common length at the round's mean rate, so a finished response is
    compared with longer unfinished ones length-matched, and within one length it orders like the sum.
    """
    if rank == "sum":
        return [h.score for h in candidates]
    if rank == "mean":
        return [h.score / h.weak_len if h.weak_len else 0.0 for h in candidates]
    if rank == "centred":
        tokens = sum(h.weak_len for h in candidates)
        rate = sum(h.score for h in candidates) / tokens if tokens else 0.0
        return [h.score - rate * h.weak_len for h in candidates]
    raise ValueError(f"rank must be one of {list(RANKS)}, got {rank!r}")
