"""What `w2s eval` writes and prints: report.json, report.md, comparison.png, reward_vs_gamma.png, a rich table."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from w2s.io import atomic_write_text  # noqa: E402

COLUMNS = ("system", "length reward", "content", "mean tokens", "in window", "sampled tokens", "seconds")
SHORT = ("system", "reward", "content", "tokens", "in win", "sampled", "sec")
"""Rich table headers: short enough that a row fits an 80-column terminal."""
METRICS = (("length_reward", "{:.3f}"), ("content", "{:.3f}"), ("mean_tokens", "{:.1f}"), ("in_window", "{:.2f}"),
           ("sampled_tokens", "{:.1f}"), ("seconds", "{:.1f}"))


def metric_cells(row: dict) -> list[str]:
    """One system's metrics, formatted in COLUMNS order (the name excluded)."""
    return [fmt.format(row[key]) for key, fmt in METRICS]


def markdown_table(systems: dict[str, dict]) -> str:
    """A markdown table with one row per system (name -> metrics as in report.json), numbers right-aligned.

    Args:
        systems: rows keyed by system name; each holds length_reward, content, mean_tokens, in_window,
            sampled_tokens and seconds.

    Returns:
        The table, header and separator included, ending with a newline.
    """
    lines = ["| " + " | ".join(COLUMNS) + " |", "| --- | " + " | ".join("---:" for _ in COLUMNS[1:]) + " |"]
    lines += ["| " + " | ".join([name] + metric_cells(row)) + " |" for name, row in systems.items()]
    return "\n".join(lines) + "\n"


def settings_line(report: dict) -> str:
    """One sentence of the sampling and search settings behind the numbers."""
    s = report["settings"]
    return (
        f"{report['num_examples']} test prompts of `{s['world_dir']}`; sampling T={s['temperature']:g}, "
        f"top_k={s['top_k']}, top_p={s['top_p']:g}, at most {s['max_new_tokens']} new tokens, seed {s['seed']}; "
        f"search W={s['width']}, K={s['num_samples']}, L={s['chunk_len']}; BoN N={s['bon_n']}; "
        f"length window [{s['l_min']}, {s['l_max']}] tokens. 'sampled tokens' counts the strong tokens drawn per "
        "prompt (EOS included, every candidate of a search)."
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


def report_markdown(report: dict) -> str:
    """report.md: the settings, the systems table, the search budget, the gamma sweep and the plots."""
    parts = ["# w2s eval", "", settings_line(report), "", markdown_table(report["systems"])]
    if budget_line(report):
        parts += [budget_line(report), ""]
    if report["gamma_sweep"]:
        sweep = {row["name"]: row for row in report["gamma_sweep"]}
        parts += ["## WSPO gamma sweep (plain sampling)", "", markdown_table(sweep)]
        parts += ["![reward vs gamma](reward_vs_gamma.png)", ""]
    parts += [f"Skipped {name}: {reason}." for name, reason in report["skipped"].items()]
    parts += ["", "![comparison](comparison.png)", "", f"Total time: {report['seconds']:.1f} s."]
    return "\n".join(parts) + "\n"


def plot_comparison(systems: dict[str, dict], path: Path) -> None:
    """Bar charts of length reward and content per system."""
    names = list(systems)
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(names)), 4.2))
    for ax, (key, title) in zip(axes, (("length_reward", "length reward"), ("content", "content (fact precision)"))):
        values = [systems[name][key] for name in names]
        bars = ax.bar(range(len(names)), values, color=[f"C{i}" for i in range(len(names))])
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.1)
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gamma(sweep: list[dict], reference: dict | None, path: Path) -> None:
    """Length reward and content of the WSPO models against gamma, the strong base as a dashed reference."""
    gammas = [row["gamma"] for row in sweep]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, (key, title) in zip(axes, (("length_reward", "length reward"), ("content", "content (fact precision)"))):
        ax.plot(gammas, [row[key] for row in sweep], "o-", label="WSPO")
        if reference is not None:
            ax.axhline(reference[key], color="gray", linestyle="--", label="strong base")
        if min(gammas) > 0 and max(gammas) / min(gammas) >= 10:
            ax.set_xscale("log")
        ax.set_xlabel("gamma")
        ax.set_ylim(0, 1.05)
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict, out_dir: Path) -> None:
    """Writes report.json (systems in report order), report.md, comparison.png and (sweep) reward_vs_gamma.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out_dir / "report.md", report_markdown(report))
    if report["systems"]:
        plot_comparison(report["systems"], out_dir / "comparison.png")
    if report["gamma_sweep"]:
        plot_gamma(report["gamma_sweep"], report["systems"].get("strong_base"), out_dir / "reward_vs_gamma.png")
    else:
        (out_dir / "reward_vs_gamma.png").unlink(missing_ok=True)  # a stale plot of an earlier sweep


def print_table(report: dict, console: Console) -> None:
    """The one-screen summary: every system, then the gamma sweep, then where the report went."""
    table = Table(title=f"w2s eval: {report['num_examples']} test prompts (T={report['settings']['temperature']:g})")
    for column in SHORT:
        table.add_column(column, justify="left" if column == "system" else "right", no_wrap=True)
    for name, row in report["systems"].items():
        table.add_row(name, *metric_cells(row))
    if report["gamma_sweep"]:
        table.add_section()
        for row in report["gamma_sweep"]:
            table.add_row(row["name"], *metric_cells(row))
    console.print(table)
    if budget_line(report):
        console.print(budget_line(report))
    for name, reason in report["skipped"].items():
        console.print(f"[yellow]skipped {name}[/yellow]: {reason}")
    out_dir, seconds = report["settings"]["out_dir"], report["seconds"]
    console.print(f"report in {out_dir} (report.json, report.md, PNGs), {seconds:.1f} s")
