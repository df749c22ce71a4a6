"""The science report: selection on validation, intervals of every number, the claims and their verdicts.

Every interval is a two-level bootstrap over seeds and prompts (`w2s.eval.stats`); every claim is a paired
difference between two systems on the same prompts and seeds, with its interval and a verdict: 'holds' (the
interval lies above -margin), 'fails' (below) or 'inconclusive'. report.json is written atomically;
report.md and science.png are made from it, and `readme_text` (used by `benchmarks/science_table.py`) too.
"""

from __future__ import annotations

from pathlib import Path
from statistics import mean

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from w2s.eval.stats import bootstrap, paired_difference, verdict  # noqa: E402
from w2s.eval.task import locate  # noqa: E402
from w2s.io import atomic_write_json, atomic_write_text  # noqa: E402

CAPABILITY = "clause_accuracy"
"""The capability score that does not move with length: selection and the 'kept' claims use it."""
METRICS = ("reward", "content", "clause_accuracy", "tokens")
SYSTEMS = (
    "weak_base", "weak_aligned", "strong_base", "wspo", "sft_ceiling", "search", "bon_wk", "bon_matched", "eft",
)  # fmt: skip
"""Test systems in report order."""


def reward_key(task: str) -> str:
    """The per-example key of a task's reward (its Task class's `reward`)."""
    from w2s.eval.science import TASKS

    return locate(TASKS[task], "science.tasks").reward


def per_seed(rows: dict, task: str, name: str, metric: str) -> list[list[float]]:
    """[seeds][prompts] values of one metric ('reward' is the task's reward) of one system, in seed order."""
    key = reward_key(task) if metric == "reward" else metric
    cells = sorted(cell for cell in rows if cell[1] == task)
    return [[example[key] for example in rows[cell][name]["per_example"]] for cell in cells]


def interval(config, rows: dict, task: str, name: str, metric: str) -> dict:
    return bootstrap(per_seed(rows, task, name, metric), config.resamples).as_dict()


def select(config, task: str, val: dict) -> dict:
    """Gamma and EFT beta for a task, from the validation runs pooled over seeds: the highest mean reward among
    the settings whose clause accuracy is within `capability_margin` of the strong base's."""
    floor = mean(v for row in per_seed(val, task, "strong_base", CAPABILITY) for v in row) - config.capability_margin
    choices = {}
    for knob, prefix, values in (("gamma", "wspo gamma=", config.gammas), ("beta", "eft beta=", config.eft_betas)):
        sweep = []
        for value in values:
            name = f"{prefix}{value:g}"
            point = {m: interval(config, val, task, name, m) for m in METRICS}
            sweep.append({"value": value, **point, "eligible": point[CAPABILITY]["mean"] >= floor})
        eligible = [p for p in sweep if p["eligible"]] or sweep
        best = max(eligible, key=lambda p: p["reward"]["mean"])
        why = (
            f"highest validation reward ({best['reward']['mean']:.3f}) among the {knob}s whose clause accuracy stays "
            f">= {floor:.3f} (strong base - {config.capability_margin:g})"
            if best["eligible"]
            else f"no {knob} kept clause accuracy >= {floor:.3f}: highest validation reward taken"
        )
        choices[knob] = {"chosen": best["value"], "why": why, "capability_floor": floor, "sweep": sweep}
    return choices


CLAIMS = (
    ("weak aligned > weak base (reward): the weak model is aligned", "weak_aligned", "weak_base", "reward", 0.0),
    ("strong + WSPO > weak aligned (reward): the strong student exceeds its weak teacher", "wspo", "weak_aligned",
     "reward", 0.0),
    ("strong + WSPO > strong base (reward)", "wspo", "strong_base", "reward", 0.0),
    ("WSPO keeps capability: clause accuracy >= strong base - margin", "wspo", "strong_base", CAPABILITY, None),
    ("WSPO keeps capability: content >= strong base - margin", "wspo", "strong_base", "content", None),
    ("WSPO reaches the SFT ceiling: reward >= SFT - margin", "wspo", "sft_ceiling", "reward", None),
    ("search > weak aligned (reward)", "search", "weak_aligned", "reward", 0.0),
    ("search > strong base (reward)", "search", "strong_base", "reward", 0.0),
    ("search keeps capability: clause accuracy >= strong base - margin", "search", "strong_base", CAPABILITY, None),
    ("search > best-of-N at matched strong tokens (reward)", "search", "bon_matched", "reward", 0.0),
    ("search > best-of-N at N = W*K (reward)", "search", "bon_wk", "reward", 0.0),
    ("WSPO > EFT (reward)", "wspo", "eft", "reward", 0.0),
)  # fmt: skip
"""(claim, system a, system b, metric, margin: None = capability_margin): 'a > b - margin' on the metric."""


