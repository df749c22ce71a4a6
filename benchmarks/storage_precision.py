"""What float16/bfloat16 storage costs the trained model: the same WSPO run on caches that differ only in how
they store per-token values, compared with the float32 one (a script, not a test; `cache_storage.py` calls it).

    .venv/bin/python benchmarks/storage_precision.py --policy WORLD/strong_base --steps 30 CACHE_F32 CACHE ...

Each cache (the first is the float32 baseline) trains the policy for --steps optimiser steps in its own process,
same seed, same rows in the same order (the data order depends only on the seed and the row counts). Reported per
cache: the final WSPO loss, the largest |loss - float32 loss| over the steps, and, for the final weights, the
largest |w - w_float32| and the relative update error ||w - w_float32|| / ||w_float32 - w_start||: the share of
what training changed that the storage dtype changed instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = """
import json, sys
from w2s.train.config import TrainConfig
from w2s.train.recipe import run
run(TrainConfig(**json.loads(sys.argv[1])))
"""


def train(cache: Path, policy: Path, out: Path, steps: int) -> list[float]:
    """Trains `steps` steps on `cache` in a fresh process; returns the loss of every step."""
    config = {
        "cache_dir": str(cache),
        "policy": str(policy),
        "out_dir": str(out),
        "max_steps": steps,
        "micro_batch_size": 8,
        "grad_accum": 1,
        "gamma": 0.3,
        "lr": 5e-4,
        "check_rows": 0,
        "log_every": 10**9,
        "seed": 0,
    }
    launcher = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")
    env = {**{k: v for k, v in os.environ.items() if k not in launcher}, "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(config)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"training on {cache} failed:\n{done.stderr[-3000:]}")
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def weights(folder: Path) -> np.ndarray:
    """Every weight of a saved model, flat, float64 `[parameters]` (tensors in name order)."""
    from safetensors.numpy import load_file

    tensors = load_file(str(folder / "model.safetensors"))
    return np.concatenate([tensors[name].astype(np.float64).ravel() for name in sorted(tensors)])


def compare(caches: list[tuple[str, Path]], policy: Path, steps: int, tmp: Path) -> list[dict]:
    """One row per cache (label, folder), the first the float32 baseline."""
    start = weights(policy)
    runs = []
    for label, cache in caches:
        out = tmp / f"train-{label}"
        runs.append((label, train(cache, policy, out, steps), weights(out / "final")))
    _, base_losses, base_weights = runs[0]
    update = float(np.linalg.norm(base_weights - start))
    rows = []
    for label, losses, final in runs:
        rows.append(
            {
                "storage": label,
                "final_loss": losses[-1],
                "max_loss_diff": max(abs(a - b) for a, b in zip(losses, base_losses, strict=True)),
                "max_weight_diff": float(np.abs(final - base_weights).max()),
                "update_error": float(np.linalg.norm(final - base_weights)) / update,
            }
        )
    return rows


def table(rows: list[dict], steps: int) -> str:
    """The comparison as markdown."""
    lines = [
        f"| cache (WSPO, {steps} steps) | final loss | max abs loss diff vs full float32 | "
        "max abs weight diff | weight update error |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['storage']} | {r['final_loss']:.5f} | {r['max_loss_diff']:.1e} | {r['max_weight_diff']:.1e} | "
            f"{100 * r['update_error']:.2f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("caches", nargs="+", type=Path, help="cache folders; the first is the float32 baseline")
    parser.add_argument("--policy", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="w2s-precision-") as tmp:
        rows = compare([(path.name, path) for path in args.caches], args.policy, args.steps, Path(tmp))
    print(table(rows, args.steps))


if __name__ == "__main__":
    main()
