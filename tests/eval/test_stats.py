import numpy as np
import pytest

from w2s.eval.stats import Interval, as_grid, bootstrap, paired_difference, verdict


def test_interval_covers_the_mean_and_shrinks_with_more_prompts():
    rng = np.random.default_rng(1)
    small = rng.normal(0.5, 0.2, size=(3, 50)).tolist()
    large = rng.normal(0.5, 0.2, size=(3, 800)).tolist()
    a, b = bootstrap(small), bootstrap(large)
    assert a.low < a.mean < a.high and b.low < b.mean < b.high
    assert (b.high - b.low) < 0.5 * (a.high - a.low)


def test_interval_widens_when_seeds_disagree():
    rng = np.random.default_rng(2)
    noise = rng.normal(0, 0.1, size=(3, 200))
    agree = bootstrap((0.5 + noise).tolist())
    disagree = bootstrap((np.array([[0.3], [0.5], [0.7]]) + noise).tolist())
    assert (disagree.high - disagree.low) > 3 * (agree.high - agree.low)


def test_interval_of_a_normal_mean_has_the_textbook_width():
    rng = np.random.default_rng(3)
    values = rng.normal(0.0, 1.0, size=(4, 500))
    got = bootstrap(values.tolist())
    half = 1.96 * values.std() / np.sqrt(values.size)  # seeds agree here: the seed level adds little
    assert got.high - got.low == pytest.approx(2 * half, rel=0.25)


def test_paired_difference_sees_a_shift_that_unpaired_noise_would_hide():
    rng = np.random.default_rng(4)
    base = rng.uniform(0, 1, size=(3, 100))
    shifted = base + 0.02
    diff = paired_difference(shifted.tolist(), base.tolist())
    assert diff.mean == pytest.approx(0.02) and diff.low == pytest.approx(0.02) and verdict(diff) == "holds"


def test_verdict_holds_fails_or_is_inconclusive():
    assert verdict(Interval(0.1, 0.05, 0.15)) == "holds"
    assert verdict(Interval(-0.1, -0.15, -0.05)) == "fails"
    assert verdict(Interval(0.0, -0.05, 0.05)) == "inconclusive"
    assert verdict(Interval(-0.02, -0.04, -0.01), margin=0.05) == "holds"


def test_ragged_or_mismatched_seeds_are_refused():
    with pytest.raises(ValueError, match="same, non-zero number of prompts"):
        as_grid([[0.1, 0.2], [0.3]])
    with pytest.raises(ValueError, match="same seeds and prompts"):
        paired_difference([[0.1, 0.2]], [[0.1, 0.2], [0.3, 0.4]])
