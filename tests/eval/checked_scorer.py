"""A weak scorer that checks itself: incremental scores beside a full rescore of the same texts, every call."""

from __future__ import annotations

from w2s.search.scorer import WeakScorer

TOLERANCE = 1e-5
"""Largest difference allowed between an incremental and a full float32 score."""


class CheckedScorer(WeakScorer):
    """The incremental scorer, which also rescores every call from the start with `full` and records both."""

    def __init__(self, tuned, untuned, tokenizer, **kwargs) -> None:
        super().__init__(tuned, untuned, tokenizer, **kwargs)
        self.full = WeakScorer(tuned, untuned, tokenizer, incremental=False)
        self.calls: list[tuple[list[float], list[float]]] = []

    def score(self, prompt, responses, finished):
        got = super().score(prompt, responses, finished)
        self.calls.append((got, self.full.score(prompt, responses, finished)))
        return got

    def worst(self) -> float:
        """The largest difference between an incremental and a full score over every call."""
        return max(abs(a - b) for got, want in self.calls for a, b in zip(got, want))
