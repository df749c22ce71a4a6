"""What `w2s eval` writes and prints: report.json, report.md, comparison.png, reward_vs_gamma.png, a rich table.

The columns are the task's metrics (`Task.metrics`) followed by the cost of each system (`COST`), so any task's
report is laid out by the same code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from w2s.io import atomic_write_text  # noqa: E402
from w2s.task import Metric  # noqa: E402

COST = (Metric("sampled_tokens", "sampled tokens", "{:.1f}", "sampled"), Metric("seconds", "seconds", "{:.1f}", "sec"))
"""What every system's row reports besides the task's metrics: strong tokens drawn per prompt, wall time."""
SYMBOLS = {"width": "W", "num_samples": "K", "chunk_len": "L", "n": "N"}
"""How report.md names a generator's params (the papers' letters)."""


@dataclass(frozen=True)
class Layout:
    """How a report is shown: its columns (task metrics, then COST) and one sentence about the task."""

    columns: tuple[Metric, ...]
    task_summary: str = ""

    @classmethod
    def of(cls, metrics: Sequence[Metric], task_summary: str = "") -> Layout:
        return cls(tuple(metrics) + COST, task_summary)


def metric_cells(row: dict, columns: Sequence[Metric]) -> list[str]:
    """One system's metrics, formatted in column order (the name excluded)."""
    return [column.fmt.format(row[column.key]) for column in columns]


def markdown_table(systems: dict[str, dict], columns: Sequence[Metric]) -> str:
    """A markdown table with one row per system (name -> metrics as in report.json), numbers right-aligned.

    Args:
        systems: rows keyed by system name; each holds every column's key.
        columns: the metrics shown, in order (see `Layout.of`).

    Returns:
        The table, header and separator included, ending with a newline.
    """
    lines = [
        "| " + " | ".join(["system"] + [c.label for c in columns]) + " |",
        "| --- | " + " | ".join("---:" for _ in columns) + " |",
    ]
    lines += ["| " + " | ".join([name] + metric_cells(row, columns)) + " |" for name, row in systems.items()]
    return "\n".join(lines) + "\n"


def params_text(params: dict) -> str:
    """A generator's params as report.md writes them: "W=2, K=4, L=8" (a string option as written: "rank=mean")."""
    return ", ".join(
        f"{SYMBOLS.get(key, key)}={value if isinstance(value, str) else format(value, 'g')}"
        for key, value in params.items()
    )


def settings_line(report: dict, layout: Layout) -> str:
    """One sentence of the task, the sampling settings and each searching system's settings."""
    s = report["settings"]
    searches = "; ".join(
        f"{name} = {row['kind']} {params_text(row['search'])}"
        for name, row in report["systems"].items()
        if row.get("search")
    )
    return (
        f"{report['num_examples']} test prompts ({layout.task_summary or 'task ' + s['task']['_component_']}); "
        f"sampling T={s['temperature']:g}, top_k={s['top_k']}, top_p={s['top_p']:g}, at most {s['max_new_tokens']} "
        f"new tokens, seed {s['seed']}" + (f"; {searches}" if searches else "") + ". 'sampled tokens' counts the "
        "strong tokens drawn per prompt (EOS included, every candidate of a search)."
    )


def budget_line(report: dict) -> str:
    """How many strong tokens search and BoN sampled per prompt ('' unless both ran)."""
    budget = report.get("budget")
    if not budget:
        return ""
    return (
        f"Search sampled {budget['search_sampled_tokens']:.1f} strong tokens per prompt, BoN "
        f"{budget['bon_sampled_tokens']:.1f} ({budget['bon_over_search']:.2f}x)."
    )


def report_markdown(report: dict, layout: Layout) -> str:
    """report.md: the settings, the systems table, the search budget, the gamma sweep and the plots."""
    parts = ["# w2s eval", "", settings_line(report, layout), "", markdown_table(report["systems"], layout.columns)]
    if budget_line(report):
        parts += [budget_line(report), ""]
    if report["gamma_sweep"]:
        sweep = {row["name"]: row for row in report["gamma_sweep"]}
        parts += ["## WSPO gamma sweep (plain sampling)", "", markdown_table(sweep, layout.columns)]
        parts += ["![reward vs gamma](reward_vs_gamma.png)", ""] if plotted(layout.columns) else []
    parts += [f"Skipped {name}: {reason}." for name, reason in report["skipped"].items()]
    parts += ["", "![comparison](comparison.png)"] if plotted(layout.columns) else []
    parts += ["", f"Total time: {report['seconds']:.1f} s."]
    return "\n".join(parts) + "\n"


