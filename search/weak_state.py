"""Incremental weak scoring: the weak pair's KV states of partial responses, kept and shared along the search tree.

A search scores a growing response again every round. Rescoring it from its first token makes the weak compute
grow with the square of the response length; here each scored partial response keeps a `WeakState` (its weak ids,
both models' keys and values, and the running sum of its log-ratio terms), and a new response is scored from the
state that shares the longest prefix of weak ids with it, running both models only over the ids after that prefix.

Exact across tokenizers: the new response's decoded text is tokenised whole (fast, and nothing like a forward
pass) and compared id by id with the cached states, so when appending text changes the weak tokens at the end of
the parent (a merge across the chunk boundary), the shared prefix simply stops before them and they are run
again. No margin has to be guessed.

Position t-1 predicts token t, so the state of a prefix of length c gives every term of a target below c and the
keys and values of positions below c; the new ids are fed from position c - 1 on (the last shared id once more,
as `w2s.search.samplers.LMStepper` keeps its last token pending), so that the first new target is scored.

A child holds only the keys and values of its own positions and points at its parent for the rest, so the
children of a hypothesis share its cache without copying or changing it. `StateStore` keeps the states of one
prompt, least recently used first out.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from itertools import accumulate

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from w2s.heads import find_head
from w2s.logprobs import final_hidden_states, head_logprobs, logprobs_of_targets, pad_right

LayerKV = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer, keys and values `[1, kv_heads, positions, head_dim]`."""


class NotIncremental(Exception):
    """The model's cache is not a plain full-attention `DynamicCache` (e.g. sliding-window layers)."""


@dataclass(eq=False)
class WeakState:
    """A scored weak sequence (prompt + partial response) with both models' keys and values.

    Holds itself the keys and values of positions `start` .. at least `len(ids) - 2`; earlier positions are the
    parent's (which it shares, never changes).
    """

    ids: list[int]
    """Weak token ids, prompt included."""
    start: int
    """First position whose keys and values this state holds."""
    parent: WeakState | None
    """The state holding positions below `start` (None only when `start` is 0)."""
    kv: list[LayerKV]
    """Per weak model (tuned, untuned), the keys and values of positions `start` on."""
    sums: list[float]
    """sums[t]: sum of log p_tuned - log p_untuned over the response targets below position t (len(ids) + 1)."""

    def past(self, model: int, end: int) -> LayerKV:
        """Keys and values of positions `[0, end)` for weak model `model` (a new tensor per layer)."""
        pieces, state = [], self
        while end > 0:
            while state.start >= end:
                state = state.parent
            pieces.append([(k[:, :, : end - state.start], v[:, :, : end - state.start]) for k, v in state.kv[model]])
            end, state = state.start, state.parent
        pieces.reverse()
        return [
            (torch.cat([piece[layer][0] for piece in pieces], 2), torch.cat([piece[layer][1] for piece in pieces], 2))
            for layer in range(len(pieces[0]))
        ]


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two id lists (binary search on C-level slice comparisons)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


class StateStore:
    """The states of one prompt, at most `capacity` of them (least recently used evicted first).

    An evicted state lives on while a kept child points at it, so the memory held is at most `capacity`
    states' own positions plus their ancestors'.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"the weak state store needs a capacity of at least 1, got {capacity}")
        self.capacity, self.prompt_ids = capacity, None
        self.states: OrderedDict[int, WeakState] = OrderedDict()

    def reset(self, prompt_ids: list[int], root: WeakState) -> None:
        """Starts over on a new prompt, with its root state (the empty response)."""
        self.prompt_ids, self.root = list(prompt_ids), root
        self.states.clear()

    def match(self, ids: list[int]) -> tuple[WeakState, int]:
        """The state sharing the longest prefix with `ids` (the root on ties with it) and that prefix's length."""
        best, length = self.root, common_prefix(self.root.ids, ids)
        for state in reversed(self.states.values()):  # most recent first: the likeliest parents
            shared = common_prefix(state.ids, ids)
            if shared > length:
                best, length = state, shared
        if best is not self.root:
            self.states.move_to_end(id(best))
        return best, length

    def add(self, state: WeakState) -> None:
        """Keeps `state`, evicting the least recently used beyond capacity."""
        self.states[id(state)] = state
        while len(self.states) > self.capacity:
            self.states.popitem(last=False)


