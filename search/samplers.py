"""The one interface every search draws strong tokens through, and its transformers implementation.

A `Sampler` is started on a prompt with `begin(prompt_ids, seed)`; then each `sample(prefixes, repeats, length)`
draws, for every prefix (a hypothesis' response tokens so far), `repeats` continuations of at most `length`
tokens. Chunk-level beam search, best-of-N, plain sampling (`w2s.search.cbs`) and any other search that asks
for arbitrary prefixes (a tree search such as MCTS) are written once against it; `HFSampler` (here) and
`VllmSampler` (`w2s.search.vllm_sampler`) implement it.

`HFSampler` keeps the strong model's KV cache between calls: when every prefix asked for is a row it already
holds (matched by content, as a beam search asks for the survivors of the last round), it only reorders and
repeats those rows; otherwise it encodes the prefixes afresh, so a caller never has to know what it holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from w2s.sampling import sample_token


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
    stepper: LMStepper, length: int, eos_id: int, generator: torch.Generator, sampling: Sampling
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
        tokens = sample_token(logprobs, generator, **asdict(sampling)).masked_fill(done, eos_id)  # [rows]
        logprob += logprobs.gather(-1, tokens[:, None]).squeeze(-1).masked_fill(done, 0.0)
        stepper.append(tokens)
        drawn.append(tokens)
        done |= tokens == eos_id
        if bool(done.all()):
            break
    chunks = torch.stack(drawn, dim=1).tolist() if drawn else [[] for _ in range(rows)]  # [rows, steps]
    return [row[: row.index(eos_id) + 1] if eos_id in row else row for row in chunks], logprob.tolist()


class HFSampler:
    """The `Sampler` of a transformers model, reusing its KV rows across calls (see the module docstring).

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
