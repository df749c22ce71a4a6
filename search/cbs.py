"""Weak-to-strong search (Zhou et al., 2024): steer a frozen strong model with a weak tuned/untuned pair.

The strong model samples chunks of text; the weak pair scores each partial response by the log-likelihood
ratio log pi_tuned(y | x) - log pi_untuned(y | x), summed over response tokens (`w2s.search.scorer`).
Chunk-level beam search (CBS) keeps the best W hypotheses, samples K chunks of L tokens from each and keeps the
best W of the W*K. Best-of-N (W=1, K=N, L=budget) and plain sampling (W=K=1) are special cases.

Written once against the `Sampler` protocol (`w2s.search.samplers`): the same search runs on transformers
(`HFSampler`, KV rows kept across chunks) or vLLM (`VllmSampler`, prefix caching). A fixed seed gives the same
search on one sampler; the two samplers draw different tokens for one seed (different random generators).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tqdm import tqdm

from w2s.sampling import encode_prompt
from w2s.search.ranking import RANKS, rank_keys
from w2s.search.samplers import Sampler
from w2s.search.scorer import WeakScorer
from w2s.tokens import encode_text


@dataclass
class Hypothesis:
    """One response of the beam: strong token ids (EOS excluded), its text and its weak score."""

    token_ids: list[int]
    text: str
    finished: bool
    score: float
    strong_logprob: float = 0.0
    """Sum of the strong model's log-probs (temperature 1, before top-k/top-p) of its tokens, EOS included."""
    weak_len: int = 0
    """Weak tokens its score sums over (EOS included when finished); counted only for a rank other than sum."""


@dataclass
class SearchResult:
    """Outcome of one search: the best hypothesis, the final beam and the sampling cost."""

    text: str
    """Best response, decoded from the strong tokens without special tokens."""
    token_ids: list[int]
    """Strong token ids of the best response, cut at (and excluding) EOS."""
    score: float
    """Weak score of the best response (sum over its weak tokens of log p_tuned - log p_untuned)."""
    num_sampled: int
    """Strong tokens sampled over the whole search, EOS included, summed over every candidate."""
    finished: bool = False
    """Whether the best response ended with EOS (rather than at the token budget)."""
    strong_logprob: float = 0.0
    """Strong model's log-likelihood of the best response (temperature 1), EOS included when finished."""
    beam: list[Hypothesis] = field(default_factory=list)
    """The final hypotheses, best first; `beam[0]` is the result."""
    weak_tokens: int = 0
    """Weak response tokens the guide scored over the whole search, EOS included, counting a candidate's every
    token again each round it is scored: what a full rescore runs through each weak model (prompts aside)."""
    weak_forwarded: int = 0
    """Weak positions the guide actually ran through each weak model over the whole search, prompt included:
    the weak compute, beside `num_sampled` (far below `weak_tokens` with incremental scoring)."""


def weak_counts(scorer: WeakScorer | None) -> tuple[int, int]:
    """The guide's counters so far, (weak tokens scored, weak positions run); (0, 0) without a guide."""
    return (scorer.tokens_scored, scorer.tokens_forwarded) if scorer is not None else (0, 0)


def beam_result(beam: list[Hypothesis], num_sampled: int, scorer, before: tuple[int, int]) -> SearchResult:
    """A search's result: the best of `beam` (best first), with the weak compute since `before` (`weak_counts`)."""
    best, now = beam[0], weak_counts(scorer)
    return SearchResult(
        best.text, best.token_ids, best.score, num_sampled, best.finished, best.strong_logprob, beam,
        now[0] - before[0], now[1] - before[1],
    )  # fmt: skip


def expand_beam(
    beam: list[Hypothesis], parents: list[int], chunks: list[list[int]], logprobs: list[float], tokenizer, eos_id: int
) -> list[Hypothesis]:
    """New (unscored) hypotheses: each parent's tokens followed by its sampled chunk."""
    children = []
    for parent, chunk, logprob in zip(parents, chunks, logprobs):
        finished = bool(chunk) and chunk[-1] == eos_id
        ids = beam[parent].token_ids + (chunk[:-1] if finished else chunk)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        children.append(Hypothesis(ids, text, finished, 0.0, beam[parent].strong_logprob + logprob))
    return children


def prune(
    beam: list[Hypothesis], children: list[Hypothesis], width: int, rank: str = "sum"
) -> tuple[list[Hypothesis], list[int], list[int]]:
    """Keeps the top `width` of the beam's finished hypotheses and the scored children by `rank_keys` (stable on
    ties).

    Returns:
        The new beam (best first); for each of its unfinished members, in beam order, the child index it came
        from and its index in the new beam.
    """
    candidates = [(h, None) for h in beam if h.finished] + [(child, row) for row, child in enumerate(children)]
    keys = rank_keys([h for h, _ in candidates], rank)
    order = sorted(range(len(candidates)), key=lambda index: -keys[index])[:width]  # [width] best first
    kept = [candidates[index] for index in order]
    live = [index for index, (h, row) in enumerate(kept) if row is not None and not h.finished]
    return [h for h, _ in kept], [kept[index][1] for index in live], live


