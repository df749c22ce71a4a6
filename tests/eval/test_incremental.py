"""Incremental weak scoring (`w2s.search.weak_state`) equals rescoring from the first token, and runs fewer positions.

Every check compares the incremental scorer with the full rescore of the same texts (`incremental=False`, the
path the search used before and the reference), to 1e-5 in float32, on the micro world's weak pairs of both tiny
tasks, on a weak pair with its own tokenizer, and at chunk boundaries where appending text changes the parent's
last weak tokens.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.eval.checked_scorer import TOLERANCE, CheckedScorer
from w2s.sampling import encode_prompt
from w2s.search.cbs import best_of_n, chunk_beam_search
from w2s.search.samplers import HFSampler
from w2s.search.scorer import AUTO_BATCH_TOKENS, WeakScorer
from w2s.search.weak_state import StateStore, WeakState, common_prefix
from w2s.tokens import encode_text
from w2s.world.build import TASK_MODELS, new_model
from w2s.world.config import ModelShape
from w2s.world.tokenizer import train_tokenizer


def test_common_prefix():
    assert common_prefix([1, 2, 3, 4], [1, 2, 5]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0 and common_prefix([7], [8]) == 0
    assert common_prefix(list(range(100)), list(range(57)) + [0]) == 57


def test_store_matches_the_longest_prefix_and_evicts_the_least_recently_used():
    state = lambda ids: WeakState(ids, 0, None, [], [0.0] * (len(ids) + 1))  # noqa: E731
    store = StateStore(capacity=2)
    store.reset([1, 2], state([1, 2]))
    a, b, c, d = state([1, 2, 3]), state([1, 2, 4]), state([1, 2, 4, 5]), state([1, 2, 6])
    store.add(a), store.add(b)
    assert store.match([1, 2, 4, 5, 9]) == (b, 3)
    assert store.match([1, 2, 3, 7]) == (a, 3)  # a is now the most recently used
    store.add(c)  # evicts b
    assert store.match([1, 2, 4, 5]) == (c, 4) and store.match([1, 2, 4, 7]) == (c, 3)  # ties: most recent
    store.add(d)  # evicts a
    assert store.match([1, 2, 3]) == (store.root, 2)
    with pytest.raises(ValueError, match="capacity"):
        StateStore(0)


@pytest.fixture(scope="module")
def other_pair(world):
    """A weak pair (two random inits) on its own, smaller tokenizer: scoring across tokenizers."""
    tokenizer = train_tokenizer((ex["prompt"] + " " + ex["response"] for ex in world.train), 300)
    shape = ModelShape(hidden_size=64, num_layers=2)
    return new_model(shape, tokenizer, seed=11).eval(), new_model(shape, tokenizer, seed=12).eval(), tokenizer


def boundary_texts(tokenizer, response: str) -> list[str]:
    """Growing prefixes of `response` cut mid-word, at least one of whose last weak tokens changes when the
    next prefix is appended (checked, so the merge across the chunk boundary is really exercised)."""
    cuts = list(range(3, len(response), 7))[:8]
    texts = [response[:cut] for cut in cuts]
    ids = [encode_text(tokenizer, text) for text in texts]
    assert any(ids[i + 1][: len(ids[i])] != ids[i] for i in range(len(ids) - 1)), "no boundary merge"
    return texts


@pytest.mark.integration
@pytest.mark.parametrize("pair", ["same", "other"])
def test_scores_at_merging_chunk_boundaries_equal_a_full_rescore(world, other_pair, pair):
    tuned, untuned, tokenizer = (world.tuned, world.untuned, world.tokenizer) if pair == "same" else other_pair
    scorer = CheckedScorer(tuned, untuned, tokenizer)
    texts = boundary_texts(tokenizer, world.examples[1]["response"])
    for text in texts:  # one round per prefix; a finished copy and a sibling beside it
        scorer.score(world.prompt, [text, text, text + "s"], [False, True, False])
    run_before = scorer.tokens_forwarded
    scorer.score(world.prompt, texts[::-1] + [""], [False] * len(texts) + [False])  # all seen: no forward at all
    assert scorer.tokens_forwarded == run_before
    assert scorer.worst() <= TOLERANCE
    assert scorer.calls[-1][0][-1] == 0.0
    assert scorer.tokens_forwarded < scorer.full.tokens_forwarded / 2


@pytest.mark.integration
def test_positions_run_grow_with_the_new_tokens_only(world):
    """A response grown word by word (no merges): each round runs its new ids plus the last shared one."""
    scorer = WeakScorer(world.tuned, world.untuned, world.tokenizer)
    words = world.examples[2]["response"].split()[:10]
    texts = [" ".join(words[: count + 1]) for count in range(len(words))]
    ids = [encode_text(world.tokenizer, text) for text in texts]
    assert all(ids[i + 1][: len(ids[i])] == ids[i] for i in range(len(ids) - 1))
    for text in texts:
        scorer.score(world.prompt, [text], [False])
    prompt_len = len(encode_prompt(world.tokenizer, world.prompt))
    assert scorer.tokens_forwarded == (prompt_len - 1) + len(ids[-1]) + len(texts)
    assert scorer.tokens_scored == sum(len(row) for row in ids)  # the demand a full rescore would run
    last, _ = scorer.store.match(encode_prompt(world.tokenizer, world.prompt) + ids[-1])
    keys = last.kv[0][0][0]  # the tuned model's first layer: [1, heads, own positions, head_dim]
    assert keys.shape[2] == len(last.ids) - last.start < len(ids[-1])  # its own positions only: the rest shared
    assert last.parent.ids == last.ids[: len(last.parent.ids)] and last.parent.kv[0][0][0].data_ptr() != keys.data_ptr()


@pytest.mark.integration
@pytest.mark.parametrize("task", sorted(TASK_MODELS))
def test_cbs_and_best_of_n_with_incremental_scores_equal_a_full_rescore_every_round(world, micro_world, task):
    tuned = AutoModelForCausalLM.from_pretrained(micro_world / TASK_MODELS[task]["weak_aligned"]).eval()
    scorer = CheckedScorer(tuned, world.untuned, world.tokenizer, max_states=8)
    full = WeakScorer(tuned, world.untuned, world.tokenizer, incremental=False)
    sampler = HFSampler(world.strong, world.tokenizer)
    for index, example in enumerate(world.examples[:3]):
        for search in (chunk_beam_search, best_of_n):
            kwargs = dict(width=3, num_samples=2, chunk_len=3) if search is chunk_beam_search else dict(n=4)
            got = search(sampler, scorer, example["prompt"], max_new_tokens=16, seed=index, **kwargs)
            want = search(sampler, full, example["prompt"], max_new_tokens=16, seed=index, **kwargs)
            assert [h.token_ids for h in got.beam] == [h.token_ids for h in want.beam]
            assert got.weak_tokens == want.weak_tokens and got.weak_forwarded < want.weak_forwarded
    assert len(scorer.calls) > 12 and scorer.worst() <= TOLERANCE
    assert any(score != 0.0 for got, _ in scorer.calls for score in got)


@pytest.mark.integration
def test_a_model_without_a_plain_cache_falls_back_to_rescoring(world):
    """A weak model whose cache has sliding-window layers is rescored from the start, with a warning."""
    tokenizer = world.tokenizer
    shape = ModelShape(hidden_size=64, num_layers=1)
    tuned, untuned = (new_model(shape, tokenizer, seed) for seed in (1, 2))
    for model in (tuned, untuned):  # a sliding window, as Gemma's and Mistral's layers have
        model.config.sliding_window, model.config.layer_types = 4, ["sliding_attention"]
    scorer = WeakScorer(tuned.eval(), untuned.eval(), tokenizer)
    text = world.examples[0]["response"][:40]
    with pytest.warns(UserWarning, match="rescores from the start"):
        got = scorer.score(world.prompt, [text], [True])
    want = WeakScorer(tuned, untuned, tokenizer, incremental=False).score(world.prompt, [text], [True])
    assert not scorer.incremental and got == pytest.approx(want, abs=TOLERANCE)
    assert torch.isfinite(torch.tensor(got)).all()


@pytest.mark.integration
@pytest.mark.parametrize("incremental", [True, False])
def test_a_token_budget_splits_the_forward_passes_and_keeps_every_score_in_place(world, incremental):
    """batch_tokens bounds rows x the longest row's new tokens of each forward; the scores come back in the
    responses' order, equal to one batch of everything."""
    texts = [world.examples[i]["response"][: 8 + 9 * i] for i in range(6)]
    finished = [i % 2 == 0 for i in range(6)]
    one = WeakScorer(world.tuned, world.untuned, world.tokenizer, batch_tokens=10**9, incremental=incremental)
    want = one.score(world.prompt, texts, finished)
    shapes = []  # [rows, positions] of every forward of the tuned model
    hook = world.tuned.register_forward_pre_hook(
        lambda _, args, kwargs: shapes.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    try:
        split = WeakScorer(world.tuned, world.untuned, world.tokenizer, batch_tokens=40, incremental=incremental)
        got = split.score(world.prompt, texts, finished)
    finally:
        hook.remove()
    assert got == pytest.approx(want, abs=TOLERANCE)
    scoring = shapes[1:] if incremental else shapes  # the incremental scorer runs the prompt alone first
    assert len(scoring) > 1 and all(rows == 1 or rows * positions <= 40 for rows, positions in scoring)
    assert len(set(want)) == 6


def test_the_batches_hold_every_row_once_within_the_token_and_row_caps(world):
    scorer = WeakScorer(world.tuned, world.untuned, world.tokenizer, batch_size=3, batch_tokens=20)
    lengths = [5, 1, 9, 4, 4, 4, 2, 21, 3]
    batches = scorer._batches(lengths)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3 and (len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 20)
    assert [7] in batches  # a row over the budget runs alone
    assert WeakScorer(world.tuned, world.untuned, world.tokenizer).batch_tokens == AUTO_BATCH_TOKENS == 8192
