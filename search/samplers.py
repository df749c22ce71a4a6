"""The one interface every search draws strong tokens through, and its transformers implementation.

A `Sampler` is started on a prompt with `begin(prompt_ids, seed)`; then each `sample(prefixes, repeats, length)`
draws, for every prefix (a hypothesis' response tokens so far), `repeats` continuations of at most `length`
tokens. Chunk-level beam search, best-of-N, plain sampling (`w2s.search.cbs`) and any other search that asks
for arbitrary prefixes (a tree search such as MCTS) are written once against it; `HFSampler` (here) and
`VllmSampler` (`w2s.search.vllm_sampler`) implement it.

`HFSampler` keeps the strong model's KV cache between calls: when every prefix asked for is a row it already
holds (matched by content, as a beam search asks for the survivors of the last round), it only reorders and
repeats those rows; otherwise it encodes the prefixes afresh, so a caller never has to know what it holds.

A tree search also needs siblings that differ in their first token, drawn without replacement from the prefix's
next-token distribution, with that distribution's entropy and the warped probabilities of what was drawn: the
optional `SiblingSampler.sample_siblings`, which `HFSampler` implements and `VllmSampler` does not (vLLM exposes
neither the distribution nor drawing from it without replacement), so such a search needs engine hf.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from w2s.sampling import require_finite, sample_token, warp_scores


@dataclass(frozen=True)
class Sampling:
    """How the strong model's tokens are drawn (see `w2s.sampling.sample_token`)."""

    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 1.0


DEFAULT_SAMPLING = Sampling()
"""T=0.7, top-k 50, no nucleus filter: the settings the tiny world's numbers are measured with."""


class Sampler(Protocol):
    """Draws chunks of strong tokens after a prompt; see the module docstring."""

    tokenizer: PreTrainedTokenizerBase
    """The strong tokenizer: renders prompts, decodes chunks for scoring."""
    eos_id: int
    """Ends a response; a chunk that sampled it ends with it."""

    def begin(self, prompt_ids: list[int], seed: int) -> None:
        """Starts on a new prompt (rendered token ids); `seed` fixes every later draw."""
        ...

    def sample(self, prefixes: Sequence[list[int]], repeats: int, length: int) -> tuple[list[list[int]], list[float]]:
        """`repeats` continuations of each prefix, prefix by prefix (prefix i's are rows i*repeats...).

        Returns:
            Per continuation, its tokens (at most `length`, ending with EOS when it was sampled) and the sum of
            the strong model's log-probs (temperature 1, before top-k/top-p) of those tokens.
        """
        ...


@dataclass
class Siblings:
    """Continuations of one prefix whose first tokens all differ (`SiblingSampler.sample_siblings`)."""

    chunks: list[list[int]]
    """Per sibling, its tokens (at most the length asked for, ending with EOS when EOS was sampled)."""
    logprobs: list[float]
    """Per sibling, the sum of the strong model's raw log-probs (temperature 1, before top-k/top-p) of its tokens."""
    warped_logprobs: list[float]
    """Per sibling, the sum of the log-probs its tokens had in the distribution they were drawn from (after
    temperature, top-k and top-p): a tree search's prior is their per-token geometric mean."""
    entropy_bits: float
    """Entropy, in bits, of the prefix's warped next-token distribution (the siblings' first step)."""


class SiblingSampler(Sampler, Protocol):
    """A `Sampler` that can also draw siblings with distinct first tokens (what a tree search expands with)."""

    def sample_siblings(self, prefix: list[int], count: int, length: int) -> Siblings:
        """`count` continuations of `prefix` (fewer when fewer tokens have probability) of at most `length` tokens:
        first tokens drawn without replacement from the warped next-token distribution, the rest sampled."""
        ...


