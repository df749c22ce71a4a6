"""What `w2s eval` is handed: a task owns its prompts, their references and the metrics that score a response.

Evaluation knows nothing of any particular task. It asks the task for its examples, generates one response
per prompt with every declared system, and hands the responses back to the task to score. The tiny world's
summaries (`w2s.world.task.SummaryTask`) are one task; a user's prompt set scored by a reward model is another,
and plugs in from config without touching eval:

    eval:
      task: {_component_: my_package.tasks.RewardModelTask, prompts: data/prompts.jsonl, reward_model: my/rm}

`_component_` is a registered task name (`TASKS`: `length`, `reward_model`, the tiny world's `tiny_summary` and
`tiny_tone`) or the dotted path of a `Task` subclass; the other keys are its constructor's arguments.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import mean
from typing import Any

from w2s.errors import ConfigError
from w2s.registry import COMPONENT, Registry

TASKS: Registry[type] = Registry("task", builtins=("w2s.eval.tasks", "w2s.world.task"))
"""Task classes by name; the built-in ones register themselves where they are defined (imported on first read)."""


@dataclass(frozen=True)
class Metric:
    """One number a task reports per system, and how the report shows it."""

    key: str
    """Key in report.json rows (e.g. "length_reward")."""
    label: str
    """Column header of report.md."""
    fmt: str = "{:.3f}"
    """How a value is printed."""
    short: str | None = None
    """Narrow header for the terminal table (the label when None)."""
    plot_title: str | None = None
    """Title of this metric's panel in comparison.png and reward_vs_gamma.png; None leaves it out of the plots."""


@dataclass(frozen=True)
class Example:
    """One test prompt, with what a task needs to score a response to it."""

    prompt: str | list[dict]
    """The user message, or chat messages ending before the response."""
    example_id: str | None = None
    """Stable id, shown beside sample outputs."""
    reference: str | None = None
    """A reference response, when the task has one (shown in the report, never given to a system)."""
    data: Mapping[str, Any] = field(default_factory=dict)
    """Whatever else the task's metrics read (the tiny world: the document's facts)."""


@dataclass(frozen=True)
class Response:
    """One system's response to one example."""

    text: str
    """Decoded without special tokens."""
    token_ids: list[int]
    """The system's tokens, cut at (and excluding) EOS."""


class Task(ABC):
    """A set of examples and the metrics of a response to each (nanochat's tasks, reduced to evaluation)."""

    metrics: tuple[Metric, ...] = ()
    """What `score` returns, in report column order."""

    @abstractmethod
    def examples(self) -> list[Example]:
        """Every example of the task, in a fixed order (eval takes the first `num_examples`)."""

    @abstractmethod
    def score_example(self, response: Response, example: Example) -> dict[str, float]:
        """The metrics of one response, shown beside the sample outputs of report.json; unless `score` is
        overridden, they must include every key of `metrics` (the default `score` averages them)."""

    def score_examples(self, responses: Sequence[Response], examples: Sequence[Example]) -> list[dict[str, float]]:
        """`score_example` of every pair; override to score in batches (a reward model does)."""
        return [self.score_example(response, example) for response, example in zip(responses, examples)]

    def score(
        self,
        responses: Sequence[Response],
        examples: Sequence[Example],
        per_example: Sequence[dict[str, float]] | None = None,
    ) -> dict[str, float]:
        """Each metric's mean over the pairs, from `per_example` (what `score_examples` gave) when the caller
        already has it, so nothing is scored twice; override when a metric is not a mean."""
        rows = per_example if per_example is not None else self.score_examples(responses, examples)
        return {metric.key: mean(row[metric.key] for row in rows) for metric in self.metrics}

    def describe(self) -> str:
        """One sentence for report.md saying what the task is and how it scores (class name by default)."""
        return f"task {type(self).__name__}"


def load_task(spec: Mapping[str, Any], key: str = "eval.task") -> Task:
    """Builds the task a config mapping declares: `_component_` names the class, the other keys are its arguments.

    Raises:
        ConfigError: naming `key`, for a missing or unimportable component, arguments its constructor refuses,
            or a class that is not a `Task`.
    """
    if not isinstance(spec.get(COMPONENT), str):
        raise ConfigError(f"{key}: needs {COMPONENT}, a task's registered name or the dotted path of a Task class")
    cls = TASKS.get(spec[COMPONENT], f"{key}.{COMPONENT}")
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"{key}.{COMPONENT}: {spec[COMPONENT]} is not a subclass of w2s.task.Task")
    kwargs = {name: value for name, value in spec.items() if name != COMPONENT}
    try:
        return cls(**kwargs)
    except TypeError as err:  # an unknown or missing argument
        raise ConfigError(f"{key}: {spec[COMPONENT]} refused its arguments {sorted(kwargs)}: {err}") from err
