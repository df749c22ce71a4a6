"""Tasks on a user's own prompt set, for `w2s eval`: the WSPO paper's length reward (XSUM), and a Hugging Face
reward model (sequence classification) scoring prompt + response.

    eval:
      task: {_component_: w2s.eval.tasks.LengthTask, prompts: data/xsum-test.jsonl, l_min: 20, l_max: 30}
      task: {_component_: w2s.eval.tasks.RewardModelTask, reward_model: OpenAssistant/reward-model-deberta-v3-large-v2,
             prompts: {path: tatsu-lab/alpaca_eval, split: eval, prompt_field: instruction}}

Both read their prompts through `w2s.eval.prompts`, the reader `w2s generate` uses, so the same file feeds both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from w2s.device import loaded_batch_tokens
from w2s.errors import ConfigError
from w2s.eval.prompts import load_prompts
from w2s.eval.responses import instruction_of
from w2s.logprobs import token_batches
from w2s.models import ModelError, load_sequence_classifier, load_tokenizer
from w2s.rewards import length_reward
from w2s.source import as_source, moved_keys
from w2s.task import TASKS, Example, Metric, Response, Task
from w2s.tokens import encode_rendered, encode_text, render_messages

MEAN_TOKENS = Metric("mean_tokens", "mean tokens", "{:.1f}", "tokens")


class PromptTask(Task):
    """A task whose examples are a prompt set (a file or hub dataset), read as `w2s generate` reads it.

    Args:
        prompts: the prompt set, as `generate.prompts` takes it (`w2s.source.DataSource`): a path (a local
            jsonl/json/parquet/arrow file or folder, or a hub dataset name), or a mapping {path, split,
            prompt_field, messages_field, id_field, reference_field}.
    """

    def __init__(self, prompts: str | dict, **flat: object) -> None:
        if flat:  # the source's keys beside `prompts`, as configs wrote them before the shared source section
            moved = moved_keys("prompts")
            went = [f"eval.task.{key} moved to eval.task.{moved[key]}" for key in flat if key in moved]
            raise ConfigError("; ".join(went) or f"eval.task: unknown argument(s) {sorted(flat)}")
        self.source = as_source(prompts, "eval.task.prompts")
        self.prompts_fingerprint: str | None = None
        """The prompt set's fingerprint (`w2s.eval.prompts.load_prompts`), once `examples()` has read it: recorded
        responses are scored only when the run.json beside them records the same one."""

    def examples(self) -> list[Example]:
        examples, self.prompts_fingerprint = load_prompts(self.source)
        return examples


@TASKS.register("length")
class LengthTask(PromptTask):
    """The WSPO paper's summarisation reward: 1 inside [l_min, l_max] tokens (or words), falling linearly to 0
    `tolerance` units outside.

    Args:
        l_min, l_max: the window of full reward (tokens, EOS excluded, or words).
        tolerance: units outside the window at which the reward reaches 0.
        tokenizer: count tokens with this tokenizer (e.g. the paper's Qwen2) for every system; empty counts each
            system's own tokens.
        unit: "tokens", or "words" (whitespace-separated words of the text: the same measure for models with
            different tokenizers, as when a SmolLM2 pair steers Gemma).
        (the other arguments: see `PromptTask`)
    """

    metrics = (
        Metric("length_reward", "length reward", "{:.3f}", "reward", "length reward"),
        MEAN_TOKENS,
        Metric("words", "mean words", "{:.1f}", "words"),
        Metric("in_window", "in window", "{:.2f}", "in win"),
    )

    def __init__(
        self,
        prompts: str | dict,
        l_min: int = 20,
        l_max: int = 30,
        tolerance: int = 10,
        tokenizer: str = "",
        unit: str = "tokens",
        **flat,
    ) -> None:
        super().__init__(prompts, **flat)
        if not 0 <= l_min <= l_max or tolerance < 1:
            raise ConfigError(
                f"eval.task: needs 0 <= l_min <= l_max and tolerance >= 1, got {l_min}, {l_max}, {tolerance}"
            )
        if unit not in ("tokens", "words"):
            raise ConfigError(f"eval.task.unit: must be tokens or words, got {unit!r}")
        self.l_min, self.l_max, self.tolerance, self.unit = l_min, l_max, tolerance, unit
        self.tokenizer = load_tokenizer("length task", tokenizer) if tokenizer else None

    def length(self, response: Response) -> int:
        if self.tokenizer is None:
            return len(response.token_ids)
        return len(encode_text(self.tokenizer, response.text))  # the text's tokens, as text (`w2s.tokens`)

    def score_example(self, response: Response, example: Example) -> dict[str, float]:
        tokens, words = self.length(response), len(response.text.split())
        size = words if self.unit == "words" else tokens
        return {
            "length_reward": length_reward(size, self.l_min, self.l_max, self.tolerance),
            "mean_tokens": float(tokens),
            "words": float(words),
            "in_window": float(self.l_min <= size <= self.l_max),
        }

    def describe(self) -> str:
        counted = "each system's own tokens" if self.tokenizer is None else f"{self.tokenizer.name_or_path} tokens"
        counted = "words" if self.unit == "words" else counted
        return f"length reward on `{self.source.path}`, window [{self.l_min}, {self.l_max}] {counted}"


@TASKS.register("reward_model")
class RewardModelTask(PromptTask):
    """A reward model (`AutoModelForSequenceClassification` with one output) scores prompt + response; the
    reward model's chat template renders them when it has one, else "prompt\\n\\nresponse".

    Args:
        reward_model: a folder or hub id.
        batch_size: at most this many responses per forward pass (1 when the reward model's tokenizer has no
            padding token).
        batch_tokens: and at most this many padded tokens per forward pass; auto: the cache scorer's rule for the
            reward model's device and size (`w2s.device`).
        max_len: tokens kept of each prompt + response (cut from the left, so the response is kept).
        (the other arguments: see `PromptTask`)
    """

    metrics = (Metric("reward", "reward", "{:.3f}", "reward", "reward model score"), MEAN_TOKENS)

    def __init__(
        self,
        prompts: str | dict,
        reward_model: str,
        batch_size: int = 8,
        max_len: int = 2048,
        batch_tokens: int | str = "auto",
        **flat,
    ) -> None:
        super().__init__(prompts, **flat)
        if batch_size < 1 or max_len < 2:
            raise ConfigError(f"eval.task: needs batch_size >= 1 and max_len >= 2, got {batch_size}, {max_len}")
        if batch_tokens != "auto" and (type(batch_tokens) is not int or batch_tokens < 1):
            raise ConfigError(f"eval.task: batch_tokens must be auto or an integer >= 1, got {batch_tokens!r}")
        self.path, self.batch_size, self.max_len, self.batch_tokens = reward_model, batch_size, max_len, batch_tokens
        self.model, self.tokenizer = None, None  # loaded at the first score, after every system has generated

    def load(self) -> None:
        if self.model is not None:
            return
        self.tokenizer = load_tokenizer("reward", self.path)
        self.model = load_sequence_classifier("reward", self.path)
        if self.model.config.num_labels != 1:
            raise ModelError(
                f"the reward model at {self.path} has {self.model.config.num_labels} outputs; "
                "RewardModelTask needs a single-score head (num_labels 1)"
            )
        if self.tokenizer.pad_token_id is None:
            self.batch_size = 1  # no padding token: one sequence at a time, so nothing is ever padded
        self.batch_tokens = loaded_batch_tokens(self.batch_tokens, [self.model])
        self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def encode(self, prompt: str | list[dict], response: str) -> list[int]:
        """Token ids of prompt + response as the reward model reads them, its last `max_len` kept (the response is
        kept). The prompt's and the response's text stay text: a spelled special token is not one (`w2s.tokens`)."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if getattr(self.tokenizer, "chat_template", None):
            conversation = messages + [{"role": "assistant", "content": response}]
            ids = encode_rendered(self.tokenizer, *render_messages(self.tokenizer, conversation, False))
        else:
            ids = encode_text(self.tokenizer, f"{instruction_of(prompt)}\n\n{response}")
        return ids[-self.max_len :]

    @torch.no_grad()
    def rewards(self, responses: Sequence[Response], examples: Sequence[Example]) -> list[float]:
        self.load()
        rows = [self.encode(example.prompt, response.text) for response, example in zip(responses, examples)]
        scores: list[float] = [0.0] * len(rows)
        for part in token_batches([len(row) for row in rows], self.batch_tokens, self.batch_size):
            chunk = [rows[i] for i in part]  # one row when there is no padding token: nothing to pad
            batch = self.tokenizer.pad({"input_ids": chunk}, padding=len(chunk) > 1, return_tensors="pt")
            for i, score in zip(part, self.model(**batch.to(self.model.device)).logits[:, 0].float().tolist()):
                scores[i] = score
        return scores

    def score_examples(self, responses: Sequence[Response], examples: Sequence[Example]) -> list[dict[str, float]]:
        """Every response's reward, in batches of at most `batch_size` rows and `batch_tokens` padded tokens."""
        rewards = self.rewards(responses, examples)
        return [{"reward": r, "mean_tokens": float(len(response.token_ids))} for r, response in zip(rewards, responses)]

    def score_example(self, response: Response, example: Example) -> dict[str, float]:
        return self.score_examples([response], [example])[0]

    def describe(self) -> str:
        return f"reward model `{self.path}` on `{self.source.path}`"
