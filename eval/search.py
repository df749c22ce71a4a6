"""Weak-to-strong search (Zhou et al., 2024): steer a frozen strong model with a weak tuned/untuned pair.

The strong model samples chunks of text; the weak pair scores each partial response by the log-likelihood
ratio log pi_tuned(y | x) - log pi_untuned(y | x), summed over response tokens. Chunk-level beam search (CBS)
keeps the best W hypotheses, samples K chunks of L tokens from each and keeps the best W of the W*K.
Best-of-N (W=1, K=N, L=budget) and plain sampling (W=K=1) are special cases. Scoring works on decoded TEXT,
which the weak tokenizer re-tokenises, so the strong model may use a different tokenizer (or be a black box).

Emulated fine-tuning (EFT) is the per-token baseline: strong log-probs + beta * (tuned - untuned) log-probs,
which needs one shared vocabulary.

All sampling goes through `sample_token`, driven by a `torch.Generator` seeded from `seed`, so a fixed seed
gives the same tokens and EFT with beta=0 draws exactly what plain sampling draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from w2s.world.tokenizer import render_prompt


@dataclass
class Hypothesis:
    """One response of the beam: strong token ids (EOS excluded), its text and its weak score."""

    token_ids: list[int]
    text: str
    finished: bool
    score: float
    strong_logprob: float = 0.0
    """Sum of the strong model's log-probs (temperature 1, before top-k/top-p) of its tokens, EOS included."""


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


class WeakScorer:
    """Scores responses with a weak tuned/untuned pair: sum of log p_tuned - log p_untuned over response tokens.

    Args:
        tuned: the aligned weak model.
        untuned: the weak model before alignment.
        tokenizer: the weak tokenizer, with a chat template; may differ from the strong tokenizer.
        batch_size: responses per forward pass.
    """

    def __init__(self, tuned: PreTrainedModel, untuned: PreTrainedModel, tokenizer, batch_size: int = 32) -> None:
        self.tuned, self.untuned = tuned.eval(), untuned.eval()
        self.tokenizer, self.batch_size = tokenizer, batch_size
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)

    @torch.no_grad()
    def score(self, prompt: str, responses: list[str], finished: list[bool]) -> list[float]:
        """Weak log-likelihood ratio of each response to `prompt`.

        Args:
            prompt: the user message (the weak chat template is applied here).
            responses: response texts, e.g. decoded strong tokens (tokenised here without special tokens).
            finished: per response, whether it ended; EOS is appended (and scored) only then.

        Returns:
            Per response, the sum over its weak tokens of log p_tuned - log p_untuned (0.0 for an empty,
            unfinished response).
        """
        if len(responses) != len(finished):
            raise ValueError(f"{len(responses)} responses but {len(finished)} finished flags")
        prompt_ids = self.tokenizer(render_prompt(self.tokenizer, prompt), add_special_tokens=False)["input_ids"]
        eos = [self.tokenizer.eos_token_id]
        encoded = [
            prompt_ids + self.tokenizer(text, add_special_tokens=False)["input_ids"] + (eos if done else [])
            for text, done in zip(responses, finished)
        ]
        scores: list[float] = []
        for start in range(0, len(encoded), self.batch_size):
            scores += self._score_batch(encoded[start : start + self.batch_size], len(prompt_ids))
        return scores

    def _score_batch(self, encoded: list[list[int]], prompt_len: int) -> list[float]:
        """Right-padded batch of prompt + response ids -> summed log-ratio over the response tokens."""
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)  # [batch, seq]
        mask = torch.zeros((len(encoded), width), dtype=torch.long)  # [batch, seq]
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        scored = mask.bool()  # [batch, seq] response tokens only
        scored[:, :prompt_len] = False
        input_ids, mask, scored = (t.to(self.tuned.device) for t in (input_ids, mask, scored))
        tuned = token_logprobs(self.tuned, input_ids, mask)  # [batch, seq-1]
        ratio = tuned - token_logprobs(self.untuned, input_ids, mask).to(tuned.device)  # [batch, seq-1]
        return ratio.masked_fill(~scored[:, 1:], 0.0).sum(dim=1).tolist()


