"""The science report: selection on validation, intervals of every number, the claims and their verdicts.

Every interval is a two-level bootstrap over seeds and prompts (`w2s.eval.stats`); every claim is a paired
difference between two systems on the same prompts and seeds, with its interval and a verdict: 'holds' (the
interval lies above -margin), 'fails' (below) or 'inconclusive'. report.json is written atomically;
report.md and science.png are made from it, and `readme_text` (used by `benchmarks/science_table.py`) too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from w2s.eval.stats import bootstrap, paired_difference, verdict  # noqa: E402
from w2s.io import atomic_write_json, atomic_write_text  # noqa: E402
from w2s.task import TASKS  # noqa: E402
from w2s.world.task import TINY_TASKS  # noqa: E402

TREE_CLAIMS = (
    ("mcts > search (CBS) at matched strong tokens (reward)", "mcts", "search", "reward", 0.0),
    ("mcts > best-of-N at matched strong tokens (reward)", "mcts", "bon_matched", "reward", 0.0),
)
"""The tree search against CBS and best-of-N, each at (at most) the strong tokens CBS sampled per prompt."""

CLAIMS = (
    ("weak aligned > weak base (reward): the weak model is aligned", "weak_aligned", "weak_base", "reward", 0.0),
    ("strong + WSPO > weak aligned (reward): the strong student exceeds its weak teacher", "wspo", "weak_aligned",
     "reward", 0.0),
    ("strong + WSPO > strong base (reward)", "wspo", "strong_base", "reward", 0.0),
    ("WSPO keeps capability: clause accuracy >= strong base - margin", "wspo", "strong_base", "clause_accuracy",
     None),
    ("WSPO keeps capability: content >= strong base - margin", "wspo", "strong_base", "content", None),
    ("WSPO reaches the SFT ceiling: reward >= SFT - margin", "wspo", "sft_ceiling", "reward", None),
    ("search > weak aligned (reward)", "search", "weak_aligned", "reward", 0.0),
    ("search > strong base (reward)", "search", "strong_base", "reward", 0.0),
    ("search keeps capability: clause accuracy >= strong base - margin", "search", "strong_base", "clause_accuracy",
     None),
    ("search > best-of-N at matched strong tokens (reward)", "search", "bon_matched", "reward", 0.0),
    ("search > best-of-N at N = W*K (reward)", "search", "bon_wk", "reward", 0.0),
    ("WSPO > EFT (reward)", "wspo", "eft", "reward", 0.0),
    *TREE_CLAIMS,
)  # fmt: skip
"""(claim, system a, system b, metric, margin: None = capability_margin): 'a > b - margin' on the metric. A claim
whose systems a run left out (mcts, with `mcts: {}`) is not made."""


@dataclass(frozen=True)
class Layout:
    """What one science report compares: its systems, metrics, capability score, claims and selected knobs."""

    name: str
    """Recorded in report.json ("layout"), so that its tables are drawn again from the file alone."""
    systems: tuple[str, ...]
    """Test systems, in report order."""
    metrics: dict[str, str]
    """Per-example key -> column title; 'reward' is the task's reward (`reward`)."""
    capability: str
    """The capability score the attribute does not move: selection and the 'kept' claims use it."""
    claims: tuple
    """(claim, a, b, metric, margin) rows, as `CLAIMS`."""
    knobs: tuple[tuple[str, str, str], ...]
    """(knob, validation system prefix, config field of its values) chosen on validation."""
    reward: Callable[[str], str]
    """Task name -> the per-example key of its reward."""
    png: str
    """The figure's file name in out_dir."""


TINY = Layout(
    name="tiny",
    systems=("weak_base", "weak_aligned", "strong_base", "wspo", "sft_ceiling", "search", "bon_wk", "bon_matched",
             "mcts", "eft"),
    metrics={"reward": "reward", "content": "content", "clause_accuracy": "clause accuracy", "tokens": "tokens"},
    capability="clause_accuracy",
    claims=CLAIMS,
    knobs=(("gamma", "wspo gamma=", "gammas"), ("beta", "eft beta=", "eft_betas")),
    reward=lambda task: reward_key(task),
    png="science.png",
)  # fmt: skip
"""`make science` on the tiny world (w2s.science.tiny)."""

