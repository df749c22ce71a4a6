"""The tiny world's two evaluation tasks on one corpus: length (WSPO's XSUM experiment) and tone (the W2S search
paper's controlled-sentiment experiment), each scored with its reward and the two capability scores.

This is the one place where the world meets evaluation: both implement `w2s.task.Task` (the interface
only), so `w2s eval` can be handed either from config (`task: {_component_: w2s.world.task.ToneTask, ...}`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from w2s.data import decode_utf8, parse_json_lines
from w2s.errors import ConfigError, DataError
from w2s.task import TASKS, Example, Metric, Response, Task
from w2s.world.corpus import document_facts
from w2s.world.metrics import example_scores, mean_scores

CAPABILITY = (
    Metric("content", "content", "{:.3f}", "content", "content (fact precision)"),
    Metric("clause_accuracy", "clause accuracy", "{:.3f}", "clauses", "clause accuracy"),
)
"""What every world task reports as capability: fact precision with partial credit, and the share of clauses
that state a true fact as a whole (the one that does not move with length)."""


@TASKS.register("tiny_summary")
class SummaryTask(Task):
    """Summarise a synthetic document: rewarded for a length in [l_min, l_max]; capability is stating true facts.

    Args:
        path: a split of the world (jsonl with prompt, response, facts, example_id): test, or val for selection.
        l_min: shortest summary (tokens, EOS excluded) that earns the full length reward.
        l_max: longest summary that earns the full length reward.
    """

    reward = "length_reward"
    """The key of the task's reward among `example_scores`."""
    metrics = (
        Metric("length_reward", "length reward", "{:.3f}", "reward", "length reward"),
        CAPABILITY[0],
        Metric("mean_tokens", "mean tokens", "{:.1f}", "tokens"),
        Metric("in_window", "in window", "{:.2f}", "in win"),
    )
    """The columns of `w2s eval`'s report (clause accuracy and the tone reward are in every row and every
    per-example score too)."""

    def __init__(self, path: str = "runs/tiny/world/data/test.jsonl", l_min: int = 20, l_max: int = 30) -> None:
        if not 0 <= l_min <= l_max:
            raise ConfigError(f"eval.task: needs 0 <= l_min <= l_max, got l_min={l_min}, l_max={l_max}")
        self.path, self.l_min, self.l_max = Path(path), l_min, l_max

    def examples(self) -> list[Example]:
        """The split in file order; ConfigError when the world has not been built."""
        if not self.path.exists():
            raise ConfigError(f"eval.task.path: no data at {self.path} (run `w2s world` first)")
        rows = parse_json_lines(self.path, decode_utf8(self.path, self.path.read_bytes()))
        for number, row in enumerate(rows, 1):
            if not isinstance(row.get("prompt"), str) or not isinstance(row.get("facts"), list):
                raise DataError(
                    f"{self.path}: line {number}: a world row needs a text 'prompt' and a list of 'facts' (this task "
                    "scores the tiny world's splits; for your own prompts use w2s.eval.tasks.LengthTask)"
                )
        return [
            Example(row["prompt"], row.get("example_id"), row.get("response"), {"facts": row["facts"]}) for row in rows
        ]

    def score_example(self, response: Response, example: Example) -> dict[str, float]:
        """Every world metric of one summary: both rewards, both capability scores, its length."""
        facts = document_facts(example.data)
        return example_scores(response.text, len(response.token_ids), facts, self.l_min, self.l_max)

    def score(
        self,
        responses: Sequence[Response],
        examples: Sequence[Example],
        per_example: Sequence[dict[str, float]] | None = None,
    ) -> dict[str, float]:
        """Means of every world metric, computed exactly as the world builder's table computes them."""
        return mean_scores(list(per_example if per_example is not None else self.score_examples(responses, examples)))

    def describe(self) -> str:
        return f"summaries of `{self.path}`, length window [{self.l_min}, {self.l_max}] tokens"


@TASKS.register("tiny_tone")
class ToneTask(SummaryTask):
    """The same summaries, rewarded for a positive closing remark (the share of its tone words that are
    positive); capability is stating true facts, as in the length task."""

    reward = "tone_reward"
    metrics = (
        Metric("tone_reward", "tone reward", "{:.3f}", "reward", "tone reward"),
        *CAPABILITY,
        Metric("mean_tokens", "mean tokens", "{:.1f}", "tokens"),
    )

    def describe(self) -> str:
        return f"summaries of `{self.path}`, rewarded for a positive tone"


TINY_TASKS = {"length": "w2s.world.task.SummaryTask", "tone": "w2s.world.task.ToneTask"}
"""The tiny world's tasks by the name `make science` gives them (their weak aligned models and SFT ceilings:
`w2s.world.build.TASK_MODELS`)."""
