"""Weak-to-strong search on the micro world's real models: scoring, CBS invariants, special cases, EFT."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from w2s.sampling import sample_token
from w2s.search.cbs import Hypothesis, best_of_n, chunk_beam_search, prune, sample, search_many
from w2s.search.eft import eft_generate
from w2s.search.samplers import HFSampler, LMStepper
from w2s.search.scorer import WeakScorer
from w2s.world.build import new_model
from w2s.world.config import ModelShape
from w2s.world.sft import encode_pairs, train_sft
from w2s.world.tokenizer import train_tokenizer

MAX_NEW = 12

# The `world` fixture (tokenizer, models, weak scorer, data of the micro world) is in tests/eval/conftest.py.


def hf(model, tokenizer, use_cache: bool = True) -> HFSampler:
    """The transformers sampler at the settings the searches used before the protocol (T=0.7, top_k=50)."""
    return HFSampler(model, tokenizer, use_cache=use_cache)


@torch.no_grad()
def hand_score(tuned, untuned, tokenizer, prompt: str, text: str, finished: bool) -> float:
    """Sum over response tokens of log p_tuned - log p_untuned, one unpadded sequence at a time."""
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(chat, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(text, add_special_tokens=False)["input_ids"] + (
        [tokenizer.eos_token_id] if finished else []
    )
    ids = torch.tensor([prompt_ids + response_ids])  # [1, seq]
    total = 0.0
    for sign, model in ((1.0, tuned), (-1.0, untuned)):
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)  # [seq, vocab]
        total += sign * sum(logprobs[t - 1, ids[0, t]].item() for t in range(len(prompt_ids), ids.shape[1]))
    return total


@torch.no_grad()
def strong_logprob(model, tokenizer, prompt: str, token_ids: list[int], finished: bool) -> float:
    """Sum of the strong model's log-probs of a response's tokens (EOS too when finished), in one forward."""
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(chat, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + token_ids + ([tokenizer.eos_token_id] if finished else [])])  # [1, seq]
    logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)  # [seq, vocab]
    return sum(logprobs[t - 1, ids[0, t]].item() for t in range(len(prompt_ids), ids.shape[1]))


@torch.no_grad()
def reference_sample(model, tokenizer, prompt: str, max_new_tokens: int, seed: int) -> list[int]:
    """Plain sampling without any cache: the whole sequence is re-encoded for every token."""
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(chat, add_special_tokens=False, return_tensors="pt")["input_ids"]  # [1, seq]
    generator = torch.Generator().manual_seed(seed)
    out: list[int] = []
    for _ in range(max_new_tokens):
        logprobs = torch.log_softmax(model(input_ids=ids).logits[:, -1].float(), dim=-1)  # [1, vocab]
        token = sample_token(logprobs, generator, temperature=0.7, top_k=50, top_p=1.0)  # [1]
        if token.item() == tokenizer.eos_token_id:
            break
        out.append(token.item())
        ids = torch.cat([ids, token[:, None]], dim=1)
    return out


def test_sample_token_limits():
    scores = torch.log_softmax(torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 4.0]]), dim=-1)
    generator = torch.Generator().manual_seed(0)
    assert sample_token(scores, generator, temperature=0.0).tolist() == [1, 0]
    for _ in range(20):
        assert sample_token(scores, generator, temperature=1.0, top_k=1).tolist() == [1, 0]
        assert sample_token(scores, generator, temperature=1.0, top_k=0, top_p=0.01).tolist() == [1, 0]
        first, second = sample_token(scores, generator, temperature=1.0, top_k=2).tolist()
        assert first in (1, 3) and second in (0, 3)


def test_prune_keeps_top_width_and_carries_finished_hypotheses():
    done = Hypothesis([1], "a", True, 5.0)
    beam = [done, Hypothesis([2], "b", False, 9.0)]  # the unfinished parent is not a candidate any more
    children = [
        Hypothesis([2, 3], "bc", False, 1.0),
        Hypothesis([2, 4], "bd", True, 7.0),
        Hypothesis([2, 5], "be", False, 6.0),
    ]
    kept, rows, live = prune(beam, children, width=3)
    assert [h.text for h in kept] == ["bd", "be", "a"]
    assert rows == [2] and live == [1]  # only "be" goes on, from stepper row 2, at beam index 1
    kept, rows, live = prune(beam, children, width=1)
    assert [h.text for h in kept] == ["bd"] and rows == [] and live == []


@pytest.mark.integration
def test_scorer_equals_hand_computation_eos_only_when_finished(world):
    response = world.examples[0]["response"]
    partial = " ".join(response.split()[:5])
    texts, finished = [response, partial, response, ""], [True, False, False, False]
    scores = world.scorer.score(world.prompt, texts, finished)
    for text, done, score in zip(texts, finished, scores):
        assert score == pytest.approx(
            hand_score(world.tuned, world.untuned, world.tokenizer, world.prompt, text, done), abs=1e-3
        )
    assert scores[3] == 0.0
    # The finished and unfinished scores of one text differ by the EOS term alone, which is not zero.
    assert abs(scores[0] - scores[2]) > 1e-4


@pytest.mark.integration
def test_single_beam_is_plain_sampling(world):
    args = (hf(world.strong, world.tokenizer), world.scorer, world.prompt)
    plain = sample(*args, max_new_tokens=MAX_NEW, seed=3)
    assert plain.token_ids == reference_sample(world.strong, world.tokenizer, world.prompt, MAX_NEW, seed=3)
    one_chunk = chunk_beam_search(*args, width=1, num_samples=1, chunk_len=MAX_NEW, max_new_tokens=MAX_NEW, seed=3)
    chunked = chunk_beam_search(*args, width=1, num_samples=1, chunk_len=5, max_new_tokens=MAX_NEW, seed=3)
    assert one_chunk.token_ids == chunked.token_ids == plain.token_ids
    assert plain.num_sampled == len(plain.token_ids) + plain.finished
    assert plain.text == world.tokenizer.decode(plain.token_ids, skip_special_tokens=True)


@pytest.mark.integration
def test_best_of_n_returns_the_candidate_with_the_highest_weak_score(world):
    args = (hf(world.strong, world.tokenizer), world.scorer, world.prompt)
    best = best_of_n(*args, n=4, max_new_tokens=MAX_NEW, seed=1)
    # W=4, K=1, L=budget draws the same four responses in round 0 and keeps them all.
    everyone = chunk_beam_search(*args, width=4, num_samples=1, chunk_len=MAX_NEW, max_new_tokens=MAX_NEW, seed=1)
    assert len(everyone.beam) == 4 and len({tuple(h.token_ids) for h in everyone.beam}) > 1
    recomputed = [
        hand_score(world.tuned, world.untuned, world.tokenizer, world.prompt, h.text, h.finished) for h in everyone.beam
    ]
    top = max(range(4), key=lambda i: recomputed[i])
    assert best.token_ids == everyone.beam[top].token_ids
    assert best.score == pytest.approx(max(recomputed), abs=1e-3)
    assert best.num_sampled == everyone.num_sampled


@pytest.mark.integration
def test_search_is_deterministic_for_a_seed(world):
    run = lambda seed: chunk_beam_search(  # noqa: E731
        hf(world.strong, world.tokenizer), world.scorer, world.prompt, 2, 2, 4, MAX_NEW, seed=seed
    )
    first, again = run(0), run(0)
    assert first.token_ids == again.token_ids and first.score == again.score
    assert [h.token_ids for h in first.beam] == [h.token_ids for h in again.beam]
    assert any(run(seed).token_ids != first.token_ids for seed in (1, 2))


@pytest.mark.integration
def test_stepper_cache_gives_the_log_probs_of_a_full_forward_after_repeats_and_reorders(world):
    prompt_ids = world.tokenizer(
        world.tokenizer.apply_chat_template(
            [{"role": "user", "content": world.prompt}], tokenize=False, add_generation_prompt=True
        ),
        add_special_tokens=False,
    )["input_ids"]
    cached = LMStepper(world.strong, [prompt_ids], use_cache=True)
    slow = LMStepper(world.strong, [prompt_ids], use_cache=False)
    steps = [([0, 0, 0], [5, 6, 7]), (None, [8, 9, 10]), ([2, 0, 2], [11, 12, 13]), ([1, 0], [14, 15])]
    for rows, tokens in steps:
        for stepper in (cached, slow):
            if rows is not None:
                stepper.select(torch.tensor(rows))
            stepper.append(torch.tensor(tokens))
        fast = cached.logprobs()  # [rows, vocab]
        assert torch.equal(cached.seqs, slow.seqs)
        with torch.no_grad():
            full = torch.log_softmax(world.strong(input_ids=cached.seqs).logits[:, -1].float(), dim=-1)
        torch.testing.assert_close(fast, full, atol=1e-4, rtol=0)
        torch.testing.assert_close(slow.logprobs(), full, atol=1e-5, rtol=0)
    assert cached.seqs[:, len(prompt_ids) :].tolist() == [[5, 8, 12, 14], [7, 10, 11, 15]]


@pytest.mark.integration
def test_kv_cache_reuse_gives_the_same_search_as_recomputing(world):
    args = (world.scorer, world.prompt, 2, 3, 4, MAX_NEW)
    cached = chunk_beam_search(hf(world.strong, world.tokenizer, use_cache=True), *args, seed=5)
    slow = chunk_beam_search(hf(world.strong, world.tokenizer, use_cache=False), *args, seed=5)
    assert [h.token_ids for h in cached.beam] == [h.token_ids for h in slow.beam]
    assert cached.score == pytest.approx(slow.score, abs=1e-5)


@pytest.mark.integration
def test_result_is_the_argmax_of_the_final_beam_and_scores_are_recomputable(world):
    result = chunk_beam_search(hf(world.strong, world.tokenizer), world.scorer, world.prompt, 3, 2, 5, MAX_NEW, seed=7)
    assert len(result.beam) == 3
    assert result.score == max(h.score for h in result.beam) == result.beam[0].score
    assert [h.score for h in result.beam] == sorted((h.score for h in result.beam), reverse=True)
    assert result.token_ids == result.beam[0].token_ids
    for hyp in result.beam:
        assert len(hyp.token_ids) <= MAX_NEW
        assert hyp.score == pytest.approx(world.scorer.score(world.prompt, [hyp.text], [hyp.finished])[0], abs=1e-4)
        # The strong log-likelihood accumulated over the chunks (through cache rows that were repeated and
        # pruned) equals one forward over the hypothesis' own tokens: each row continued its own hypothesis.
        expected = strong_logprob(world.strong, world.tokenizer, world.prompt, hyp.token_ids, hyp.finished)
        assert hyp.strong_logprob == pytest.approx(expected, abs=1e-4)
    # Round 0 samples W*K chunks, later rounds K per unfinished hypothesis: at most W*K*budget tokens in all.
    assert 0 < result.num_sampled <= 3 * 2 * MAX_NEW


@pytest.fixture(scope="module")
def eager_strong(world):
    """A copy of the strong model fine-tuned a few steps on 3-word answers, so that it samples EOS early."""
    short = [dict(ex, response=" ".join(ex["response"].split()[:3])) for ex in world.train[:64]]
    model = copy.deepcopy(world.strong)
    train_sft(model, encode_pairs(world.tokenizer, short, 256), world.tokenizer.pad_token_id, 12, 8, 1e-2, 0, "eager")
    return model.eval()


@pytest.mark.integration
def test_finished_hypotheses_end_at_eos_and_are_carried_over_unchanged(world, eager_strong):
    results = [
        chunk_beam_search(hf(eager_strong, world.tokenizer), world.scorer, world.prompt, 3, 2, 3, MAX_NEW, seed=seed)
        for seed in range(3)
    ]
    beams = [h for result in results for h in result.beam]
    assert any(h.finished for h in beams) and any(not h.finished for h in beams)
    for hyp in beams:
        assert world.tokenizer.eos_token_id not in hyp.token_ids
        assert hyp.finished or len(hyp.token_ids) == MAX_NEW  # an unfinished hypothesis used the whole budget
        assert hyp.score == pytest.approx(world.scorer.score(world.prompt, [hyp.text], [hyp.finished])[0], abs=1e-4)
        expected = strong_logprob(eager_strong, world.tokenizer, world.prompt, hyp.token_ids, hyp.finished)
        assert hyp.strong_logprob == pytest.approx(expected, abs=1e-4)
    # A beam that is all finished stops early: fewer tokens drawn than W*K chunks of the whole budget.
    done = [result for result in results if all(h.finished for h in result.beam)]
    assert done and all(result.num_sampled < 3 * 2 * MAX_NEW for result in done)
    slow_sampler = hf(eager_strong, world.tokenizer, use_cache=False)
    slow = chunk_beam_search(slow_sampler, world.scorer, world.prompt, 3, 2, 3, MAX_NEW, seed=1)
    assert [h.token_ids for h in slow.beam] == [h.token_ids for h in results[1].beam]


@pytest.mark.integration
def test_search_many_runs_each_prompt_with_its_own_seed(world):
    prompts = [ex["prompt"] for ex in world.examples[:2]]
    settings = dict(width=2, num_samples=2, chunk_len=6, max_new_tokens=MAX_NEW)
    sampler = hf(world.strong, world.tokenizer)
    results = search_many(prompts, sampler, world.scorer, seed=10, **settings)
    assert len(results) == 2
    for index, (prompt, result) in enumerate(zip(prompts, results)):
        alone = chunk_beam_search(hf(world.strong, world.tokenizer), world.scorer, prompt, seed=10 + index, **settings)
        assert result.token_ids == alone.token_ids


@pytest.mark.integration
def test_eft_with_beta_zero_is_plain_sampling(world):
    sampler = hf(world.strong, world.tokenizer)
    plain = sample(sampler, world.scorer, world.prompt, max_new_tokens=MAX_NEW, seed=4)
    eft = eft_generate(sampler, world.tuned, world.untuned, world.prompt, 0.0, MAX_NEW, seed=4)
    assert eft.token_ids == plain.token_ids
    steered = eft_generate(sampler, world.tuned, world.untuned, world.prompt, 2.0, MAX_NEW, seed=4)
    # EFT's score is the weak log-ratio summed over its own (strong = weak) tokens.
    chat = world.tokenizer.apply_chat_template(
        [{"role": "user", "content": world.prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = world.tokenizer(chat, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ids + steered.token_ids + ([world.tokenizer.eos_token_id] if steered.finished else [])])
    start = ids.shape[1] - len(steered.token_ids) - steered.finished
    with torch.no_grad():
        lp = [torch.log_softmax(m(input_ids=ids).logits[0], -1) for m in (world.tuned, world.untuned)]
    expected = sum((lp[0][t - 1, ids[0, t]] - lp[1][t - 1, ids[0, t]]).item() for t in range(start, ids.shape[1]))
    assert steered.score == pytest.approx(expected, abs=1e-3)


@pytest.fixture(scope="module")
def other_pair(world):
    """A weak pair on a different, smaller tokenizer: a random init and a copy fine-tuned for a few steps."""
    tokenizer = train_tokenizer((ex["prompt"] + " " + ex["response"] for ex in world.train), 300)
    untuned = new_model(ModelShape(hidden_size=64, num_layers=1), tokenizer, seed=11)
    tuned = copy.deepcopy(untuned)
    short = [ex for ex in world.train if len(tokenizer(ex["prompt"] + " " + ex["response"])["input_ids"]) < 200][:64]
    train_sft(tuned, encode_pairs(tokenizer, short, 256), tokenizer.pad_token_id, 4, 8, 3e-3, 0, "other")
    return SimpleNamespace(tokenizer=tokenizer, tuned=tuned.eval(), untuned=untuned)


@pytest.mark.integration
def test_search_with_a_weak_pair_on_another_tokenizer_scores_text(world, other_pair):
    text = world.examples[0]["response"]
    assert len(other_pair.tokenizer) != len(world.tokenizer)
    assert other_pair.tokenizer(text)["input_ids"] != world.tokenizer(text)["input_ids"]
    scorer = WeakScorer(other_pair.tuned, other_pair.untuned, other_pair.tokenizer)
    result = chunk_beam_search(hf(world.strong, world.tokenizer), scorer, world.prompt, 2, 2, 4, MAX_NEW, seed=2)
    assert result.text == world.tokenizer.decode(result.token_ids, skip_special_tokens=True)
    for hyp in result.beam:
        expected = hand_score(
            other_pair.tuned, other_pair.untuned, other_pair.tokenizer, world.prompt, hyp.text, hyp.finished
        )
        assert hyp.score == pytest.approx(expected, abs=1e-3)
    assert any(h.score != 0.0 for h in result.beam)


@pytest.mark.integration
def test_eft_refuses_different_vocabularies(world, other_pair):
    with pytest.raises(ValueError, match=r"400.*300"):
        eft_generate(
            hf(world.strong, world.tokenizer), other_pair.tuned, other_pair.untuned, world.prompt, 1.0, MAX_NEW
        )
    with pytest.raises(ValueError, match="vocabulary"):
        eft_generate(
            hf(world.strong, world.tokenizer),
            world.tuned,
            world.untuned,
            world.prompt,
            1.0,
            MAX_NEW,
            weak_tokenizer=other_pair.tokenizer,
        )