REAL_CLAIMS = (
    ("weak aligned (DPO) > weak base (reward): the weak model is aligned", "weak_aligned", "weak_base", "reward", 0.0),
    ("Gemma + WSPO > weak aligned (reward): the strong student exceeds its weak teacher", "wspo", "weak_aligned",
     "reward", 0.0),
    ("Gemma + WSPO > Gemma base (reward)", "wspo", "strong_base", "reward", 0.0),
    ("WSPO keeps capability: reference log-likelihood per byte >= Gemma base - margin", "wspo", "strong_base",
     "ref_loglik", None),
    ("WSPO reaches the SFT ceiling: reward >= SFT - margin", "wspo", "sft_ceiling", "reward", None),
    ("search > weak aligned (reward)", "search", "weak_aligned", "reward", 0.0),
    ("search > Gemma base (reward)", "search", "strong_base", "reward", 0.0),
    ("search > best-of-N at matched strong tokens (reward)", "search", "bon_matched", "reward", 0.0),
    *TREE_CLAIMS,
)  # fmt: skip

REAL = Layout(
    name="real",
    systems=("weak_base", "weak_aligned", "strong_base", "wspo", "sft_ceiling", "search", "bon_matched", "mcts"),
    metrics={"reward": "reward", "words": "words", "ref_loglik": "ref log-lik / byte", "tokens": "tokens"},
    capability="ref_loglik",
    claims=REAL_CLAIMS,
    knobs=(("gamma", "wspo gamma=", "gammas"),),
    reward=lambda task: "length_reward",
    png="science-real.png",
)  # fmt: skip
"""`make science-real` on real weights (w2s.science.real): SmolLM2 pair, Gemma-3-270M strong."""

LAYOUTS = {layout.name: layout for layout in (TINY, REAL)}


def layout_of(report_or_config) -> Layout:
    """The layout a report (report.json's "layout") or a science config (its `layout`) was made with."""
    name = report_or_config.get("layout") if isinstance(report_or_config, dict) else report_or_config.layout
    return LAYOUTS[name or "tiny"]


def reward_key(task: str) -> str:
    """The per-example key of a tiny-world task's reward (its Task class's `reward`)."""
    return TASKS.get(TINY_TASKS[task], "science.tasks").reward


def per_seed(rows: dict, task: str, name: str, metric: str, layout: Layout | None = None) -> list[list[float]]:
    """[seeds][prompts] values of one metric ('reward' is the task's reward) of one system, in seed order."""
    key = (layout or TINY).reward(task) if metric == "reward" else metric
    cells = sorted(cell for cell in rows if cell[1] == task)
    return [[example[key] for example in rows[cell][name]["per_example"]] for cell in cells]


def interval(config, rows: dict, task: str, name: str, metric: str, layout: Layout | None = None) -> dict:
    return bootstrap(per_seed(rows, task, name, metric, layout), config.resamples).as_dict()


def select(config, task: str, val: dict) -> dict:
    """Each knob of the layout (gamma, EFT beta) for a task, from the validation runs pooled over seeds: the highest
    mean reward among the settings whose capability score is within `capability_margin` of the strong base's."""
    layout = layout_of(config)
    capability, label = layout.capability, layout.metrics[layout.capability]
    floor = mean(v for row in per_seed(val, task, "strong_base", capability, layout) for v in row)
    floor -= config.capability_margin
    choices = {}
    for knob, prefix, field_name in layout.knobs:
        sweep = []
        for value in getattr(config, field_name):
            point = {m: interval(config, val, task, f"{prefix}{value:g}", m, layout) for m in layout.metrics}
            sweep.append({"value": value, **point, "eligible": point[capability]["mean"] >= floor})
        eligible = [p for p in sweep if p["eligible"]] or sweep
        best = max(eligible, key=lambda p: p["reward"]["mean"])
        why = (
            f"highest validation reward ({best['reward']['mean']:.3f}) among the {knob}s whose {label} stays "
            f">= {floor:.3f} (strong base - {config.capability_margin:g})"
            if best["eligible"]
            else f"no {knob} kept {label} >= {floor:.3f}: highest validation reward taken"
        )
        choices[knob] = {"chosen": best["value"], "why": why, "capability_floor": floor, "sweep": sweep}
    return choices


