"""The tiny world as an evaluation task: its test split, scored with the length reward and the content score.

This is the one place where the world meets evaluation: it implements `w2s.eval.task.Task` (the interface
only), so `w2s eval` can be handed it from config (`task: {_component_: w2s.world.task.SummaryTask, ...}`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from w2s.errors import ConfigError
from w2s.eval.task import Example, Metric, Response, Task
from w2s.io import read_jsonl
from w2s.world.corpus import document_facts
from w2s.world.metrics import content_score, length_reward, score_summaries


class SummaryTask(Task):
    """Summarise a synthetic document: rewarded for a length in [l_min, l_max] and for stating true facts.

    Args:
        path: the world's test split (jsonl with prompt, response, facts, example_id).
        l_min: shortest summary (tokens, EOS excluded) that earns the full length reward.
        l_max: longest summary that earns the full length reward.
    """

    metrics = (
        Metric("length_reward", "length reward", "{:.3f}", "reward", "length reward"),
        Metric("content", "content", "{:.3f}", "content", "content (fact precision)"),
        Metric("mean_tokens", "mean tokens", "{:.1f}", "tokens"),
        Metric("in_window", "in window", "{:.2f}", "in win"),
    )

    def __init__(self, path: str = "runs/tiny/world/data/test.jsonl", l_min: int = 20, l_max: int = 30) -> None:
        if not 0 <= l_min <= l_max:
            raise ConfigError(f"eval.task: needs 0 <= l_min <= l_max, got l_min={l_min}, l_max={l_max}")
        self.path, self.l_min, self.l_max = Path(path), l_min, l_max

    def examples(self) -> list[Example]:
        """The test split in file order; ConfigError when the world has not been built."""
        if not self.path.exists():
            raise ConfigError(f"eval.task.path: no test data at {self.path} (run `w2s world` first)")
        return [
            Example(row["prompt"], row.get("example_id"), row.get("response"), {"facts": row["facts"]})
            for row in read_jsonl(self.path)
        ]

    def score_example(self, response: Response, example: Example) -> dict[str, float]:
        """Length reward and content score of one summary (with its length, for the report's samples)."""
        return {
            "length_reward": length_reward(len(response.token_ids), self.l_min, self.l_max),
            "content": content_score(response.text, document_facts(example.data)),
        }

    def score(self, responses: Sequence[Response], examples: Sequence[Example]) -> dict[str, float]:
        """Means of the four metrics, computed exactly as the world builder's table computes them."""
        facts = [document_facts(example.data) for example in examples]
        lengths = [len(response.token_ids) for response in responses]
        return score_summaries([r.text for r in responses], lengths, facts, self.l_min, self.l_max)

    def describe(self) -> str:
        return f"summaries of `{self.path}`, length window [{self.l_min}, {self.l_max}] tokens"
