"""What a refactor must not change: the micro world, its cache's bytes, the losses at every training step and the
report rows, run through the `w2s` command of one checkout, as a fingerprint to compare with another's.

    .venv/bin/python benchmarks/behaviour_fingerprint.py --w2s /old/checkout/.venv/bin/w2s --out /tmp/before
    .venv/bin/python benchmarks/behaviour_fingerprint.py --w2s .venv/bin/w2s --out /tmp/after
    .venv/bin/python benchmarks/behaviour_fingerprint.py --compare /tmp/before/fingerprint.json \
        /tmp/after/fingerprint.json

Provenance files (which record the code's version and, since the loss became a component, `train.loss` instead
of `train.gamma`), timings and logs are left out; every weight, data file, shard file, per-step loss and metric,
and every report row (per-prompt scores included) is in.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

WORLD = [
    "world.num_train=300", "world.num_align=300", "world.num_cache=40", "world.num_test=16", "world.vocab_size=400",
    "world.weak.hidden_size=64", "world.weak.num_layers=1", "world.weak.steps=8", "world.weak.lr=3e-3",
    "world.strong.hidden_size=128", "world.strong.num_layers=2", "world.strong.steps=8", "world.strong.lr=3e-3",
    "world.align_steps=4", "world.batch_size=8", "world.eval_examples=8",
]  # fmt: skip
"""The micro world of the tests (tests/conftest.py `micro_world_config`), as command-line overrides."""
STAGES = [
    ("world", []),
    ("cache", ["cache.rows_per_shard=16"]),
    ("train", ["train.gamma=0.1", "train.max_steps=6", "train.micro_batch_size=4", "train.grad_accum=1"]),
    ("eval", ["eval.num_examples=6", "eval.gamma_sweep=false"]),
]
SKIPPED = ("provenance", "w2s_", ".w2s-", "done.json", "ledger", "config.yaml", "tensorboard", "summary.json")
"""Files that hold provenance, process ids, times or absolute paths: written by every run differently."""
TIMINGS = ("seconds", "step_seconds", "read_seconds", "tokens_per_second", "samples_per_second", "wall")


def run_stages(w2s: Path, out: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    for stage, overrides in STAGES:
        words = [str(w2s), stage, f"run_root={out / 'runs'}", *WORLD, *overrides]
        # in the checkout the command belongs to (…/.venv/bin/w2s), whose configs/tiny.yaml is the default config
        proc = subprocess.run(words, env=env, capture_output=True, text=True, cwd=w2s.parents[2])
        if proc.returncode:
            sys.exit(f"{' '.join(words)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMINGS and "provenance" not in k}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def fingerprint(runs: Path) -> dict:
    files = {}
    for path in sorted(p for p in runs.rglob("*") if p.is_file()):
        relative = str(path.relative_to(runs))
        if any(part in relative for part in SKIPPED) or path.suffix in (".png", ".log", ".md"):
            continue
        if path.name in ("manifest.json", "report.json", "metrics.jsonl", "world.json"):
            continue  # compared by content below (they hold timings and code versions)
        files[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    metrics = [json.loads(line) for line in (runs / "wspo" / "metrics.jsonl").read_text().splitlines()]
    report = json.loads((runs / "eval" / "report.json").read_text())
    manifest = json.loads((runs / "cache" / "manifest.json").read_text())
    return {
        "files": files,
        "losses": without_timings(metrics),
        "report_systems": without_timings(report["systems"]),
        "cache_shards": without_timings(manifest["shards"]),
        "cache_totals": manifest["totals"],
    }


NEW_FIELDS = ("loss",)
"""Report-row fields a checkout may add (the loss component of a trained model, since issue 22): not a change."""


def compare(before: dict, after: dict) -> int:
    for fingerprint_ in (before, after):
        for row in fingerprint_["report_systems"].values():
            for name in NEW_FIELDS:
                row.pop(name, None)
            row["model"] = row["model"].split("/runs/", 1)[-1]  # each fingerprint ran in its own folder
    problems = []
    for key in before:
        if key == "files":
            for name in sorted(set(before[key]) | set(after[key])):
                if before[key].get(name) != after[key].get(name):
                    problems.append(f"file {name}: {before[key].get(name)} -> {after[key].get(name)}")
        elif before[key] != after.get(key):
            problems.append(f"{key} differs")
    counts = {key: len(value) for key, value in before.items()}
    verdict = "identical" if not problems else "DIFFERENT"
    print(f"compared: {counts['files']} files, {counts['losses']} training steps, {counts['report_systems']} "
          f"report systems, {counts['cache_shards']} cache shards: {verdict}")  # fmt: skip
    for problem in problems:
        print("  " + problem)
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--w2s", type=Path, help="the w2s command of the checkout to fingerprint")
    parser.add_argument("--out", type=Path, help="an empty folder for its runs and fingerprint.json")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        return compare(*(json.loads(path.read_text()) for path in args.compare))
    run_stages(args.w2s.resolve(), args.out.resolve())
    result = fingerprint(args.out / "runs")
    (args.out / "fingerprint.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"{len(result['files'])} files, {len(result['losses'])} steps: {args.out / 'fingerprint.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