def claims(config, task: str, test: dict) -> list[dict]:
    """Each claim's paired difference a - b with its interval and verdict."""
    layout, out, ran = layout_of(config), [], ran_systems(test, task)
    for text, a, b, metric, margin in [claim for claim in layout.claims if {claim[1], claim[2]} <= ran]:
        margin = config.capability_margin if margin is None else margin
        diff = paired_difference(per_seed(test, task, a, metric, layout), per_seed(test, task, b, metric, layout))
        out.append({"claim": text, "a": a, "b": b, "metric": metric, "margin": margin, "difference": diff.as_dict(),
                    "verdict": verdict(diff, margin)})  # fmt: skip
    return out


def ran_systems(test: dict, task: str) -> set[str]:
    """The systems every seed of the task ran (a run may leave out optional ones, such as mcts)."""
    return set.intersection(*(set(rows) for cell, rows in test.items() if cell[1] == task))


def system_rows(config, task: str, test: dict) -> dict:
    """Per system: every metric's interval, strong tokens sampled and weak tokens run per prompt, its params."""
    layout, cells, ran = layout_of(config), sorted(cell for cell in test if cell[1] == task), ran_systems(test, task)
    rows = {}
    for name in [name for name in layout.systems if name in ran]:
        runs = [test[cell][name] for cell in cells]
        rows[name] = {m: interval(config, test, task, name, m, layout) for m in layout.metrics}
        rows[name]["strong_tokens"] = mean(run["sampled_tokens"] for run in runs)
        rows[name]["weak_tokens"] = mean(run["weak_tokens"] for run in runs)
        rows[name]["params"] = [run.get("search", {}) for run in runs]
    return rows


def write_science_report(
    config, val: dict, test: dict, choices: dict, caches: dict | None = None, extra: dict | None = None
) -> dict:
    """report.json, report.md and the layout's PNG in config.out_dir; returns the report.

    Args:
        caches: per task, the totals of its cache's manifest (WSPO's weak compute, spent once, offline).
        extra: more top-level sections of report.json (the real run's weak-pair diagnostics, its timings).
    """
    layout, out = layout_of(config), Path(config.out_dir)
    report = {
        "layout": layout.name,
        "seeds": list(config.seeds),
        "world_per_seed": config.world_per_seed,
        "world_seed": config.world_seed if hasattr(config, "world_seed") else config.world.seed,
        "num_test": config.num_test,
        "num_val": config.num_val,
        "capability_margin": config.capability_margin,
        "search": dict(config.search),
        "tasks": {
            task: {
                "reward": layout.reward(task),
                "selection": choices[task],
                "systems": system_rows(config, task, test),
                "claims": claims(config, task, test),
                "cache": (caches or {}).get(task),
            }
            for task in config.tasks
        },
        **(extra or {}),
    }
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", f"# w2s science report ({layout.name})\n\n" + readme_text(report))
    plot(report, out / layout.png)
    return report


def cell(value: dict, fmt: str = "{:.3f}") -> str:
    return f"{fmt.format(value['mean'])} [{fmt.format(value['low'])}, {fmt.format(value['high'])}]"


def settings_text(params: list[dict]) -> str:
    """A system's generator settings over the seeds: 'W=2, K=4, L=8', or 'N=9, 8, 9' where seeds differ."""
    keys = {"width": "W", "num_samples": "K", "num_children": "K", "chunk_len": "L", "n": "N", "beta": "beta",
            "budget": "budget", "c": "c", "w": "w", "finalists": "finalists"}  # fmt: skip
    parts = []
    for key in [key for key in keys if params and key in params[0]]:
        values = [f"{p[key]:g}" for p in params]
        parts.append(f"{keys.get(key, key)}={values[0] if len(set(values)) == 1 else ', '.join(values)}")
    return "; ".join(parts)


