"""Bootstrap intervals over prompts and seeds, and the verdict of a claim.

Every number of the science report is a mean of per-prompt scores over several seeds (each seed: its own world,
cache, training and sampling). Its interval comes from a two-level bootstrap: resample the seeds with
replacement, then the prompts within each drawn seed, and take the mean; the 2.5th and 97.5th percentiles of
those means are the 95% interval. A difference between two systems is bootstrapped the same way on the per-prompt
differences (paired: the same prompts and seeds), with the same resampling indices for every statistic of a call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

NUM_RESAMPLES = 4000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean and its bootstrap interval."""

    mean: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def text(self, fmt: str = "{:.3f}") -> str:
        """'0.812 [0.790, 0.833]'."""
        return f"{fmt.format(self.mean)} [{fmt.format(self.low)}, {fmt.format(self.high)}]"


def as_grid(per_seed: list[list[float]]) -> np.ndarray:
    """[seeds, prompts] array of per-prompt values; every seed must have the same number of prompts."""
    sizes = {len(row) for row in per_seed}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"every seed needs the same, non-zero number of prompts; got sizes {sorted(sizes)}")
    return np.asarray(per_seed, dtype=np.float64)


def resample_means(grid: np.ndarray, num_resamples: int = NUM_RESAMPLES, seed: int = 0) -> np.ndarray:
    """[num_resamples] means of two-level bootstrap samples of `grid` [seeds, prompts]: seeds drawn with
    replacement, then prompts with replacement within each drawn seed. A fixed `seed` gives the same indices
    to every grid of one shape, so the intervals of one report are drawn alike."""
    seeds, prompts = grid.shape
    rng = np.random.default_rng(seed)
    seed_rows = rng.integers(0, seeds, size=(num_resamples, seeds))  # [B, S]
    prompt_cols = rng.integers(0, prompts, size=(num_resamples, seeds, prompts))  # [B, S, P]
    return grid[seed_rows[:, :, None], prompt_cols].mean(axis=(1, 2))  # [B]


def bootstrap(per_seed: list[list[float]], num_resamples: int = NUM_RESAMPLES, seed: int = 0) -> Interval:
    """The mean of every (seed, prompt) value and its 95% two-level bootstrap interval."""
    grid = as_grid(per_seed)
    means = resample_means(grid, num_resamples, seed)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(grid.mean()), float(low), float(high))


def paired_difference(a: list[list[float]], b: list[list[float]], **kwargs) -> Interval:
    """Mean of a - b over the same prompts and seeds, with its bootstrap interval (prompts paired)."""
    grid_a, grid_b = as_grid(a), as_grid(b)
    if grid_a.shape != grid_b.shape:
        raise ValueError(f"paired systems need the same seeds and prompts, got {grid_a.shape} and {grid_b.shape}")
    return bootstrap((grid_a - grid_b).tolist(), **kwargs)


def verdict(difference: Interval, margin: float = 0.0) -> str:
    """Whether 'a > b - margin' holds at the 95% level: 'holds' when the interval of a - b lies above -margin,
    'fails' when it lies below (the opposite holds), 'inconclusive' when it straddles."""
    if difference.low > -margin:
        return "holds"
    if difference.high < -margin:
        return "fails"
    return "inconclusive"
