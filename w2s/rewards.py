"""Rewards defined by the papers, shared by the tiny world's metrics and the tasks users evaluate with."""

from __future__ import annotations


def length_reward(num_tokens: int, l_min: int = 20, l_max: int = 30, tolerance: int = 10) -> float:
    """Length reward of the WSPO paper's XSUM experiment, bounded to [0, 1].

    Args:
        num_tokens: response length in tokens, EOS excluded.
        l_min: shortest length that earns the full reward.
        l_max: longest length that earns the full reward.
        tolerance: tokens outside [l_min, l_max] at which the reward has fallen linearly to zero.

    Returns:
        1.0 inside [l_min, l_max], then 1 - distance / tolerance, never below 0.
    """
    distance = max(0, l_min - num_tokens, num_tokens - l_max)
    return max(0.0, 1.0 - distance / tolerance)
