"""Training losses over the cached terms: WSPO as pure functions any trainer can import, and the loss components
`train.loss` names (`LOSSES`: `{_component_: w2s.train.losses.WSPO, gamma: 0.1}`, or a registered name)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from w2s.config import require_finite
from w2s.registry import COMPONENT, Registry

if TYPE_CHECKING:  # torch is imported by the two functions that call it: every config load builds the loss
    import torch  # (TrainConfig checks train.loss), and `w2s verify` or `--help` should not wait 2-3 s for torch


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


def wspo_chunk_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    weak_chunk_sums: torch.Tensor,
    chunk_index: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """WSPO across tokenizers: the weak log-ratio is known per chunk of the response (`w2s.align`), not per token.

    Per sequence, `(1/|y_strong|) * sum_chunks (gamma * sum_{t in chunk} (policy_logps - ref_logps)_t - R_chunk)^2`,
    then the mean over the batch. The sum is divided by the number of STRONG response tokens, as `wspo_loss`
    divides by its response tokens: the loss is then on the scale of `wspo_loss` and, when every chunk is one token
    (the same tokenizer on both sides), it IS `wspo_loss`, bit for bit (each chunk's term is placed at its last
    token and summed over the sequence exactly as `wspo_loss` sums its token terms).

    Args:
        policy_logps: log pi_theta(y_t | x, y_<t), `[batch, seq]`, with grad.
        ref_logps: log pi_ref(y_t | x, y_<t) of the frozen start, `[batch, seq]`.
        weak_chunk_sums: the weak log-ratio summed per chunk (`w2s.align.chunk_sums`), `[batch, max_chunks]`,
            0 past a row's chunks.
        chunk_index: int64 chunk of each strong response token, `[batch, seq]`: 0, 1, ... in order, each chunk's
            tokens contiguous; anything (e.g. -1) where `mask` is 0.
        mask: 1.0 on response tokens, 0.0 on prompt and padding, `[batch, seq]`.
        gamma: scale of the strong log-ratio (small gamma amplifies the weak shift).

    Returns:
        The scalar loss, and `wspo_loss`'s metrics over chunks instead of tokens (the means and the correlation of
        the strong and weak chunk log-ratios; they are `wspo_loss`'s when chunks are tokens); `tokens` counts the
        strong response tokens.
    """
    import torch

    selected = mask.bool()  # [batch, seq]
    index = torch.where(selected, chunk_index, 0)  # [batch, seq]
    last = _check_chunk_layout(index, selected, weak_chunk_sums)  # [batch, seq] bool
    lengths = mask.to(policy_logps.dtype).sum(dim=1)  # [batch]
    if bool((lengths == 0).any()):
        raise ValueError("wspo_chunk_loss: a sequence has no response tokens (mask is all zero)")
    strong_ratio = torch.where(selected, policy_logps - ref_logps.detach(), 0.0)  # [batch, seq]
    strong = torch.zeros_like(weak_chunk_sums, dtype=policy_logps.dtype).scatter_add(1, index, strong_ratio)
    weak = weak_chunk_sums.detach().to(policy_logps.dtype)  # [batch, max_chunks]
    per_chunk = (gamma * strong - weak).pow(2)  # [batch, max_chunks]
    per_token = torch.where(last, per_chunk.gather(1, index), 0.0)  # [batch, seq]: each chunk's term at its end
    loss = (per_token.sum(dim=1) / lengths).mean()
    metrics = _metrics(strong.detach().gather(1, index), weak.gather(1, index), last.to(policy_logps.dtype))
    return loss, {**metrics, "tokens": int(selected.sum())}


def _check_chunk_layout(index: torch.Tensor, selected: torch.Tensor, weak_chunk_sums: torch.Tensor) -> torch.Tensor:
    """Where each chunk's last token is (`[batch, seq]` bool); refuses chunk ids that are not 0, 1, ... in order,
    each over contiguous tokens, and a weak signal on chunks that no strong token has (a misaligned row)."""
    import torch

    max_chunks = weak_chunk_sums.shape[1]
    before = torch.nn.functional.pad(index, (1, 0), value=-1)[:, :-1]  # [batch, seq]: the previous position's id
    before_selected = torch.nn.functional.pad(selected, (1, 0), value=False)[:, :-1]
    starts = selected & (~before_selected | (before != index))  # [batch, seq]: a chunk begins here
    if bool(((torch.cumsum(starts, dim=1) - 1 != index) & selected).any()) or int(index.max()) >= max_chunks:
        raise ValueError("wspo_chunk_loss: chunk_index must number each row's chunks 0, 1, ... over contiguous tokens")
    beyond = torch.arange(max_chunks, device=index.device) >= starts.sum(dim=1, keepdim=True)  # [batch, max_chunks]
    if bool((torch.where(beyond, weak_chunk_sums, 0) != 0).any()):
        raise ValueError("wspo_chunk_loss: weak_chunk_sums has a signal past a row's last strong chunk")
    after = torch.nn.functional.pad(index, (0, 1), value=-1)[:, 1:]
    after_selected = torch.nn.functional.pad(selected, (0, 1), value=False)[:, 1:]
    return selected & (~after_selected | (after != index))


LOSSES: Registry[type] = Registry("loss")
"""Training losses by name (`train.loss._component_`): a class built with the loss's parameters, called on each
micro-batch as `loss(policy_logps, ref_logps, batch)` and returning `(scalar loss, metrics)`. `batch` holds the
cached terms the reader yields (`weak_log_ratio`, `mask`, and for a cross-tokenizer cache `weak_chunk_sums` and
`chunk_index`); `weak_log_ratio` is the weak pair's per-token log-ratio, cached or computed online."""


