"""The learning-rate schedule of every trainer in w2s: linear warm-up, then cosine to zero (one copy)."""

from __future__ import annotations

import math


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    """Learning rate at optimiser step `step` (0-based) of `total`.

    Args:
        step: the step about to be taken.
        total: all optimiser steps of the run.
        peak: the rate reached at the end of warm-up (1.0 gives a multiplier, as LambdaLR wants).
        warmup: steps of linear warm-up, at least 1.
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
