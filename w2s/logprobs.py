"""The log-prob of each target token under a causal LM: written once, for the cache, the trainer and search.

Every stage needs the same quantity, `log p(input_ids[t] | input_ids[:t])`, on right-padded batches:
  - the cache scores response tokens under the weak pair (and the strong reference);
  - the trainer scores them under the policy (with grad), the reference and, online, the weak pair;
  - search scores candidate responses under the weak pair.
Padding, the forward pass and the gather live here, so the three can never disagree.

Only the target token's log-prob is needed, so the `[tokens, vocab]` logits are never materialised (the idea of
Liger's fused linear cross-entropy, in plain PyTorch so that it runs on CPU and GPU):
  1. the model runs as usual, but a hook takes the final hidden states its output layer is given and lets the
     layer see one position only;
  2. only the positions asked for (`scored`: response tokens, not prompt or padding) are kept;
  3. the output layer runs over chunks of those positions, and each chunk yields `target logit - logsumexp` in
     float32, so at most one `[chunk, vocab]` block is alive at a time, in the forward and in the backward.
Models outside `w2s.heads.HEADS` (an output layer this module does not know how to reproduce exactly) take the
plain path: full logits, float32 log-softmax, gather.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from w2s.heads import Head, find_head

CHUNK_BYTES = 2**27
"""Size of one float32 `[chunk, vocab]` block of logits: 128 MiB, i.e. 220 positions at Qwen2's 151,936 tokens."""


def chunk_rows(vocab: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Positions per chunk of the output layer, so that one float32 `[chunk, vocab]` block is `chunk_bytes`."""
    return max(1, chunk_bytes // (4 * vocab))


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


def target_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    scored: torch.Tensor | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """float32 log-prob of the next token at the positions asked for: position t-1 predicts token t.

    Args:
        model: a causal LM, or a DeepSpeed engine or peft model wrapping one; called as is, so grad flows when
            enabled.
        input_ids: `[batch, seq]`.
        attention_mask: `[batch, seq]`, 1 on tokens, 0 on padding.
        scored: `[batch, seq - 1]` bool, the target positions wanted (default: every non-padding target). Only
            these go through the output layer.
        chunk: positions per output-layer chunk (default: `chunk_rows(vocab)`).

    Returns:
        `[batch, seq - 1]`: entry t is log p(input_ids[:, t + 1] | input_ids[:, :t + 1]) where `scored`, else 0.
    """
    if scored is None:
        scored = attention_mask[:, 1:] != 0
    scored = scored.to(device=input_ids.device, dtype=torch.bool)
    head = find_head(model)
    if head is None:  # an output layer we cannot reproduce: full logits
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [batch, seq, vocab]
        return logprobs_of_targets(logits, input_ids).masked_fill(~scored.to(logits.device), 0.0)
    with final_hidden_states(head.module) as seen:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    if len(seen) != 1 or seen[0].shape[:2] != input_ids.shape:
        raise RuntimeError(f"{type(model).__name__}: its output layer was called {len(seen)} times, not once")
    hidden = seen[0][:, :-1][scored.to(seen[0].device)]  # [tokens, hidden]
    targets = input_ids[:, 1:][scored].to(hidden.device)  # [tokens]
    values = head_logprobs(head, hidden, targets, chunk)  # [tokens]
    out = torch.zeros(scored.shape, dtype=values.dtype, device=values.device)  # [batch, seq-1]
    return out.masked_scatter(scored.to(values.device), values)


def logprobs_of_targets(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """`[batch, seq, vocab]` logits -> `[batch, seq - 1]` float32 log-probs of the tokens that follow each position.

    The plain computation (a full float32 log-softmax): the fallback, and the reference the tests compare to.
    """
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [batch, seq-1, vocab]
    return logps.gather(-1, input_ids[:, 1:, None].to(logps.device))[..., 0]  # [batch, seq-1]


def token_batches(lengths: list[int], batch_tokens: int, max_rows: int = 0) -> list[list[int]]:
    """Groups indices into batches of similar length whose padded size stays within `batch_tokens` (and, when
    `max_rows` > 0, of at most `max_rows` rows); a row longer than the budget runs alone.

    Longest first, so the first batch shows at once whether the budget fits in memory.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        width = max(lengths[current[0]], lengths[index]) if current else lengths[index]
        full = width * (len(current) + 1) > batch_tokens or (max_rows and len(current) >= max_rows)
        if current and full:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


@torch.no_grad()
def response_logprobs(
    model: torch.nn.Module, sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int], pad_id: int = 0
) -> list[np.ndarray]:
    """Log-probs of the response tokens (from `prompt_lens[i]` on) of each sequence, one float32 array each.

    One right-padded forward over the whole list; only response positions reach the output layer. Callers batch
    it (`token_batches`).
    """
    device = next(model.parameters()).device
    input_ids, attention_mask = pad_right(sequences, pad_id)
    scored = torch.zeros(input_ids.shape[0], input_ids.shape[1] - 1, dtype=torch.bool)  # [batch, seq-1]
    for row, (seq, prompt_len) in enumerate(zip(sequences, prompt_lens)):
        scored[row, prompt_len - 1 : len(seq) - 1] = True
    logps = target_logprobs(model, input_ids.to(device), attention_mask.to(device), scored.to(device))
    return [
        logps[row, prompt_len - 1 : len(seq) - 1].cpu().numpy().astype(np.float32)
        for row, (seq, prompt_len) in enumerate(zip(sequences, prompt_lens))
    ]