def claims(config, task: str, test: dict) -> list[dict]:
    """Each claim's paired difference a - b with its interval and verdict."""
    out = []
    for text, a, b, metric, margin in CLAIMS:
        margin = config.capability_margin if margin is None else margin
        diff = paired_difference(per_seed(test, task, a, metric), per_seed(test, task, b, metric))
        out.append({"claim": text, "a": a, "b": b, "metric": metric, "margin": margin, "difference": diff.as_dict(),
                    "verdict": verdict(diff, margin)})  # fmt: skip
    return out


def system_rows(config, task: str, test: dict) -> dict:
    """Per system: every metric's interval, strong tokens sampled and weak tokens run per prompt, its params."""
    cells = sorted(cell for cell in test if cell[1] == task)
    rows = {}
    for name in SYSTEMS:
        runs = [test[cell][name] for cell in cells]
        rows[name] = {m: interval(config, test, task, name, m) for m in METRICS}
        rows[name]["strong_tokens"] = mean(run["sampled_tokens"] for run in runs)
        rows[name]["weak_tokens"] = mean(run["weak_tokens"] for run in runs)
        rows[name]["params"] = [run.get("search", {}) for run in runs]
    return rows


def write_science_report(config, val: dict, test: dict, choices: dict, caches: dict | None = None) -> dict:
    """report.json, report.md and science.png in config.out_dir; returns the report.

    Args:
        caches: per task, the totals of its cache's manifest (WSPO's weak compute, spent once, offline).
    """
    out = Path(config.out_dir)
    report = {
        "seeds": list(config.seeds),
        "world_per_seed": config.world_per_seed,
        "world_seed": config.world.seed,
        "num_test": config.num_test,
        "num_val": config.num_val,
        "capability_margin": config.capability_margin,
        "search": dict(config.search),
        "tasks": {
            task: {
                "reward": reward_key(task),
                "selection": choices[task],
                "systems": system_rows(config, task, test),
                "claims": claims(config, task, test),
                "cache": (caches or {}).get(task),
            }
            for task in config.tasks
        },
    }
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", "# w2s science report\n\n" + readme_text(report))
    plot(report, out / "science.png")
    return report


def cell(value: dict, fmt: str = "{:.3f}") -> str:
    return f"{fmt.format(value['mean'])} [{fmt.format(value['low'])}, {fmt.format(value['high'])}]"


def settings_text(params: list[dict]) -> str:
    """A system's generator settings over the seeds: 'W=2, K=4, L=8', or 'N=9, 8, 9' where seeds differ."""
    keys = {"width": "W", "num_samples": "K", "chunk_len": "L", "n": "N", "beta": "beta"}
    parts = []
    for key in [key for key in keys if params and key in params[0]]:
        values = [f"{p[key]:g}" for p in params]
        parts.append(f"{keys.get(key, key)}={values[0] if len(set(values)) == 1 else ', '.join(values)}")
    return "; ".join(parts)


