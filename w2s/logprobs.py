"""The log-prob of each target token under a causal LM: written once, for the cache, the trainer and search.

Every stage needs the same quantity, `log p(input_ids[t] | input_ids[:t])`, on right-padded batches:
  - the cache scores response tokens under the weak pair (and the strong reference);
  - the trainer scores them under the policy (with grad), the reference and, online, the weak pair;
  - search scores candidate responses under the weak pair.
Padding, the forward pass and the gather live here, so the three can never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def pad_right(sequences: Sequence[Sequence[int] | np.ndarray], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pads token sequences into a batch.

    Returns:
        input_ids `[batch, seq]` (long, `pad_id` after each sequence) and attention_mask `[batch, seq]` (1 on tokens).
    """
    width = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)  # [batch, seq]
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)  # [batch, seq]
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.as_tensor(np.asarray(seq, dtype=np.int64))
        attention_mask[row, : len(seq)] = 1
    return input_ids, attention_mask


def target_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """float32 log-prob of every next token: position t-1 predicts token t.

    Args:
        model: a causal LM (or a DeepSpeed engine wrapping one); called as is, so grad flows when enabled.
        input_ids: `[batch, seq]`.
        attention_mask: `[batch, seq]`, 1 on tokens, 0 on padding.

    Returns:
        `[batch, seq - 1]`: entry t is log p(input_ids[:, t + 1] | input_ids[:, :t + 1]).
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [batch, seq, vocab]
    return logprobs_of_targets(logits, input_ids)


def logprobs_of_targets(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """`[batch, seq, vocab]` logits -> `[batch, seq - 1]` float32 log-probs of the tokens that follow each position."""
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [batch, seq-1, vocab]
    return logps.gather(-1, input_ids[:, 1:, None].to(logps.device))[..., 0]  # [batch, seq-1]


@torch.no_grad()
def response_logprobs(
    model: torch.nn.Module, sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int], pad_id: int = 0
) -> list[np.ndarray]:
    """Log-probs of the response tokens (from `prompt_lens[i]` on) of each sequence, one float32 array each.

    One right-padded forward over the whole list; callers batch it (see `w2s.cache.backends.token_batches`).
    """
    device = next(model.parameters()).device
    input_ids, attention_mask = pad_right(sequences, pad_id)
    logps = target_logprobs(model, input_ids.to(device), attention_mask.to(device))  # [batch, seq-1]
    return [
        logps[row, prompt_len - 1 : len(seq) - 1].cpu().numpy().astype(np.float32)
        for row, (seq, prompt_len) in enumerate(zip(sequences, prompt_lens))
    ]