def system_table(task: dict, layout: Layout) -> list[str]:
    scores = [m for m in layout.metrics if m != "tokens"]
    lines = [
        "| system | " + " | ".join(layout.metrics[m] for m in scores) + " | tokens | strong tokens / prompt "
        "| weak tokens / prompt | settings |",
        "| --- |" + " ---: |" * (len(scores) + 3) + " --- |",
    ]
    gamma = task["selection"]["gamma"]["chosen"]
    for name in [name for name in layout.systems if name in task["systems"]]:  # report.json's keys are sorted
        row = task["systems"][name]
        cells = [cell(row[m]) for m in scores] + [cell(row["tokens"], "{:.1f}")]
        cells += [f"{row['strong_tokens']:.1f}", f"{row['weak_tokens']:.0f}"]
        cells.append(f"gamma={gamma:g}" if name == "wspo" else settings_text(row.get("params", [])))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def sweep_table(selection: dict, knob: str, layout: Layout) -> list[str]:
    lines = [
        f"| {knob} | val reward | val {layout.metrics[layout.capability]} | val tokens | eligible | chosen |",
        "| ---: | ---: | ---: | ---: | :-: | :-: |",
    ]  # noqa: E501
    for point in selection[knob]["sweep"]:
        chosen = "**yes**" if point["value"] == selection[knob]["chosen"] else ""
        eligible = "yes" if point["eligible"] else "no"
        lines.append(f"| {point['value']:g} | {cell(point['reward'])} | {cell(point[layout.capability])} | "
                     f"{cell(point['tokens'], '{:.1f}')} | {eligible} | {chosen} |")  # fmt: skip
    return lines + ["", f"Chosen {knob} = {selection[knob]['chosen']:g}: {selection[knob]['why']}."]


def claims_table(claims_list: list[dict]) -> list[str]:
    lines = ["| claim | difference a - b [95% interval] | margin | verdict |", "| --- | ---: | ---: | :-: |"]
    for claim in claims_list:
        lines.append(f"| {claim['claim']} | {cell(claim['difference'])} | {claim['margin']:g} | {claim['verdict']} |")
    return lines


def readme_text(report: dict) -> str:
    """The markdown tables of a science report (what docs/science.md shows between its science-table markers)."""
    layout, seeds, search = layout_of(report), report["seeds"], report["search"]
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
        "bon_matched: best-of-N at the strong tokens search sampled; mcts (where run): tree search with a budget of "
        "the strong tokens search sampled; weak tokens: positions each weak model ran.",
        "",
    ]
    for name, task in report["tasks"].items():
        parts += [f"### Task: {name} (reward: {task['reward']})", "", *system_table(task, layout), ""]
        if task.get("cache"):
            parts += [
                f"WSPO's weak compute is spent once, offline: its cache ran each weak model over "
                f"{task['cache']['tokens']:,} token positions ({task['cache']['rows']:,} rows), for every WSPO run "
                "and every prompt after it; search, best-of-N and EFT run the weak pair at every prompt.",
                "",
            ]
        for knob, what in (("gamma", "WSPO gamma"), ("beta", "EFT beta")):
            if knob in task["selection"]:
                parts += [f"{what}, selected on validation:", "", *sweep_table(task["selection"], knob, layout), ""]
        parts += ["Claims (paired differences on the test prompts):", "", *claims_table(task["claims"]), ""]
    return "\n".join(parts + real_sections(report))


def claims_summary(report: dict) -> str:
    """Only the claims and their verdicts, per task, with the run's seeds and prompts (a README summary)."""
    parts = [f"Seeds {', '.join(map(str, report['seeds']))}, {report['num_test']} test prompts per seed; paired "
             "differences with 95% intervals (generated from report.json):", ""]  # fmt: skip
    for name, task in report["tasks"].items():
        gamma = task["selection"]["gamma"]["chosen"]
        parts += [f"Task {name} (WSPO gamma {gamma:g}, chosen on validation):", "", *claims_table(task["claims"]), ""]
    return "\n".join(parts)


