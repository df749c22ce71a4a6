"""`python -m w2s.science.compare_runs BASE VARIANT OUT.json`: two finished `make science` runs on one world that
differ in one setting (for example the caches scored in bfloat16: `cache_dtype=bfloat16 world_dir=<BASE>/world`),
compared claim by claim.

Per task: the gamma each run chose on validation, each claim's difference and verdict in both runs, and, paired
on the same test prompts and seeds, WSPO's reward and capability in VARIANT minus BASE with a 95% interval (the
two-level bootstrap of `w2s.eval.stats`). The systems that do not read the cache (search, best-of-N, EFT) draw
the same samples in both runs, so the claims can only move through WSPO. Writes OUT.json and prints the markdown
table (docs/performance.md shows it between its `dtype-claims` markers: `benchmarks/doc_tables.py dtype-claims`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from w2s.errors import UserError, run_as_command
from w2s.eval.stats import paired_difference, verdict
from w2s.io import atomic_write_json
from w2s.science.report import TINY, cell

METRICS = ("reward", "clause_accuracy")
"""WSPO's metrics compared between the runs: the task's reward and the capability the attribute must not move."""


def load_run(folder: Path) -> dict:
    """A finished science run's report.json; refused in one line when there is none."""
    path = folder / "report.json"
    if not path.is_file():
        raise UserError(f"{path}: no science report here; finish the run first (make science)")
    report = json.loads(path.read_text())
    if report.get("layout", "tiny") != "tiny":
        raise UserError(f"{path}: a {report['layout']} report; this compares runs of make science (tiny)")
    return report


def wspo_scores(folder: Path, seeds: list[int], task: str, metric: str) -> list[list[float]]:
    """[seeds][prompts] of the WSPO test row's metric (the reward: the task's reward key)."""
    key = TINY.reward(task) if metric == "reward" else metric
    grid = []
    for seed in seeds:
        path = folder / f"seed-{seed}" / task / "test" / "wspo.row.json"
        if not path.is_file():
            raise UserError(f"{path}: missing; the run did not finish its test split")
        grid.append([example[key] for example in json.loads(path.read_text())["per_example"]])
    return grid


def compare(base: Path, variant: Path) -> dict:
    """The comparison report (see the module docstring)."""
    reports = {"base": load_run(base), "variant": load_run(variant)}
    seeds = reports["base"]["seeds"]
    if reports["variant"]["seeds"] != seeds or set(reports["variant"]["tasks"]) != set(reports["base"]["tasks"]):
        raise UserError(f"{variant}: other seeds or tasks than {base}; compare runs of one config")
    tasks = {}
    for task in reports["base"]["tasks"]:
        both = {name: report["tasks"][task] for name, report in reports.items()}
        made = {row["claim"]: row for row in both["variant"]["claims"]}  # a variant may leave a system out (mcts)
        claims = [
            {"claim": b["claim"], "base": b["difference"], "base_verdict": b["verdict"],
             "variant": made[b["claim"]]["difference"], "variant_verdict": made[b["claim"]]["verdict"]}
            for b in both["base"]["claims"] if b["claim"] in made
        ]  # fmt: skip
        wspo = {}
        for metric in METRICS:
            a, b = (wspo_scores(folder, seeds, task, metric) for folder in (variant, base))
            diff = paired_difference(a, b)
            wspo[metric] = {"difference": diff.as_dict(), "verdict_nonzero": verdict(diff, 0.0)}
        gammas = {name: t["selection"]["gamma"]["chosen"] for name, t in both.items()}
        tasks[task] = {"gamma": gammas, "claims": claims, "wspo_variant_minus_base": wspo}
    return {"base": str(base), "variant": str(variant), "seeds": seeds, "tasks": tasks}


def markdown(report: dict) -> str:
    """The tables: per task, WSPO's paired difference and every claim in both runs."""
    lines = [
        f"Base: `{report['base']}`; variant: `{report['variant']}`; seeds {', '.join(map(str, report['seeds']))}. "
        "Differences are paired on the same test prompts and seeds, with 95% bootstrap intervals.",
        "",
    ]
    for task, part in report["tasks"].items():
        gamma = part["gamma"]
        lines += [f"**Task {task}** (gamma chosen on validation: base {gamma['base']:g}, variant {gamma['variant']:g})",
                  "", "| WSPO, variant - base | difference [95% interval] |", "| --- | ---: |"]  # fmt: skip
        paired = part["wspo_variant_minus_base"]
        lines += [f"| {metric} | {cell(row['difference'])} |" for metric, row in paired.items()]
        lines += ["", "| claim | base | verdict | variant | verdict |", "| --- | ---: | :-: | ---: | :-: |"]
        for row in part["claims"]:
            same = "" if row["base_verdict"] == row["variant_verdict"] else " (changed)"
            lines.append(f"| {row['claim']} | {cell(row['base'])} | {row['base_verdict']} | {cell(row['variant'])} | "
                         f"{row['variant_verdict']}{same} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


REPORT_KEYS = {"base", "variant", "seeds", "tasks"}
"""The keys of a report this command writes: an existing OUT with other contents is not ours to replace."""


def refuse_foreign_file(out: Path) -> None:
    """Refuses, before anything is read, an OUT that exists and is not an earlier report of this command."""
    if not out.exists():
        return
    try:
        ours = out.is_file() and set(json.loads(out.read_text())) == REPORT_KEYS
    except (ValueError, TypeError, UnicodeDecodeError):
        ours = False
    if not ours:
        raise UserError(f"{out}: exists and is not a report of this command; name a new file (it is left as it is)")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv

    def command() -> int:
        if len(args) != 3:
            raise UserError("usage: python -m w2s.science.compare_runs BASE_RUN VARIANT_RUN OUT.json")
        out = Path(args[2])
        refuse_foreign_file(out)
        report = compare(Path(args[0]), Path(args[1]))
        atomic_write_json(out, report)
        print(markdown(report))
        return 0

    return run_as_command("w2s compare-runs", command)


if __name__ == "__main__":
    sys.exit(main())