def plotted(columns: Sequence[Metric]) -> list[Metric]:
    """The metrics the plots show: those with a plot title."""
    return [column for column in columns if column.plot_title]


def bounded(values: list[float]) -> bool:
    """Whether every value lies in [0, 1] (a share or a normalised reward), so the y axis can be fixed to it."""
    return all(0.0 <= value <= 1.0 for value in values)


def plot_comparison(systems: dict[str, dict], metrics: Sequence[Metric], path: Path) -> None:
    """One bar chart per plotted metric, a bar per system."""
    names = list(systems)
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(8, 1.6 * len(names)), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        values = [systems[name][metric.key] for name in names]
        bars = ax.bar(range(len(names)), values, color=[f"C{i}" for i in range(len(names))])
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        if bounded(values):
            ax.set_ylim(0, 1.1)
        ax.set_title(metric.plot_title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gamma(sweep: list[dict], reference: dict | None, metrics: Sequence[Metric], path: Path) -> None:
    """Each plotted metric of the sweep's models against the swept loss parameter (gamma for a WSPO sweep), the
    strong base as a dashed reference."""
    parameter = sweep[0].get("parameter", "gamma")
    gammas = [row["loss"][parameter] if "loss" in row else row["gamma"] for row in sweep]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        values = [row[metric.key] for row in sweep]
        ax.plot(gammas, values, "o-", label="WSPO")
        if reference is not None:
            ax.axhline(reference[metric.key], color="gray", linestyle="--", label="strong base")
        if min(gammas) > 0 and max(gammas) / min(gammas) >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(parameter)
        if bounded(values + ([reference[metric.key]] if reference is not None else [])):
            ax.set_ylim(0, 1.05)
        ax.set_title(metric.plot_title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


REPORT_FILES = ("report.json", "report.md", "comparison.png", "reward_vs_gamma.png")
"""Every file an eval report is made of (what `w2s.runs` clears before a new report and records after it)."""


def write_report(report: dict, out_dir: Path, layout: Layout) -> None:
    """Writes report.json (systems in report order), report.md, comparison.png and (sweep) reward_vs_gamma.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out_dir / "report.md", report_markdown(report, layout))
    metrics = plotted(layout.columns)
    if report["systems"] and metrics:
        plot_comparison(report["systems"], metrics, out_dir / "comparison.png")
    if report["gamma_sweep"] and metrics:
        reference = report["systems"].get("strong_base")
        plot_gamma(report["gamma_sweep"], reference, metrics, out_dir / "reward_vs_gamma.png")
    else:
        (out_dir / "reward_vs_gamma.png").unlink(missing_ok=True)  # a stale plot of an earlier sweep


def print_table(report: dict, console: Console, layout: Layout) -> None:
    """The one-screen summary: every system, then the gamma sweep, then where the report went."""
    table = Table(title=f"w2s eval: {report['num_examples']} test prompts (T={report['settings']['temperature']:g})")
    table.add_column("system", justify="left", no_wrap=True)
    for column in layout.columns:  # short headers, so that a row fits an 80-column terminal
        table.add_column(column.short or column.label, justify="right", no_wrap=True)
    for name, row in report["systems"].items():
        table.add_row(name, *metric_cells(row, layout.columns))
    if report["gamma_sweep"]:
        table.add_section()
        for row in report["gamma_sweep"]:
            table.add_row(row["name"], *metric_cells(row, layout.columns))
    console.print(table)
    if budget_line(report):
        console.print(budget_line(report))
    for name, reason in report["skipped"].items():
        console.print(f"[yellow]skipped {name}[/yellow]: {reason}")
    out_dir, seconds = report["settings"]["out_dir"], report["seconds"]
    console.print(f"report in {out_dir} (report.json, report.md, PNGs), {seconds:.1f} s")
