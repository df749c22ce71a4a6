"""`python -m w2s.science.search_compare [CONFIG] [key=value ...]`: tree search (MCTS) against chunk-level beam
search (CBS) and best-of-N at matched strong tokens, over seeds with 95% intervals, on the tiny world's two tasks
and on the real pair (a SmolLM2-135M pair steering Gemma-3-270M base), sized for under an hour on a shared CPU
(the defaults are the run docs/search.md reports).

The full drivers (`make science`, `make science-real`) run the same systems on every test prompt; this runs only
the search systems, through those drivers' own `evaluate` and `matched_systems`, on fewer prompts:
- tiny: one world built from the science config's `world`; per seed and task: strong base (the plain sample's
  length, which sets best-of-N's N), CBS (the config's W, K, L), then best-of-N and MCTS at CBS's strong tokens;
- real: the data and DPO-aligned weak model of a finished science-real run (linked; its test prompts cut to the
  first `real_test`); strong base, CBS and best-of-N are that run's own rows (the same models, prompts and seeds,
  prompt i drawn with seed s + i; cut to those prompts, their token means are the run's), MCTS runs here.
Prompt i of a seed s is searched with seed s + i by every system. Writes report.json (per part: each system's
reward interval and cost, the paired claims and their verdicts) and report.md; the tables in docs/search.md are
written from report.json by `benchmarks/doc_tables.py search-compare`.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from rich.console import Console

from w2s.config import load_config, require
from w2s.errors import UserError
from w2s.eval.config import SystemConfig
from w2s.eval.stats import paired_difference, verdict
from w2s.io import atomic_write_json, atomic_write_text, read_jsonl
from w2s.science.report import cell, interval, layout_of, per_seed, settings_text
from w2s.science.tiny import config_command

SYSTEMS = ("strong_base", "search", "bon_matched", "mcts")
"""The rows of each table, in order."""
CLAIMS = (
    ("mcts > CBS at matched strong tokens (reward)", "mcts", "search"),
    ("mcts > best-of-N at matched strong tokens (reward)", "mcts", "bon_matched"),
    ("CBS > best-of-N at matched strong tokens (reward)", "search", "bon_matched"),
    ("mcts > strong base sampling (reward)", "mcts", "strong_base"),
)
"""(claim, a, b): 'a > b' on the reward, paired on the same prompts and seeds."""


@dataclass
class SearchCompareConfig:
    """What the comparison runs: which parts, seeds and prompt counts, and where the worlds come from."""

    out_dir: str = "runs/search-compare"
    """tiny/ (its world, seed-<s>/<task>/...), real/ (linked data and weak model, seed-<s>/test/...), report.*"""
    parts: list[str] = field(default_factory=lambda: ["tiny", "real"])
    """tiny (both tiny tasks) and/or real (the SmolLM2 pair steering Gemma)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds (at least 3 for the intervals); each samples every system afresh."""
    tiny_config: str = "configs/science.yaml"
    """The science config whose world, search (W, K, L) and mcts knobs the tiny part uses."""
    tiny_test: int = 24
    """Tiny test prompts per seed and task."""
    tiny_overrides: list[str] = field(default_factory=lambda: ["world.strong.steps=300", "world.sft_steps=1"])
    """key=value overrides of the science config: by default a smaller world than `make science`'s (300 strong
    steps, not 700; no SFT ceiling, which this does not use)."""
    real_config: str = "configs/science_real.yaml"
    """The science-real config whose search, mcts knobs, budget and length window the real part uses."""
    real_world: str = "runs/real"
    """A built real world (`make real-world`): the weak base and Gemma."""
    real_run: str = "runs/science-real"
    """A finished science-real run: its data/ and weak_dpo/ (the DPO-aligned weak model) are reused."""
    real_test: int = 4
    """Real test prompts per seed: the first of the run's (one MCTS search took about 3.5 minutes on the shared
    2-core CPU)."""
    threads: int = 1
    """torch threads (one: the tiny models spin on a second, and the shared machine has two cores)."""
    resamples: int = 4000
    """Bootstrap resamples per interval."""

    def __post_init__(self) -> None:
        require(bool(self.parts) and set(self.parts) <= {"tiny", "real"}, "parts", "a non-empty subset of tiny, real")
        require(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "seeds", "distinct, at least 1")
        for key in ("tiny_test", "real_test", "threads", "resamples"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")


def tiny_part(config: SearchCompareConfig) -> tuple[object, dict]:
    """The tiny world's comparison: its science config (for the report) and {(seed, task): rows}."""
    from w2s.science.tiny import Cell, ScienceConfig, evaluate, matched_systems
    from w2s.world.build import build_world

    out = Path(config.out_dir) / "tiny"
    overrides = [f"out_dir={out}", "world_per_seed=false", f"num_test={config.tiny_test}", f"threads={config.threads}",
                 f"seeds={config.seeds}", f"resamples={config.resamples}"]  # fmt: skip
    science = load_config(ScienceConfig, config.tiny_config, list(config.tiny_overrides) + overrides)
    build_world(replace(science.world, out_dir=str(Cell(science, science.seeds[0], "length").world)))
    test = {}
    for seed in science.seeds:
        for task in science.tasks:
            here = Cell(science, seed, task)
            strong = here.model("strong_base")
            run = lambda spec, here=here: evaluate(here, "test", spec)  # noqa: E731
            rows = {
                spec.name: run(spec)
                for spec in (
                    SystemConfig("strong_base", strong),
                    SystemConfig("search", strong, "cbs", dict(science.search)),
                )
            }
            test[(seed, task)] = rows | matched_systems(run, strong, rows, science.mcts)  # fmt: skip
    return science, test