def real_sections(report: dict) -> list[str]:
    """The real run's weak-pair diagnostics, alignment share and timings, when report.json has them."""
    parts = []
    pair = report.get("weak_pair", {})
    ratios = [(name, pair[key]) for name, key in (("DPO (this run)", "ratio_dpo"), ("LoRA fine-tune (real world)",
              "ratio_lora_sft")) if key in pair]  # fmt: skip
    if ratios:
        parts += [
            "The weak pair's per-token log-ratio log pi_aligned - log pi_base on the cache rows, by how the weak "
            "model was aligned (off EOS: every response token but the end; at EOS and summed: mean per answer kind):",
            "",
            "| aligned by | off EOS mean | off EOS median | off EOS mean abs | off EOS > 0 | at EOS: short / window "
            "/ long | summed: short / window / long |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, r in ratios:
            eos = " / ".join(f"{r['eos_by_kind'][k]:+.2f}" for k in ("short", "window", "long"))
            summed = " / ".join(f"{r['sum_by_kind'][k]:+.1f}" for k in ("short", "window", "long"))
            center = f"{r['off_eos_mean']:+.3f} | {r['off_eos_median']:+.3f} | {r['off_eos_mean_abs']:.3f}"
            parts.append(f"| {name} | {center} | {r['off_eos_share_positive']:.0%} | {eos} | {summed} |")
        parts.append("")
    if "strong_eos" in report:
        eos = report["strong_eos"]
        parts += [
            f"Gemma's log-probability of ending (EOS) right after each kind of cache answer, before and after WSPO "
            f"(gamma {eos['gamma']:g}, {eos['rows_per_kind']} rows per kind):",
            "",
            "| model | after a short answer | after an in-window answer | after a long answer |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, row in eos.items():
            if isinstance(row, dict):
                parts.append(f"| {name} | " + " | ".join(f"{row[k]:.2f}" for k in ("short", "window", "long")) + " |")
        parts.append("")
    if "alignment" in report:
        a = report["alignment"]
        parts += [
            f"Cross-tokenizer chunks on the {a['responses']} cache responses ({a['characters']:,} characters, "
            f"{a['chunks']:,} chunks): {a['share_chars_multi_strong']:.2%} of the characters lie in chunks of more "
            f"than one Gemma token, {a['share_chars_multi_weak']:.2%} in chunks of more than one SmolLM2 token.",
            "",
        ]
    if "timings_seconds" in report:
        t = report["timings_seconds"]
        ordered = sorted(t.items(), key=lambda item: item[1])  # cumulative: by time is the order the stages ran
        parts += ["Wall time (cumulative seconds at the end of each stage, in the order they ran): "
                  + ", ".join(f"{k} {v:,.0f}" for k, v in ordered) + ".", ""]  # fmt: skip
    return parts


def plot(report: dict, path: Path) -> None:
    """Per task: reward and the capability score of every system with intervals, and the validation gamma sweep."""
    layout, tasks = layout_of(report), report["tasks"]
    fig, axes = plt.subplots(len(tasks), 3, figsize=(15, 3.8 * len(tasks)), squeeze=False)
    for row, (name, task) in zip(axes, tasks.items()):
        systems = [system for system in layout.systems if system in task["systems"]]
        for ax, metric in zip(row[:2], ("reward", layout.capability)):
            values = [task["systems"][s][metric] for s in systems]
            err = [[v["mean"] - v["low"] for v in values], [v["high"] - v["mean"] for v in values]]
            ax.bar(range(len(systems)), [v["mean"] for v in values], yerr=err, capsize=3,
                   color=[f"C{i}" for i in range(len(systems))])  # fmt: skip
            ax.set_xticks(range(len(systems)), systems, rotation=35, ha="right", fontsize=8)
            ax.set_title(f"{name}: {metric} (test, 95% interval)")
        sweep = task["selection"]["gamma"]["sweep"]
        gammas = [p["value"] for p in sweep]
        for metric in ("reward", layout.capability):
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