def warped_logprobs(logprobs: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """[rows, vocab] log-probs of the distribution `sample_token` draws from (-inf outside it); temperature 0 is
    greedy: all the mass on the argmax."""
    if sampling.temperature <= 0:
        greedy = torch.full_like(logprobs, float("-inf"))
        return greedy.scatter(-1, logprobs.argmax(dim=-1, keepdim=True), 0.0)
    return torch.log_softmax(warp_scores(logprobs, **asdict(sampling)), dim=-1)


def entropy_bits(logprobs: torch.Tensor) -> float:
    """Shannon entropy, in bits, of one [vocab] distribution given as log-probs (-inf entries contribute 0)."""
    probs = logprobs.exp()
    return float(-(probs * logprobs.masked_fill(probs == 0, 0.0)).sum() / math.log(2))


class LMStepper:
    """Incremental next-token log-probs of one causal LM over a batch of equal-length rows.

    With `use_cache`, the model's KV cache holds every token but the last (`pending`), so each step feeds only
    new tokens; without it, every step re-encodes the whole sequence (the slow reference path).

    Args:
        model: the causal LM.
        rows: the starting token ids of each row, all of one length (e.g. `[prompt_ids]`).
        use_cache: keep the KV cache across steps.
    """

    def __init__(self, model: PreTrainedModel, rows: Sequence[Sequence[int]], use_cache: bool = True) -> None:
        self.model, self.use_cache, self.cache = model, use_cache, None
        self.seqs = torch.tensor([list(row) for row in rows], dtype=torch.long, device=model.device)  # [rows, seq]
        self.pending = self.seqs[:, -1:]  # [rows, new] tokens the cache has not seen yet
        if use_cache and self.seqs.shape[1] > 1:
            with torch.no_grad():  # only the cache is wanted: one position's logits, not the prefix's whole vocab
                self.cache = model(input_ids=self.seqs[:, :-1], use_cache=True, logits_to_keep=1).past_key_values

    @torch.no_grad()
    def logprobs(self) -> torch.Tensor:
        """[rows, vocab] float32 log-probs of the next token after each row."""
        if self.use_cache:
            out = self.model(input_ids=self.pending, past_key_values=self.cache, use_cache=True)
            self.cache, self.pending = out.past_key_values, self.pending[:, :0]
        else:
            out = self.model(input_ids=self.seqs, use_cache=False)
        return torch.log_softmax(require_finite(out.logits[:, -1].float(), self.model), dim=-1)

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
    stepper: LMStepper,
    length: int,
    eos_id: int,
    generator: torch.Generator,
    sampling: Sampling,
    warped: torch.Tensor | None = None,
) -> tuple[list[list[int]], list[float]]:
    """Samples up to `length` tokens per row; a row stops at EOS (kept), the rest are padded internally.

    Args:
        warped: when given, [rows] float32: each drawn token's log-prob in the warped distribution it was drawn
            from (`warped_logprobs`) is added to its row (a tree search's prior; beam search skips the cost).

    Returns:
        Per row, the new tokens up to and including the first EOS, and the sum of their strong log-probs.
    """
    rows = stepper.seqs.shape[0]
    done = torch.zeros(rows, dtype=torch.bool, device=stepper.seqs.device)  # [rows]
    logprob = torch.zeros(rows, dtype=torch.float32, device=stepper.seqs.device)  # [rows]
    drawn = []
    for _ in range(length):
        logprobs = stepper.logprobs()  # [rows, vocab]
        tokens = sample_token(logprobs, generator, **asdict(sampling)).masked_fill(done, eos_id)  # [rows]
        logprob += logprobs.gather(-1, tokens[:, None]).squeeze(-1).masked_fill(done, 0.0)
        if warped is not None:
            warped += warped_logprobs(logprobs, sampling).gather(-1, tokens[:, None]).squeeze(-1).masked_fill(done, 0.0)
        stepper.append(tokens)
        drawn.append(tokens)
        done |= tokens == eos_id
        if bool(done.all()):
            break
    chunks = torch.stack(drawn, dim=1).tolist() if drawn else [[] for _ in range(rows)]  # [rows, steps]
    return [row[: row.index(eos_id) + 1] if eos_id in row else row for row in chunks], logprob.tolist()