def system_table(task: dict) -> list[str]:
    lines = [
        "| system | reward | content | clause accuracy | tokens | strong tokens / prompt | weak tokens / prompt "
        "| settings |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    gamma = task["selection"]["gamma"]["chosen"]
    for name in [name for name in SYSTEMS if name in task["systems"]]:  # report.json's keys are sorted
        row = task["systems"][name]
        cells = [cell(row[m]) for m in ("reward", "content", "clause_accuracy")] + [cell(row["tokens"], "{:.1f}")]
        cells += [f"{row['strong_tokens']:.1f}", f"{row['weak_tokens']:.0f}"]
        cells.append(f"gamma={gamma:g}" if name == "wspo" else settings_text(row.get("params", [])))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def sweep_table(selection: dict, knob: str) -> list[str]:
    lines = [
        f"| {knob} | val reward | val clause accuracy | val tokens | eligible | chosen |",
        "| ---: | ---: | ---: | ---: | :-: | :-: |",
    ]  # noqa: E501
    for point in selection[knob]["sweep"]:
        chosen = "**yes**" if point["value"] == selection[knob]["chosen"] else ""
        eligible = "yes" if point["eligible"] else "no"
        lines.append(f"| {point['value']:g} | {cell(point['reward'])} | {cell(point[CAPABILITY])} | "
                     f"{cell(point['tokens'], '{:.1f}')} | {eligible} | {chosen} |")  # fmt: skip
    return lines + ["", f"Chosen {knob} = {selection[knob]['chosen']:g}: {selection[knob]['why']}."]


def claims_table(claims_list: list[dict]) -> list[str]:
    lines = ["| claim | difference a - b [95% interval] | margin | verdict |", "| --- | ---: | ---: | :-: |"]
    for claim in claims_list:
        lines.append(f"| {claim['claim']} | {cell(claim['difference'])} | {claim['margin']:g} | {claim['verdict']} |")
    return lines


def readme_text(report: dict) -> str:
    """The markdown tables of a science report (what the README shows between its science-table markers)."""
    seeds, search = report["seeds"], report["search"]
    varied = (
        "each its own world, caches, WSPO runs and samples"
        if report.get("world_per_seed", True)
        else f"one world (seed {report.get('world_seed', 0)}) and its caches; each seed its own WSPO data order "
        "and samples, on the same prompts"
    )
    parts = [
        f"Seeds {', '.join(map(str, seeds))} ({varied}); "
        f"{report['num_test']} test and {report['num_val']} validation prompts per seed. Every number is a mean over "
        "seeds and prompts with its 95% bootstrap interval (seeds, then prompts within a seed, resampled). Search: "
        f"CBS W={search['width']}, K={search['num_samples']}, L={search['chunk_len']}; bon_wk: best-of-N at N = W*K; "
        "bon_matched: best-of-N at the strong tokens search sampled; weak tokens: positions each weak model ran.",
        "",
    ]
    for name, task in report["tasks"].items():
        parts += [f"### Task: {name} (reward: {task['reward']})", "", *system_table(task), ""]
        if task.get("cache"):
            parts += [
                f"WSPO's weak compute is spent once, offline: its cache ran each weak model over "
                f"{task['cache']['tokens']:,} token positions ({task['cache']['rows']:,} rows), for every WSPO run "
                "and every prompt after it; search, best-of-N and EFT run the weak pair at every prompt.",
                "",
            ]
        parts += ["WSPO gamma, selected on validation:", "", *sweep_table(task["selection"], "gamma"), ""]
        parts += ["EFT beta, selected on validation:", "", *sweep_table(task["selection"], "beta"), ""]
        parts += ["Claims (paired differences on the test prompts):", "", *claims_table(task["claims"]), ""]
    return "\n".join(parts)


def plot(report: dict, path: Path) -> None:
    """Per task: reward and clause accuracy of every system with intervals, and the validation gamma sweep."""
    tasks = report["tasks"]
    fig, axes = plt.subplots(len(tasks), 3, figsize=(15, 3.8 * len(tasks)), squeeze=False)
    for row, (name, task) in zip(axes, tasks.items()):
        systems = [system for system in SYSTEMS if system in task["systems"]]
        for ax, metric in zip(row[:2], ("reward", CAPABILITY)):
            values = [task["systems"][s][metric] for s in systems]
            err = [[v["mean"] - v["low"] for v in values], [v["high"] - v["mean"] for v in values]]
            ax.bar(range(len(systems)), [v["mean"] for v in values], yerr=err, capsize=3,
                   color=[f"C{i}" for i in range(len(systems))])  # fmt: skip
            ax.set_xticks(range(len(systems)), systems, rotation=35, ha="right", fontsize=8)
            ax.set_title(f"{name}: {metric} (test, 95% interval)")
        sweep = task["selection"]["gamma"]["sweep"]
        gammas = [p["value"] for p in sweep]
        for metric in ("reward", CAPABILITY):
            values = [p[metric] for p in sweep]
            err = [[v["mean"] - v["low"] for v in values], [v["high"] - v["mean"] for v in values]]
            row[2].errorbar(gammas, [v["mean"] for v in values], yerr=err, marker="o", capsize=3, label=metric)
        row[2].axvline(task["selection"]["gamma"]["chosen"], color="gray", linestyle="--", label="chosen")
        row[2].set_xscale("log")
        row[2].set_title(f"{name}: WSPO gamma sweep (validation)")
        row[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
