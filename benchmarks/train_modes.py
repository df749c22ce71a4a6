"""Benchmark: what the cache saves the trainer. Prints figures side by side from one run (not a timed test).

Three ways to get the WSPO terms, each run for the same steps on the same cache in its own process:
  (a) cached  : weak ratios and the strong reference read from the cache; only the policy in the process
  (b) ref     : weak ratios from the cache, the frozen reference run beside the policy
  (c) online  : the weak pair and the reference run in the training process (the authors' set-up)
For each: median step time, peak resident memory of the process, parameters held in the process, and the
reader's share of step time.

    python benchmarks/train_modes.py --cache runs/tiny/cache --policy runs/tiny/world/strong_base --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys
from w2s.train.config import TrainConfig
from w2s.train.recipe import setup, train
config = TrainConfig(**json.loads(sys.argv[1]))
run = setup(config)
held = sum(p.numel() for p in run.engine.module.parameters())
held += sum(p.numel() for m in [run.reference, *run.weak.values()] if m is not None for p in m.parameters())
log = train(run)
rows = log.rows[2:]  # the first steps warm up allocators and caches
print("RESULT " + json.dumps({
    "step_ms": 1000 * sorted(r["step_seconds"] for r in rows)[len(rows) // 2],
    "reader_share": sum(r["read_seconds"] for r in rows) / sum(r["step_seconds"] for r in rows),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "params_held": held,
}))
"""

MODES = {
    "(a) cached weak + cached ref": {"mode": "cached", "use_cached_ref": True},
    "(b) cached weak, ref in process": {"mode": "cached", "use_cached_ref": False},
    "(c) online: weak pair + ref in process": {"mode": "online"},
}


def measure(mode: dict, args: argparse.Namespace, out: Path) -> dict:
    config = {
        "cache_dir": args.cache,
        "policy": args.policy,
        "out_dir": str(out),
        "max_steps": args.steps,
        "micro_batch_size": args.micro_batch_size,
        "lr": 1e-4,
        "check_rows": 0,
        "log_every": 10**9,
        **mode,
    }
    launcher = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")
    env = {**{k: v for k, v in os.environ.items() if k not in launcher}, "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(config)], capture_output=True, text=True, env=env)
    line = next((out for out in done.stdout.splitlines() if out.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"benchmark run failed:\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default="runs/tiny/cache")
    parser.add_argument("--policy", default="runs/tiny/world/strong_base")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    args = parser.parse_args()
    manifest = json.loads((Path(args.cache) / "manifest.json").read_text())
    if "strong_ref" not in manifest["provenance"]["models"]:
        raise SystemExit(f"{args.cache}: built without strong_ref; rebuild with cache.strong_ref=... for mode (a)")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, mode) in enumerate(MODES.items()):
            results[name] = measure(mode, args, Path(tmp) / str(i))
    base = results[next(iter(MODES))]
    print(f"\n{args.steps} steps, micro-batch {args.micro_batch_size}, cache {args.cache}, policy {args.policy}\n")
    print("| mode | step time (ms, median) | vs (a) | peak RSS (MB) | parameters in process | reader share of step |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['step_ms']:.1f} | {r['step_ms'] / base['step_ms']:.2f}x | {r['peak_rss_mb']:.0f} | "
            f"{r['params_held']:,} ({r['params_held'] / base['params_held']:.2f}x) | {100 * r['reader_share']:.2f}% |"
        )


if __name__ == "__main__":
    main()