def link_real_run(config: SearchCompareConfig, out: Path, prompts: int) -> None:
    """out/weak_dpo -> the run's weak model; out/data/test.jsonl: the run's first `prompts` test prompts."""
    run = Path(config.real_run).absolute()
    if not (run / "weak_dpo" / "model" / "config.json").is_file() or not (run / "data" / "test.jsonl").is_file():
        raise UserError(f"real_run: {run} is not a finished science-real run (no weak_dpo/model or data/test.jsonl)")
    (out / "data").mkdir(parents=True, exist_ok=True)
    link = out / "weak_dpo"
    if not link.is_symlink():
        shutil.rmtree(link, ignore_errors=True)
        link.symlink_to(run / "weak_dpo", target_is_directory=True)
    rows = read_jsonl(run / "data" / "test.jsonl")
    require(len(rows) >= prompts, "real_test_topics", f"{run} has {len(rows)} test prompts, fewer than {prompts}")
    atomic_write_text(out / "data" / "test.jsonl", "".join(json.dumps(row) + "\n" for row in rows[:prompts]))


def reused_row(config: SearchCompareConfig, seed: int, name: str, prompts: int) -> dict:
    """A test row of the science-real run, its per-prompt scores cut to the first `prompts`."""
    path = Path(config.real_run) / f"seed-{seed}" / "test" / f"{name}.row.json"
    if not path.is_file():
        raise UserError(f"real_run: {path} is missing; run `make science-real` first (or give another real_run)")
    row = json.loads(path.read_text())
    require(len(row["per_example"]) >= prompts, "real_test", f"{path} has {len(row['per_example'])} prompts")
    return row | {"per_example": row["per_example"][:prompts], "reused_from": str(path)}


def real_part(config: SearchCompareConfig) -> tuple[object, dict]:
    """The real pair's comparison: its science-real config (for the report) and {(seed, "length"): rows}."""
    from w2s.science.real import Capability, ScienceRealConfig, evaluate
    from w2s.science.tiny import matched_specs

    out = Path(config.out_dir).absolute() / "real"
    overrides = [f"out_dir={out}", f"world={Path(config.real_world).absolute()}", f"threads={config.threads}",
                 f"seeds={config.seeds}", f"resamples={config.resamples}"]  # fmt: skip
    science = load_config(ScienceRealConfig, config.real_config, overrides)
    link_real_run(config, out, config.real_test)
    capability, gemma, test = Capability(science), science.model("strong_base"), {}
    for seed in science.seeds:
        rows = {name: reused_row(config, seed, name, config.real_test) for name in ("strong_base", "search",
                                                                                     "bon_matched")}  # fmt: skip
        bon, *tree = matched_specs(gemma, rows, science.mcts)
        if rows["bon_matched"]["search"] != bon.params:
            raise UserError(f"real_run: its bon_matched ran {rows['bon_matched']['search']}, not {bon.params}")
        test[(seed, "length")] = rows | {spec.name: evaluate(science, seed, "test", spec, capability) for spec in tree}
    return science, test