@LOSSES.register("wspo")
@dataclass(frozen=True)
class WSPO:
    """WSPO (Zhu et al., ICLR 2025), token level: `wspo_loss`; across tokenizers, per chunk: `wspo_chunk_loss`."""

    gamma: float = 0.1
    """Scale of the strong log-ratio (> 0): it is pushed toward weak_log_ratio / gamma (small gamma amplifies)."""

    def __post_init__(self) -> None:
        require_finite(self.gamma, "train.loss.gamma", positive=True)

    def __call__(self, policy_logps, ref_logps, batch) -> tuple[torch.Tensor, dict[str, float]]:
        if "chunk_index" in batch:  # a cross-tokenizer cache: the weak ratio is known per chunk (`w2s.align`)
            return wspo_chunk_loss(
                policy_logps, ref_logps, batch["weak_chunk_sums"], batch["chunk_index"], batch["mask"], self.gamma
            )
        return wspo_loss(policy_logps, ref_logps, batch["weak_log_ratio"], batch["mask"], self.gamma)


@LOSSES.register("wspo_sequence")
@dataclass(frozen=True)
class SequenceWSPO:
    """A sequence-level variant of WSPO on the same cached terms: per sequence,
    `(gamma * mean_t (policy - ref)_t - mean_t weak_t)^2` over its response tokens, then the mean over the batch.

    Token-level WSPO matches the two log-ratios at every token; this matches only their per-token means over the
    response, so the policy may move probability between the tokens of a response as long as the whole response's
    log-ratio follows the weak pair's (the sum over a response is what DPO-style sequence rewards compare). Dividing
    the sums by the response length keeps the loss on WSPO's per-token scale. The means over a response are the
    same whether the weak ratio is per token or per chunk, so a cross-tokenizer cache needs no special case: there,
    `weak_log_ratio`'s chunk sums sit at each chunk's last strong token and their total is the row's weak sum.
    """

    gamma: float = 0.1
    """Scale of the strong log-ratio (> 0), as in WSPO."""

    def __post_init__(self) -> None:
        require_finite(self.gamma, "train.loss.gamma", positive=True)

    def __call__(self, policy_logps, ref_logps, batch) -> tuple[torch.Tensor, dict[str, float]]:
        mask = batch["mask"].to(policy_logps.dtype)  # [batch, seq]
        lengths = mask.sum(dim=1)  # [batch]
        if bool((lengths == 0).any()):
            raise ValueError("SequenceWSPO: a sequence has no response tokens (mask is all zero)")
        strong_ratio = (policy_logps - ref_logps.detach()) * mask  # [batch, seq]
        weak = batch["weak_log_ratio"].detach().to(policy_logps.dtype) * mask  # [batch, seq]
        strong_mean, weak_mean = strong_ratio.sum(dim=1) / lengths, weak.sum(dim=1) / lengths  # [batch]
        loss = (self.gamma * strong_mean - weak_mean).pow(2).mean()
        return loss, _metrics(strong_ratio.detach(), weak, mask)


def loss_parameters(spec: dict) -> dict:
    """A loss spec's parameters (everything but `_component_`), as recorded in a run's provenance."""
    return {key: value for key, value in spec.items() if key != COMPONENT}


def describe_loss(spec: dict) -> str:
    """A loss spec in a few words, for bars and summaries: `WSPO gamma=0.1`."""
    name = str(spec.get(COMPONENT, "")).rsplit(".", 1)[-1]
    return " ".join([name, *(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                             for key, value in loss_parameters(spec).items())])  # fmt: skip