def token_logprobs(model: PreTrainedModel, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq-1] float32 log p(input_ids[:, t] | input_ids[:, :t]) for t >= 1; mask: [batch, seq], 1 on tokens."""
    input_ids, mask = input_ids.to(model.device), mask.to(model.device)
    logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()  # [batch, seq-1, vocab]
    logprobs = torch.log_softmax(logits, dim=-1)  # [batch, seq-1, vocab]
    return logprobs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # [batch, seq-1]


def sample_token(
    scores: torch.Tensor, generator: torch.Generator, temperature: float = 0.7, top_k: int = 50, top_p: float = 1.0
) -> torch.Tensor:
    """Draws one token per row from softmax(scores / temperature), restricted to top-k and nucleus top-p.

    Args:
        scores: [rows, vocab] unnormalised log-probabilities (e.g. log-softmaxed logits).
        generator: source of randomness (on the scores' device).
        temperature: 0 or below means greedy (argmax).
        top_k: keep the k highest scores (0 keeps all).
        top_p: keep the smallest set of tokens whose probability reaches top_p (1.0 keeps all).

    Returns:
        [rows] sampled token ids.
    """
    if temperature <= 0:
        return scores.argmax(dim=-1)
    scores = scores / temperature  # [rows, vocab]
    if 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]  # [rows, 1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(scores, dim=-1, descending=True)  # [rows, vocab]
        probs = torch.softmax(ordered, dim=-1)
        drop = (probs.cumsum(dim=-1) - probs) >= top_p  # mass before this token already reaches top_p
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # [rows, vocab]
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # [rows]


class LMStepper:
    """Incremental next-token log-probs of one causal LM over a batch of equal-length rows.

    With `use_cache`, the model's KV cache holds every token but the last (`pending`), so each step feeds only
    new tokens; without it, every step re-encodes the whole sequence (the slow reference path).
    """

    def __init__(self, model: PreTrainedModel, prompt_ids: list[int], use_cache: bool = True) -> None:
        self.model, self.use_cache, self.cache = model, use_cache, None
        self.seqs = torch.tensor([prompt_ids], dtype=torch.long, device=model.device)  # [rows, seq]
        self.pending = self.seqs[:, -1:]  # [rows, new] tokens the cache has not seen yet
        if use_cache and len(prompt_ids) > 1:
            with torch.no_grad():
                self.cache = model(input_ids=self.seqs[:, :-1], use_cache=True).past_key_values

    @torch.no_grad()
    def logprobs(self) -> torch.Tensor:
        """[rows, vocab] float32 log-probs of the next token after each row."""
        if self.use_cache:
            out = self.model(input_ids=self.pending, past_key_values=self.cache, use_cache=True)
            self.cache, self.pending = out.past_key_values, self.pending[:, :0]
        else:
            out = self.model(input_ids=self.seqs, use_cache=False)
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1)

    def append(self, tokens: torch.Tensor) -> None:
        """Appends [rows] tokens to every row."""
        self.seqs = torch.cat([self.seqs, tokens[:, None]], dim=1)  # [rows, seq+1]
        self.pending = torch.cat([self.pending, tokens[:, None]], dim=1)  # [rows, new+1]

    def select(self, rows: torch.Tensor) -> None:
        """Keeps (and reorders or repeats) the given rows, cache included: [n] row indices."""
        self.seqs, self.pending = self.seqs[rows], self.pending[rows]
        if self.cache is not None:
            self.cache.batch_select_indices(rows)


def sample_chunk(
    stepper: LMStepper, length: int, eos_id: int, generator: torch.Generator, **sampling
) -> tuple[list[list[int]], list[float]]:
    """Samples up to `length` tokens per row; a row stops at EOS (kept), the rest are padded internally.

    Returns:
        Per row, the new tokens up to and including the first EOS, and the sum of their strong log-probs.
    """
    rows = stepper.seqs.shape[0]
    done = torch.zeros(rows, dtype=torch.bool, device=stepper.seqs.device)  # [rows]
    logprob = torch.zeros(rows, dtype=torch.float32, device=stepper.seqs.device)  # [rows]
    drawn = []
    for _ in range(length):
        logprobs = stepper.logprobs()  # [rows, vocab]
        tokens = sample_token(logprobs, generator, **sampling).masked_fill(done, eos_id)  # [rows]
        logprob += logprobs.gather(-1, tokens[:, None]).squeeze(-1).masked_fill(done, 0.0)
        stepper.append(tokens)
        drawn.append(tokens)
        done |= tokens == eos_id
        if bool(done.all()):
            break
    chunks = torch.stack(drawn, dim=1).tolist() if drawn else [[] for _ in range(rows)]  # [rows, steps]
    return [row[: row.index(eos_id) + 1] if eos_id in row else row for row in chunks], logprob.tolist()


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
    beam: list[Hypothesis], children: list[Hypothesis], width: int
) -> tuple[list[Hypothesis], list[int], list[int]]:
    """Keeps the top `width` of the beam's finished hypotheses and the scored children (stable on ties).

    Returns:
        The new beam (best first); for each of its unfinished members, in beam order, the child index it came
        from (its stepper row) and its index in the new beam.
    """
    candidates = [(h, None) for h in beam if h.finished] + [(child, row) for row, child in enumerate(children)]
    kept = sorted(candidates, key=lambda pair: -pair[0].score)[:width]  # [width] best first
    live = [index for index, (h, row) in enumerate(kept) if row is not None and not h.finished]
    return [h for h, _ in kept], [kept[index][1] for index in live], live


def chunk_beam_search(
    strong_model: PreTrainedModel,
    strong_tokenizer: PreTrainedTokenizerBase,
    scorer: WeakScorer,
    prompt: str,
    width: int = 4,
    num_samples: int = 4,
    chunk_len: int = 5,
    max_new_tokens: int = 50,
    temperature: float = 0.7,
    top_k: int = 50,
    top_p: float = 1.0,
    seed: int = 0,
    use_cache: bool = True,
) -> SearchResult:
    """Chunk-level beam search: sample from the strong model, keep what the weak pair scores highest.

    Round 0 samples width * num_samples chunks from the prompt; every later round samples num_samples chunks
    from each unfinished hypothesis. Finished hypotheses (EOS sampled) are carried over unchanged with their
    score. The top `width` of all candidates (stable on ties) form the next beam. Stops when every hypothesis
    of the beam is finished or `max_new_tokens` strong tokens have been generated.

    Args:
        strong_model: the frozen large model that samples.
        strong_tokenizer: its tokenizer (with a chat template); its tokens are decoded to text for scoring.
        scorer: the weak pair.
        prompt: the user message.
        width: W, hypotheses kept.
        num_samples: K, continuations sampled per hypothesis.
        chunk_len: L, tokens per continuation.
        max_new_tokens: token budget of a response.
        temperature, top_k, top_p: strong sampling settings (see `sample_token`).
        seed: seeds the sampling generator.
        use_cache: reuse the strong KV cache across steps and chunks (False re-encodes every step).

    Returns:
        The best hypothesis of the final beam, with the beam itself.
    """
    if min(width, num_samples, chunk_len) < 1:
        raise ValueError(f"width, num_samples and chunk_len must be >= 1, got {width}, {num_samples}, {chunk_len}")
    eos_id = strong_tokenizer.eos_token_id
    prompt_ids = strong_tokenizer(render_prompt(strong_tokenizer, prompt), add_special_tokens=False)["input_ids"]
    stepper = LMStepper(strong_model, prompt_ids, use_cache)
    generator = torch.Generator(device=strong_model.device).manual_seed(seed)
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    beam, live, used, num_sampled = [Hypothesis([], "", False, 0.0)], [0], 0, 0  # live: beam index of each row
    while live and used < max_new_tokens:
        repeats = width * num_samples if used == 0 else num_samples
        stepper.select(torch.arange(len(live), device=stepper.seqs.device).repeat_interleave(repeats))
        length = min(chunk_len, max_new_tokens - used)
        chunks, logprobs = sample_chunk(stepper, length, eos_id, generator, **sampling)
        used, num_sampled = used + length, num_sampled + sum(len(chunk) for chunk in chunks)
        parents = [index for index in live for _ in range(repeats)]
        children = expand_beam(beam, parents, chunks, logprobs, strong_tokenizer, eos_id)
        scores = scorer.score(prompt, [child.text for child in children], [child.finished for child in children])
        for child, score in zip(children, scores):
            child.score = score
        beam, rows, live = prune(beam, children, width)
        stepper.select(torch.tensor(rows, dtype=torch.long, device=stepper.seqs.device))
    best = beam[0]
    return SearchResult(best.text, best.token_ids, best.score, num_sampled, best.finished, best.strong_logprob, beam)


def best_of_n(
    strong_model, strong_tokenizer, scorer: WeakScorer, prompt: str, n: int = 16, max_new_tokens: int = 50, **kwargs
) -> SearchResult:
    """Best-of-N: N full responses from the strong model, the one the weak pair scores highest (W=1, K=N)."""
    return chunk_beam_search(strong_model, strong_tokenizer, scorer, prompt, 1, n, max_new_tokens, max_new_tokens, **kwargs)


def sample(
    strong_model, strong_tokenizer, scorer: WeakScorer, prompt: str, max_new_tokens: int = 50, **kwargs
) -> SearchResult:
    """Plain sampling from the strong model (W=K=1, one chunk); the weak score is only reported."""
    return chunk_beam_search(strong_model, strong_tokenizer, scorer, prompt, 1, 1, max_new_tokens, max_new_tokens, **kwargs)


def check_same_vocab(strong_model, weak_models, tokenizer=None, weak_tokenizer=None) -> None:
    """Raises ValueError, naming both sizes, unless the models (and tokenizers, if given) share one vocabulary."""
    strong_size = strong_model.get_output_embeddings().weight.shape[0]
    sizes = [weak.get_output_embeddings().weight.shape[0] for weak in weak_models]
    if weak_tokenizer is not None and weak_tokenizer.get_vocab() != tokenizer.get_vocab():
        strong_size, sizes = len(tokenizer), [len(weak_tokenizer)]  # same size, different ids also refused
    elif all(size == strong_size for size in sizes):
        return
    raise ValueError(
        f"EFT needs one shared vocabulary: the strong vocabulary has {strong_size} tokens, the weak one "
        f"{next((size for size in sizes if size != strong_size), strong_size)} (or other token ids); "
        "use chunk_beam_search, which scores text, for different tokenizers"
    )


@torch.no_grad()
def eft_generate(
    strong_model: PreTrainedModel,
    weak_tuned: PreTrainedModel,
    weak_untuned: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    beta: float = 1.0,
    max_new_tokens: int = 50,
    temperature: float = 0.7,
    top_k: int = 50,
    top_p: float = 1.0,
    seed: int = 0,
    weak_tokenizer: PreTrainedTokenizerBase | None = None,
) -> SearchResult:
    """Emulated fine-tuning: sample from log p_strong + beta * (log p_tuned - log p_untuned), token by token.

    Args:
        strong_model, weak_tuned, weak_untuned: three causal LMs over one vocabulary.
        tokenizer: the shared tokenizer (chat template applied to `prompt`).
        prompt: the user message.
        beta: weight of the weak log-ratio; 0 is plain sampling from the strong model (same tokens, same seed).
        max_new_tokens, temperature, top_k, top_p, seed: as in `chunk_beam_search`.
        weak_tokenizer: when given, must map tokens to the same ids as `tokenizer`.

    Returns:
        The response; `score` and `strong_logprob` sum log p_tuned - log p_untuned and log p_strong over its
        tokens (EOS included if sampled).

    Raises:
        ValueError: naming both vocabulary sizes when the models (or tokenizers) do not share a vocabulary.
    """
    check_same_vocab(strong_model, (weak_tuned, weak_untuned), tokenizer, weak_tokenizer)
    prompt_ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    strong, tuned, untuned = (LMStepper(m, prompt_ids) for m in (strong_model, weak_tuned, weak_untuned))
    generator = torch.Generator(device=strong_model.device).manual_seed(seed)
    ids, score, strong_logprob, finished = [], 0.0, 0.0, False
    for _ in range(max_new_tokens):
        base = strong.logprobs()  # [1, vocab]
        ratio = tuned.logprobs().to(base.device) - untuned.logprobs().to(base.device)  # [1, vocab]
        token = sample_token(base + beta * ratio, generator, temperature, top_k, top_p)  # [1]
        score, strong_logprob = score + ratio[0, token].item(), strong_logprob + base[0, token].item()
        if token.item() == tokenizer.eos_token_id:
            finished = True
            break
        ids.append(token.item())
        for stepper in (strong, tuned, untuned):
            stepper.append(token.to(stepper.seqs.device))
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return SearchResult(text, ids, score, len(ids) + finished, finished, strong_logprob)


def search_many(
    prompts: list[str],
    strong_model: PreTrainedModel,
    strong_tokenizer: PreTrainedTokenizerBase,
    scorer: WeakScorer,
    seed: int = 0,
    desc: str = "weak-to-strong search",
    **kwargs,
) -> list[SearchResult]:
    """Runs `chunk_beam_search` (settings in **kwargs) on each prompt in order, with a progress bar.

    Prompt i uses seed + i, so a prompt's result does not depend on which other prompts are run with it.
    """
    return [
        chunk_beam_search(strong_model, strong_tokenizer, scorer, prompt, seed=seed + index, **kwargs)
        for index, prompt in enumerate(tqdm(prompts, desc=desc))
    ]