def plain_kv(cache) -> LayerKV:
    """The per-layer keys and values of a model's returned cache; refuses anything but full-attention layers."""
    layers = getattr(cache, "layers", None)
    if layers is None or any(type(layer) is not DynamicLayer for layer in layers):
        raise NotIncremental(f"{type(cache).__name__} with layers {sorted({type(x).__name__ for x in layers or []})}")
    return [(layer.keys, layer.values) for layer in layers]


@torch.no_grad()
def forward_new(
    model: torch.nn.Module, past: LayerKV | None, rows: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, LayerKV]:
    """Runs `model` over new ids after a shared past, one right-padded batch.

    Args:
        past: keys and values of the positions before the new ids (batch 1, shared by every row), or None.
        rows: the new ids of each row (at least one each).

    Returns:
        `[rows, new - 1]` float32 log-probs: entry j is that of rows[i][j + 1] (0 past a row's end), and the
        per-layer keys and values of past + new positions `[rows, kv_heads, positions, head_dim]`.
    """
    device = next(model.parameters()).device
    input_ids, new_mask = pad_right(rows, pad_id)  # [batch, new] each
    batch, known = len(rows), 0 if past is None else past[0][0].shape[2]
    cache = None  # the shared past, viewed once per row (the cache's first update copies it)
    if past is not None:
        cache = DynamicCache(
            ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in past]
        )
    mask = torch.cat([torch.ones(batch, known, dtype=torch.long), new_mask], dim=1).to(device)  # [batch, past+new]
    input_ids, scored = input_ids.to(device), new_mask[:, 1:].bool().to(device)  # scored: [batch, new-1]
    kwargs = dict(input_ids=input_ids, attention_mask=mask, past_key_values=cache, use_cache=True)
    head = find_head(model)
    if head is None:  # an output layer `w2s.logprobs` cannot reproduce: full logits
        out = model(**kwargs)
        return logprobs_of_targets(out.logits, input_ids).masked_fill(~scored, 0.0), plain_kv(out.past_key_values)
    with final_hidden_states(head.module) as seen:
        out = model(**kwargs)
    if len(seen) != 1 or seen[0].shape[:2] != input_ids.shape:
        raise RuntimeError(f"{type(model).__name__}: its output layer was called {len(seen)} times, not once")
    values = head_logprobs(head, seen[0][:, :-1][scored], input_ids[:, 1:][scored])  # [targets]
    logprobs = torch.zeros(scored.shape, dtype=values.dtype, device=values.device).masked_scatter(scored, values)
    return logprobs, plain_kv(out.past_key_values)


def root_state(models: list[torch.nn.Module], prompt_ids: list[int], pad_id: int) -> WeakState:
    """The state of the empty response: every model run over the prompt but its last id (left pending)."""
    head_ids = prompt_ids[:-1]
    kv = [forward_new(model, None, [head_ids], pad_id)[1] for model in models] if head_ids else [[] for _ in models]
    return WeakState(list(prompt_ids), 0, None, kv, [0.0] * (len(prompt_ids) + 1))


def extend(
    models: list[torch.nn.Module], parent: WeakState, shared: int, rows: list[list[int]], pad_id: int
) -> tuple[list[float], list[WeakState]]:
    """Scores full id sequences that share `shared` (>= 1, above the prompt) ids with `parent`.

    Returns:
        Per row, its score (sum of response log-ratio terms) and its new state.
    """
    start = shared - 1  # the last shared id is fed again, so that the first new target is scored
    past = [parent.past(index, start) if start else None for index in range(len(models))]
    new = [row[start:] for row in rows]
    results = [forward_new(model, past[index], new, pad_id) for index, model in enumerate(models)]
    ratio = (results[0][0] - results[1][0].to(results[0][0].device)).cpu()  # [rows, new-1]
    scores, states = [], []
    for index, row in enumerate(rows):
        terms = ratio[index, : len(row) - shared].tolist()  # targets shared .. len(row)-1
        sums = parent.sums[: shared + 1] + list(accumulate(terms, initial=parent.sums[shared]))[1:]
        mine = (slice(index, index + 1), slice(None), slice(start, len(row)))  # this row's positions, no padding
        own = [[(k[mine].clone(), v[mine].clone()) for k, v in result[1]] for result in results]
        states.append(WeakState(list(row), start, parent if start else None, own, sums))
        scores.append(sums[len(row)])
    return scores, states
