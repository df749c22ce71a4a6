"""Guards that stop a training run rather than let it publish something other than what was asked for.

- The reference is proved before any update: the policy must be the model whose log-probs the cache holds as
  `logp_strong_ref` (same weights fingerprint), and policy - reference must be about 0 on the first batch.
- A non-finite loss or gradient stops the run at that step: nothing after the last good checkpoint is saved,
  and no `final/` is published.
"""

from __future__ import annotations

import math

import torch

from w2s.errors import CacheMismatch, UserError

# mean |policy - cached reference| over the first batch's response tokens that still counts as "the same model":
# float32 caches agree to ~1e-6; a cache scored in bf16/fp16 differs from an fp32 policy by up to a few 1e-2
REFERENCE_TOLERANCE = {"float32": 1e-3}
LOW_PRECISION_TOLERANCE = 5e-2
PRECISION_OF = {"float32": "fp32", "bfloat16": "bf16"}
"""The train.precision that runs the policy in a cache's model_dtype (float16 has none)."""


class TrainingStopped(UserError):
    """A run stopped before publishing anything wrong; the message names the step and what is kept."""


def check_reference_fingerprint(policy: str, policy_print: dict, manifest: dict) -> None:
    """Refuses a policy other than the cache's strong_ref (compared by config and weights hashes)."""
    cached = manifest["provenance"]["models"].get("strong_ref")
    same = cached and all(cached.get(k) == policy_print.get(k) for k in ("config_sha256", "weights_sha256"))
    if not same:
        raise CacheMismatch(
            f"the policy {policy} is not the strong reference the cache holds "
            f"({cached['name_or_path'] if cached else 'none'}; weights differ): training against it would optimise a "
            "different objective. Use that model as train.policy, set train.use_cached_ref=false to run the "
            "policy's own frozen copy as reference, or train.accept_other_ref=true to use the cached one on purpose"
        )


def check_reference_batch(
    policy_logps: torch.Tensor,
    cached_ref: torch.Tensor,
    mask: torch.Tensor,
    cache_dtype: str,
    policy: str,
    reference: str,
    precision: tuple[str, str] | None = None,
) -> float:
    """Mean |policy - reference| over the response tokens of the first batch; refuses it when not about 0.

    Args:
        policy_logps, cached_ref, mask: `[batch, seq-1]`.
        cache_dtype: the dtype the cache's models were run in (its tolerance).
        precision: (train.precision as set, the dtype the policy runs in, e.g. ("auto", "bfloat16")), so that a
            gap that comes from the two precisions differing is refused with that fix rather than as another model.
    """
    selected = mask.bool()
    gap = float((policy_logps.detach().float() - cached_ref.float())[selected].abs().mean())
    tolerance = REFERENCE_TOLERANCE.get(cache_dtype, LOW_PRECISION_TOLERANCE)
    if gap <= tolerance:
        return gap
    measured = (
        f"before the first update, the policy {policy} differs from the cached reference {reference} by {gap:.3g} "
        f"nats per token on average (tolerance {tolerance:g})"
    )
    if precision is not None and precision[1] != cache_dtype:
        setting, dtype = precision
        same = f"train.precision={PRECISION_OF[cache_dtype]}, or " if cache_dtype in PRECISION_OF else ""
        raise CacheMismatch(
            f"{measured}: the cache scored it in {cache_dtype} (cache.model_dtype) and this run trains in {dtype} "
            f"(train.precision={setting}). Match them: {same}rebuild the cache with cache.model_dtype={dtype}"
        )
    raise CacheMismatch(
        f"{measured}: they are not the same model at the same precision. Use the cache's strong reference as "
        "train.policy, set train.use_cached_ref=false to run the policy's own frozen copy as reference, or "
        "train.accept_other_ref=true only if this difference is what you mean"
    )


def kept_checkpoint(last_checkpoint: str | None) -> str:
    """What a stopped run leaves: its last good checkpoint, or nothing."""
    return f"the last good checkpoint, {last_checkpoint}, is kept" if last_checkpoint else "no checkpoint was saved"


def check_finite(step: int, loss: float, grad_norm: float | None, last_checkpoint: str | None) -> None:
    """Stops the run at `step` when its loss or gradient norm is not a finite number."""
    bad = [
        name
        for name, value in (("loss", loss), ("gradient norm", grad_norm))
        if value is not None and not math.isfinite(value)
    ]
    if bad:
        kept = kept_checkpoint(last_checkpoint)
        raise TrainingStopped(
            f"step {step}: the {' and '.join(bad)} became non-finite ({loss=}, grad_norm={grad_norm}); stopped "
            f"without publishing final/; {kept}. Lower train.lr or check the cache for extreme values"
        )


def check_terms(step: int, terms: dict[str, tuple[torch.Tensor, str]], last_checkpoint: str | None) -> None:
    """Stops the run at `step`, before the loss, when a term holds NaN or inf, naming where the term came from
    (`terms`: name -> (values, source)), so that a broken model is not reported as a learning rate too high."""
    for name, (values, source) in terms.items():
        bad = int((~torch.isfinite(values)).sum())
        if bad:
            kept = kept_checkpoint(last_checkpoint)
            raise TrainingStopped(
                f"step {step}: {bad} of the {name} values are non-finite, from {source}; stopped without publishing "
                f"final/; {kept}. Check that model's weights" + (", or lower train.lr" if name == "policy" else "")
            )


def local_grad_norm(engine) -> float | None:
    """2-norm of the gradients held in `p.grad` (ZeRO stage 0), measured before the step clears them."""
    grads = [p.grad.float() for p in engine.module.parameters() if p.grad is not None]
    if not grads:
        return None
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
