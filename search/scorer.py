"""The weak pair as a scorer of partial responses: the guide of chunk-level beam search and best-of-N.

Scoring works on decoded TEXT, which the weak tokenizer re-tokenises, so the strong model may use a different
tokenizer (or be a black box). The per-token log-probs come from `w2s.logprobs`, the one copy of that
computation shared with the cache and the trainer.

By default scoring is incremental (`w2s.search.weak_state`): each scored partial response keeps both weak
models' keys and values, and a longer response is run only over the weak ids after the longest prefix it shares
with one scored before, so the weak compute grows linearly with the response length, not with its square.
`incremental=False` rescores every response from its first token (the reference, and what Zhou et al.'s code does).
"""

from __future__ import annotations

import math
import warnings

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from w2s.logprobs import pad_right, target_logprobs, token_batches
from w2s.models import ModelError
from w2s.sampling import encode_prompt
from w2s.search.weak_state import NotIncremental, StateStore, WeakState, extend, root_state
from w2s.tokens import encode_text

AUTO_BATCH_TOKENS = 8192
"""The weak scorer's token budget per forward pass, on every device. Unlike the cache's rows, the rows of one call
are one prompt's candidates, of (nearly) equal length, so a large batch adds no padding: on a CPU, 16 responses
of 64 to 512 tokens on SmolLM2-135M ran within 0.97-1.08x of one batch of all of them at budgets of 1024 to 8192
(`benchmarks/weak_batches.py`, docs/performance.md), and the cache's CPU value (1024) was no faster (0.92-1.02x
over two runs). The budget bounds memory as N x the response length grows."""