class HFSampler:
    """The `SiblingSampler` of a transformers model, reusing its KV rows across calls (see the module docstring).

    Args:
        model: the frozen strong model.
        tokenizer: its tokenizer (with a chat template).
        sampling: temperature, top-k, top-p.
        use_cache: keep the KV cache (False re-encodes every sequence at every step: the reference path).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        sampling: Sampling = DEFAULT_SAMPLING,
        use_cache: bool = True,
    ) -> None:
        self.model, self.tokenizer, self.sampling, self.use_cache = model, tokenizer, sampling, use_cache
        self.eos_id = tokenizer.eos_token_id
        self.reused = False
        """Whether the last `sample` continued rows it held (True) or encoded its prefixes afresh."""

    def begin(self, prompt_ids: list[int], seed: int) -> None:
        self.prompt_ids = list(prompt_ids)
        self.stepper = LMStepper(self.model, [self.prompt_ids], self.use_cache)  # one row: the empty response
        self.generator = torch.Generator(device=self.model.device).manual_seed(seed)

    def held_rows(self, prefixes: Sequence[list[int]]) -> list[int] | None:
        """The row holding each prefix (by content), or None when any prefix is not held."""
        rows = {tuple(row): index for index, row in enumerate(self.stepper.seqs[:, len(self.prompt_ids) :].tolist())}
        found = [rows.get(tuple(prefix)) for prefix in prefixes]
        return None if None in found else found

    def sample(self, prefixes: Sequence[list[int]], repeats: int, length: int) -> tuple[list[list[int]], list[float]]:
        rows = self.held_rows(prefixes)
        self.reused = rows is not None
        if rows is not None:
            index = torch.tensor(rows, dtype=torch.long, device=self.stepper.seqs.device)
            self.stepper.select(index.repeat_interleave(repeats))  # [len(prefixes) * repeats]
            return sample_chunk(self.stepper, length, self.eos_id, self.generator, self.sampling)
        return self.sample_afresh(prefixes, repeats, length)

    def sample_afresh(
        self, prefixes: Sequence[list[int]], repeats: int, length: int
    ) -> tuple[list[list[int]], list[float]]:
        """Encodes the prefixes anew, one stepper per prefix length (rows of a stepper share a length), and
        samples each group in order of its first prefix; the sampler then holds the last group's rows."""
        groups: dict[int, list[int]] = {}
        for index, prefix in enumerate(prefixes):
            groups.setdefault(len(prefix), []).append(index)
        chunks: list[list[int]] = [[] for _ in range(len(prefixes) * repeats)]
        logprobs = [0.0] * len(chunks)
        for members in groups.values():
            self.stepper = LMStepper(self.model, [self.prompt_ids + list(prefixes[i]) for i in members], self.use_cache)
            self.stepper.select(torch.arange(len(members), device=self.stepper.seqs.device).repeat_interleave(repeats))
            drawn, sums = sample_chunk(self.stepper, length, self.eos_id, self.generator, self.sampling)
            for position, member in enumerate(members):
                for repeat in range(repeats):
                    row = position * repeats + repeat
                    chunks[member * repeats + repeat], logprobs[member * repeats + repeat] = drawn[row], sums[row]
        return chunks, logprobs

    def sample_siblings(self, prefix: list[int], count: int, length: int) -> Siblings:
        """See `SiblingSampler`. Continues the held row of `prefix` when there is one (a tree search often expands
        a node it has just drawn), else encodes it; the sampler then holds the siblings' rows."""
        rows = self.held_rows([prefix])
        if rows is None:
            self.stepper = LMStepper(self.model, [self.prompt_ids + list(prefix)], self.use_cache)
        else:
            self.stepper.select(torch.tensor(rows, dtype=torch.long, device=self.stepper.seqs.device))
        raw = self.stepper.logprobs()  # [1, vocab]
        warped = warped_logprobs(raw, self.sampling)  # [1, vocab]
        count = min(count, int(torch.isfinite(warped).sum()))
        first = torch.multinomial(warped.exp(), count, replacement=False, generator=self.generator)[0]  # [count]
        self.stepper.select(torch.zeros(count, dtype=torch.long, device=first.device))
        self.stepper.append(first)
        warped_sums = warped[0, first].float()  # [count]
        rest, rest_sums = [[] for _ in range(count)], [0.0] * count
        ended = first == self.eos_id  # [count]
        if length > 1 and not bool(ended.all()):
            rest, rest_sums = sample_chunk(self.stepper, length - 1, self.eos_id, self.generator, self.sampling,
                                           warped_sums)  # fmt: skip
        warped_sums = warped_sums.tolist()  # a sibling ended by its first token gets nothing from `rest`
        chunks, logprobs, priors = [], [], []
        for index, token in enumerate(first.tolist()):
            done = bool(ended[index])
            chunks.append([token] if done else [token] + rest[index])
            logprobs.append(float(raw[0, token]) + (0.0 if done else rest_sums[index]))
            priors.append(float(warped[0, token]) if done else warped_sums[index])
        return Siblings(chunks, logprobs, priors, entropy_bits(warped[0]))
