"""The WSPO loss: a pure function over per-token log-probs, importable by any trainer."""

from __future__ import annotations

import torch


def wspo_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    weak_log_ratio: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weak-to-Strong Preference Optimization loss (Zhu et al., ICLR 2025), token level.

    Per sequence, `(1/|y|) * sum_t (gamma * (policy_logps - ref_logps) - weak_log_ratio)^2` over the response
    tokens (mask 1), then the mean over the batch, as the authors' code computes it.

    Args:
        policy_logps: log pi_theta(y_t | x, y_<t), `[batch, seq]`, with grad.
        ref_logps: log pi_ref(y_t | x, y_<t) of the frozen start, `[batch, seq]`.
        weak_log_ratio: log pi_w_aligned - log pi_w_base per token, `[batch, seq]`.
        mask: 1.0 on response tokens, 0.0 on prompt and padding, `[batch, seq]`.
        gamma: scale of the strong log-ratio (small gamma amplifies the weak shift).

    Returns:
        The scalar loss, and metrics: mean strong ratio, mean weak ratio, their correlation over response
        tokens, and the token count.
    """
    mask = mask.to(policy_logps.dtype)
    strong_ratio = policy_logps - ref_logps.detach()  # [batch, seq]
    weak = weak_log_ratio.detach().to(policy_logps.dtype)  # [batch, seq]
    per_token = (gamma * strong_ratio - weak).pow(2) * mask  # [batch, seq]
    lengths = mask.sum(dim=1)  # [batch]
    if bool((lengths == 0).any()):
        raise ValueError("wspo_loss: a sequence has no response tokens (mask is all zero)")
    loss = (per_token.sum(dim=1) / lengths).mean()
    return loss, _metrics(strong_ratio.detach(), weak, mask)


def _metrics(strong_ratio: torch.Tensor, weak: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    selected = mask.bool()
    strong_values, weak_values = strong_ratio[selected].double(), weak[selected].double()  # [tokens]
    tokens = int(selected.sum())
    strong_centred, weak_centred = strong_values - strong_values.mean(), weak_values - weak_values.mean()
    denominator = strong_centred.norm() * weak_centred.norm()
    correlation = float((strong_centred @ weak_centred) / denominator) if denominator > 0 else 0.0
    return {
        "strong_ratio_mean": float(strong_values.mean()),
        "weak_ratio_mean": float(weak_values.mean()),
        "ratio_correlation": correlation,
        "tokens": tokens,
    }