def count_weak_tokens(scorer: WeakScorer | None, children: list[Hypothesis], rank: str) -> None:
    """Sets each child's weak length (its text as the weak tokenizer reads it, + EOS when finished), which the
    sum does not need: only for another rank, and only with a scorer."""
    if scorer is None or rank == "sum":
        return
    for child in children:
        child.weak_len = len(encode_text(scorer.tokenizer, child.text)) + int(child.finished)


def score_children(scorer: WeakScorer | None, prompt, children: list[Hypothesis]) -> None:
    """Sets each child's weak score (left at 0.0 without a scorer, where nothing is ranked)."""
    if scorer is None:
        return
    for child, score in zip(children, scorer.score(prompt, [c.text for c in children], [c.finished for c in children])):
        child.score = score


def chunk_beam_search(
    sampler: Sampler,
    scorer: WeakScorer | None,
    prompt: str | list[dict],
    width: int = 4,
    num_samples: int = 4,
    chunk_len: int = 5,
    max_new_tokens: int = 50,
    seed: int = 0,
    rank: str = "sum",
) -> SearchResult:
    """Chunk-level beam search: sample from the strong model, keep what the weak pair scores highest.

    Round 0 samples width * num_samples chunks from the prompt; every later round samples num_samples chunks
    from each unfinished hypothesis. Finished hypotheses (EOS sampled) are carried over unchanged with their
    score. The top `width` of all candidates (stable on ties) form the next beam. Stops when every hypothesis
    of the beam is finished or `max_new_tokens` strong tokens have been generated.

    Args:
        sampler: draws the strong model's chunks (its tokenizer renders the prompt and decodes for scoring).
        scorer: the weak pair; None leaves every score 0.0 (only sensible for plain sampling, W=K=1).
        prompt: the user message (or chat messages).
        width: W, hypotheses kept.
        num_samples: K, continuations sampled per hypothesis.
        chunk_len: L, tokens per continuation.
        max_new_tokens: token budget of a response.
        seed: seeds the sampler.
        rank: how candidates are compared (`rank_keys`): sum (the paper's), mean or centred.

    Returns:
        The best hypothesis of the final beam, with the beam itself.
    """
    if min(width, num_samples, chunk_len) < 1:
        raise ValueError(f"width, num_samples and chunk_len must be >= 1, got {width}, {num_samples}, {chunk_len}")
    if rank not in RANKS:
        raise ValueError(f"rank must be one of {list(RANKS)}, got {rank!r}")
    sampler.begin(encode_prompt(sampler.tokenizer, prompt), seed)
    weak_before = weak_counts(scorer)
    beam, live, used, num_sampled = [Hypothesis([], "", False, 0.0)], [0], 0, 0  # live: beam indices to extend
    while live and used < max_new_tokens:
        repeats = width * num_samples if used == 0 else num_samples
        length = min(chunk_len, max_new_tokens - used)
        chunks, logprobs = sampler.sample([beam[index].token_ids for index in live], repeats, length)
        used, num_sampled = used + length, num_sampled + sum(len(chunk) for chunk in chunks)
        parents = [index for index in live for _ in range(repeats)]
        children = expand_beam(beam, parents, chunks, logprobs, sampler.tokenizer, sampler.eos_id)
        score_children(scorer, prompt, children)
        count_weak_tokens(scorer, children, rank)
        beam, _, live = prune(beam, children, width, rank)
    return beam_result(beam, num_sampled, scorer, weak_before)


def best_of_n(
    sampler: Sampler,
    scorer: WeakScorer,
    prompt: str | list[dict],
    n: int = 16,
    max_new_tokens: int = 50,
    seed: int = 0,
    rank: str = "sum",
) -> SearchResult:
    """Best-of-N: N full responses from the strong model, the one the weak pair ranks highest (W=1, K=N)."""
    return chunk_beam_search(sampler, scorer, prompt, 1, n, max_new_tokens, max_new_tokens, seed, rank)


def sample(
    sampler: Sampler, scorer: WeakScorer | None, prompt: str | list[dict], max_new_tokens: int = 50, seed: int = 0
) -> SearchResult:
    """Plain sampling from the strong model (W=K=1, one chunk); the weak score, if any, is only reported."""
    return chunk_beam_search(sampler, scorer, prompt, 1, 1, max_new_tokens, max_new_tokens, seed)


def search_many(
    prompts: list[str | list[dict]],
    sampler: Sampler,
    scorer: WeakScorer | None,
    seed: int = 0,
    desc: str = "weak-to-strong search",
    search: Callable[..., SearchResult] = chunk_beam_search,
    **kwargs,
) -> list[SearchResult]:
    """Runs `search(sampler, scorer, prompt, seed=..., **kwargs)` on each prompt in order, with a progress bar.

    Prompt i uses seed + i, so a prompt's result does not depend on which other prompts are run with it.
    """
    return [
        search(sampler, scorer, prompt, seed=seed + index, **kwargs)
        for index, prompt in enumerate(tqdm(prompts, desc=desc))
    ]