def part_report(science, test: dict, task: str) -> dict:
    """One table: each system's reward interval, tokens and settings, and the claims with their verdicts."""
    layout, cells = layout_of(science), sorted(key for key in test if key[1] == task)
    systems = {}
    for name in [name for name in SYSTEMS if all(name in test[key] for key in cells)]:
        runs = [test[key][name] for key in cells]
        systems[name] = {
            "reward": interval(science, test, task, name, "reward", layout),
            "tokens": interval(science, test, task, name, "tokens", layout),
            "strong_tokens": sum(run["sampled_tokens"] for run in runs) / len(runs),
            "weak_tokens": sum(run["weak_tokens"] for run in runs) / len(runs),
            "params": [run.get("search", {}) for run in runs],
            "eval_seconds": [run.get("seconds") for run in runs],  # per seed, on every prompt of the run it came from
        }
    claims = []
    for text, a, b in [claim for claim in CLAIMS if {claim[1], claim[2]} <= set(systems)]:
        diff = paired_difference(per_seed(test, task, a, "reward", layout), per_seed(test, task, b, "reward", layout))
        claims.append({"claim": text, "a": a, "b": b, "difference": diff.as_dict(), "verdict": verdict(diff, 0.0)})
    return {"prompts_per_seed": len(test[cells[0]]["search"]["per_example"]), "systems": systems, "claims": claims}


def report_text(report: dict) -> str:
    """The markdown tables of a comparison report (docs/search.md shows them between its search-compare markers)."""
    lines = [
        f"Seeds {', '.join(map(str, report['seeds']))}; each number a mean over seeds and prompts with its 95% "
        "bootstrap interval (seeds, then prompts, resampled); claims are paired differences on the same prompts. "
        "bon_matched and mcts are given the strong tokens CBS (search) sampled per prompt; mcts never exceeds them.",
        "",
    ]
    order = sorted(report["parts"], key=lambda name: (name.startswith("real"), name))  # report.json sorts keys
    for name, part in [(name, report["parts"][name]) for name in order]:
        lines += [f"#### {name} ({part['prompts_per_seed']} test prompts per seed)", "",
                  "| system | reward | response tokens | strong tokens / prompt | weak tokens / prompt | settings |",
                  "| --- | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
        for system, row in [(name, part["systems"][name]) for name in SYSTEMS if name in part["systems"]]:
            cells = [cell(row["reward"]), cell(row["tokens"], "{:.1f}"), f"{row['strong_tokens']:.1f}",
                     f"{row['weak_tokens']:.0f}", settings_text(row["params"])]  # fmt: skip
            lines.append(f"| {system} | " + " | ".join(cells) + " |")
        lines += ["", "| claim | difference a - b [95% interval] | verdict |", "| --- | ---: | :-: |"]
        lines += [f"| {c['claim']} | {cell(c['difference'])} | {c['verdict']} |" for c in part["claims"]]
        lines.append("")
    return "\n".join(lines)


def run(config: SearchCompareConfig) -> dict:
    """Every part asked for, then report.json and report.md in out_dir; returns the report."""
    torch.set_num_threads(config.threads)
    report = {"seeds": list(config.seeds), "parts": {}, "seconds": {}}
    for part in config.parts:
        started = time.time()
        science, test = tiny_part(config) if part == "tiny" else real_part(config)
        for task in science.tasks:
            report["parts"][f"{part} {task}"] = part_report(science, test, task)
        report["seconds"][part] = round(time.time() - started, 1)
    out = Path(config.out_dir)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", "# Tree search against CBS and best-of-N\n\n" + report_text(report))
    Console().print(f"search comparison: {out / 'report.md'}")
    return report


def main(argv: list[str] | None = None) -> int:
    """`python -m w2s.science.search_compare [CONFIG] [key=value ...]`."""
    return config_command("w2s search-compare", SearchCompareConfig, run, argv)


if __name__ == "__main__":
    sys.exit(main())