class WeakScorer:
    """Scores responses with a weak tuned/untuned pair: sum of log p_tuned - log p_untuned over response tokens.

    Args:
        tuned: the aligned weak model.
        untuned: the weak model before alignment.
        tokenizer: the weak tokenizer, with a chat template; may differ from the strong tokenizer.
        batch_size: at most this many responses per forward pass.
        batch_tokens: and at most this many padded tokens (rows x the longest row's new tokens) per forward
            pass; auto: `AUTO_BATCH_TOKENS` on every device.
        incremental: keep each partial response's weak state and run only new ids (False: rescore from the start).
        max_states: partial responses whose states are kept per prompt (least recently used dropped first).
    """

    def __init__(
        self,
        tuned: PreTrainedModel,
        untuned: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int = 32,
        batch_tokens: int | str = "auto",
        incremental: bool = True,
        max_states: int = 256,
    ) -> None:
        self.tuned, self.untuned = tuned.eval(), untuned.eval()
        self.tokenizer, self.batch_size, self.incremental = tokenizer, batch_size, incremental
        self.batch_tokens = AUTO_BATCH_TOKENS if batch_tokens == "auto" else int(batch_tokens)
        self.store = StateStore(max_states)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        self.tokens_scored = 0
        """Weak response tokens scored so far (EOS included), each by both models: the guide's compute."""
        self.tokens_forwarded = 0
        """Weak positions run through each model so far, prompts included (padding excluded): the guide's actual
        compute. Equal to the tokens scored plus the prompts when rescoring from the start; far fewer when
        incremental."""

    @torch.no_grad()
    def score(self, prompt: str | list[dict], responses: list[str], finished: list[bool]) -> list[float]:
        """Weak log-likelihood ratio of each response to `prompt`.

        Args:
            prompt: the user message (the weak chat template is applied here).
            responses: response texts, e.g. decoded strong tokens (tokenised here as plain text: `w2s.tokens`).
            finished: per response, whether it ended; EOS is appended (and scored) only then.

        Returns:
            Per response, the sum over its weak tokens of log p_tuned - log p_untuned (0.0 for an empty,
            unfinished response).
        """
        if len(responses) != len(finished):
            raise ValueError(f"{len(responses)} responses but {len(finished)} finished flags")
        prompt_ids = encode_prompt(self.tokenizer, prompt)
        eos = [self.tokenizer.eos_token_id]
        encoded = [
            prompt_ids + encode_text(self.tokenizer, text) + (eos if done else [])
            for text, done in zip(responses, finished)
        ]
        self.tokens_scored += sum(len(ids) - len(prompt_ids) for ids in encoded)
        return self._checked(self._scores(prompt_ids, encoded, finished))

    def _scores(self, prompt_ids: list[int], encoded: list[list[int]], finished: list[bool]) -> list[float]:
        if self.incremental:
            try:
                return self._score_incremental(prompt_ids, encoded, finished)
            except NotIncremental as err:
                warnings.warn(f"weak scoring rescores from the start: this weak model's cache is a {err}", stacklevel=2)
                self.incremental = False
        self.tokens_forwarded += sum(len(ids) for ids in encoded)
        scores: list[float] = [0.0] * len(encoded)
        for batch in self._batches([len(ids) for ids in encoded]):
            for row, score in zip(batch, self._score_batch([encoded[r] for r in batch], len(prompt_ids))):
                scores[row] = score
        return scores

    def _checked(self, scores: list[float]) -> list[float]:
        """`scores`, refused when one is not finite (NaN weights, a float16 overflow): a search that ranks NaNs
        picks at random and would publish them."""
        bad = [score for score in scores if not math.isfinite(score)]
        if bad:
            pair = {"weak_aligned": self.tuned, "weak_base": self.untuned}
            names = ", ".join(f"{role} at {model.name_or_path}" for role, model in pair.items())
            raise ModelError(
                f"the weak pair ({names}) gave {len(bad)} of {len(scores)} responses a non-finite score ({bad[0]}): "
                "check the models' weights (in float16 or bfloat16, try float32)"
            )
        return scores

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Indices into `lengths` in batches of at most `batch_size` rows and `batch_tokens` padded tokens."""
        return token_batches(lengths, self.batch_tokens, self.batch_size)

    def _score_batch(self, encoded: list[list[int]], prompt_len: int) -> list[float]:
        """Right-padded batch of prompt + response ids -> summed log-ratio over the response tokens."""
        input_ids, mask = pad_right(encoded, self.pad_id)  # [batch, seq] each
        scored = mask.bool()  # [batch, seq] response tokens only
        scored[:, :prompt_len] = False
        targets = scored[:, 1:]  # [batch, seq-1]: only these reach the output layer; the rest come back 0
        tuned, untuned = (
            target_logprobs(model, input_ids.to(model.device), mask.to(model.device), targets.to(model.device))
            for model in (self.tuned, self.untuned)
        )
        ratio = tuned - untuned.to(tuned.device)  # [batch, seq-1]
        return ratio.masked_fill(~targets.to(tuned.device), 0.0).sum(dim=1).tolist()

    def _score_incremental(self, prompt_ids: list[int], encoded: list[list[int]], finished: list[bool]) -> list[float]:
        """Scores from the stored states: rows grouped by the state they extend and the prefix they share with it."""
        models = [self.tuned, self.untuned]
        if self.store.prompt_ids != prompt_ids:
            self.store.reset(prompt_ids, root_state(models, prompt_ids, self.pad_id))
            self.tokens_forwarded += len(prompt_ids) - 1
        scores: list[float] = [0.0] * len(encoded)
        groups: dict[tuple[int, int], tuple[WeakState, list[int]]] = {}
        for row, ids in enumerate(encoded):
            state, shared = self.store.match(ids)
            if shared == len(ids):  # scored before (or a prefix of a scored sequence): nothing to run
                scores[row] = state.sums[shared]
            else:
                groups.setdefault((id(state), shared), (state, []))[1].append(row)
        for (_, shared), (state, rows) in groups.items():
            for part in self._batches([len(encoded[r]) - shared for r in rows]):
                batch = [rows[i] for i in part]
                batch_scores, states = extend(models, state, shared, [encoded[r] for r in batch], self.pad_id)
                self.tokens_forwarded += sum(len(encoded[r]) - shared + 1 for r in batch)
                for row, score, new_state in zip(batch, batch_scores, states):
                    scores[row] = score
                    if not finished[row]:  # a finished response is never extended: its EOS term stays out
                        self.store.add(new_state)
        return scores