@contextmanager
def final_hidden_states(head: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """While open, records the input of every call of `head` and lets the call run on the first position only.

    The model's own forward then runs unchanged (inside a DeepSpeed engine, with peft adapters on or off), and
    its logits shrink to `[batch, 1, vocab]`; the recorded `[batch, seq, hidden]` keeps its autograd graph.
    """
    seen: list[torch.Tensor] = []

    def record(module: torch.nn.Module, args: tuple) -> tuple:
        seen.append(args[0])
        return (args[0][..., :1, :], *args[1:])

    handle = head.register_forward_pre_hook(record)
    try:
        yield seen
    finally:
        handle.remove()


def head_logprobs(head: Head, hidden: torch.Tensor, targets: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """`[tokens, hidden]` final hidden states -> `[tokens]` float32 log-probs of `targets`, chunk by chunk.

    A plain `nn.Linear` whose weight is whole goes through `LinearTargetLogprobs` (its backward recomputes each
    chunk's logits from the saved hidden states). Anything else (a LoRA-wrapped output layer, a weight partitioned
    by ZeRO-3, autocast) calls the layer itself on each chunk under activation checkpointing, so that the layer's
    own hooks and autograd run and its backward also holds one chunk at a time.
    """
    chunk = chunk or chunk_rows(head.vocab)
    if head.is_plain_linear() and not torch.is_autocast_enabled(hidden.device.type):
        layer = head.module
        return LinearTargetLogprobs.apply(hidden, layer.weight, layer.bias, targets, head.scale, head.softcap, chunk)
    pieces = []
    for start in range(0, hidden.shape[0], chunk):
        rows = slice(start, start + chunk)
        if torch.is_grad_enabled():  # the layer's own weights may be trained even when the body is frozen
            pieces.append(checkpoint(_module_chunk, head, hidden[rows], targets[rows], use_reentrant=False))
        else:
            pieces.append(_module_chunk(head, hidden[rows], targets[rows]))
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def _module_chunk(head: Head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = _after_layer(head.module(hidden), head.scale, head.softcap)  # [chunk, vocab]
    return logits.gather(1, targets[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)  # [chunk]


def _after_layer(logits: torch.Tensor, scale: float, softcap: float | None) -> torch.Tensor:
    """Output-layer result (a fresh tensor) -> float32 (float64 in gradcheck) logits, with the model's scale and
    soft cap; in place unless autograd records it, so that one `[chunk, vocab]` block is alive, not three."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if logits.requires_grad:
        logits = logits * scale if scale != 1.0 else logits
        return torch.tanh(logits / softcap) * softcap if softcap is not None else logits
    if scale != 1.0:
        logits.mul_(scale)
    if softcap is not None:
        logits.div_(softcap).tanh_().mul_(softcap)
    return logits


class LinearTargetLogprobs(torch.autograd.Function):
    """`log_softmax(softcap(scale * (hidden @ weight.T + bias)))[targets]` without a `[tokens, vocab]` tensor.

    Forward keeps one `[chunk, vocab]` block of logits at a time and saves only the hidden states and the
    per-token logsumexp; backward recomputes each chunk's logits from them. Per token t with upstream gradient
    g_t, d out_t / d logits_t = onehot(target_t) - softmax_t, so grad_logits = g_t * (onehot - p) for the chunk,
    then hidden and weight gradients follow by two matmuls. The weight gradient is summed over chunks in float32.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, scale, softcap, chunk):
        values, lse = [], []
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = _after_layer(F.linear(hidden[rows], weight, bias), scale, softcap)  # [chunk, vocab]
            lse.append(torch.logsumexp(logits, dim=-1))  # [chunk]
            values.append(logits.gather(1, targets[rows, None])[:, 0] - lse[-1])
            del logits  # before the next chunk's block is allocated
        out_dtype = torch.promote_types(weight.dtype, torch.float32)
        empty = hidden.new_zeros(0, dtype=out_dtype)
        values, lse = (torch.cat(v) if v else empty for v in (values, lse))
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.scale, ctx.softcap, ctx.chunk = scale, softcap, chunk
        return values

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        acc = torch.promote_types(weight.dtype, torch.float32)
        grad_hidden = torch.empty_like(hidden) if want_hidden else None  # [tokens, hidden]
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_weight else None
        grad_bias = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if want_bias else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            grad_logits = _chunk_grad(hidden[rows], weight, bias, targets[rows], lse[rows], grad_out[rows], ctx)
            if want_hidden:
                grad_hidden[rows] = grad_logits.to(weight.dtype) @ weight  # [chunk, hidden]
            if want_weight:
                grad_weight.addmm_(grad_logits.t(), hidden[rows].to(acc))  # [vocab, hidden]
            if want_bias:
                grad_bias += grad_logits.sum(0)
            del grad_logits  # before the next chunk's block is allocated
        grad_weight = grad_weight.to(weight.dtype) if want_weight else None
        grad_bias = grad_bias.to(bias.dtype) if want_bias else None
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def _chunk_grad(hidden, weight, bias, targets, lse, grad_out, ctx) -> torch.Tensor:
    """d loss / d (pre-scale) logits of one chunk, `[chunk, vocab]`, in float32: g * (onehot - softmax), chained
    through the soft cap (d cap*tanh(x/cap) / dx = 1 - tanh^2) and the scale."""
    logits = _after_layer(F.linear(hidden, weight, bias), ctx.scale, ctx.softcap)  # [chunk, vocab]
    # the soft cap's derivative needs the logits: a second block then; otherwise the softmax overwrites them
    grad = logits - lse[:, None] if ctx.softcap is not None else logits.sub_(lse[:, None])
    grad.exp_().mul_(-grad_out[:, None])  # -g * softmax
    grad.scatter_add_(1, targets[:, None], grad_out[:, None].to(grad.dtype))  # + g * onehot(target)
    if ctx.softcap is not None:
        grad.mul_(logits.div_(ctx.softcap).square_().neg_().add_(1.0))
    if ctx.scale != 1.0:
        grad.mul_(ctx.scale)
    return grad
