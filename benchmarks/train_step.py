"""The cached WSPO train step against a bare policy step, in float32 and bfloat16, on a real model (a script, not a
test); and the loss curve of bf16 training against float32's run-to-run noise.

  .venv/bin/python benchmarks/train_step.py --cache CACHE --policy runs/real/strong_base [--steps 12] [--out F.json]

Step time (one process per precision, the two steps interleaved on the same engine and the same micro-batches):
  - cached: the trainer's own `optimiser_step` (policy forward and backward through `w2s.logprobs`, WSPO loss
    with the weak ratios and the reference read from the cache, DeepSpeed step);
  - bare: the same policy, batch and DeepSpeed engine, forward with transformers' own causal-LM loss on the
    response tokens, backward and Adam, no WSPO term.
bf16 is `train.precision=bf16` (DeepSpeed bf16: weights and activations in bf16 on the CPU as on a GPU). A
float32 cache's reference differs from a bf16 policy by more than the reference check allows, so the bf16 run
sets `accept_other_ref=true` (the timing and the loss are what is measured, not the check).

Loss curves (--curves): `recipe.train` for --steps steps per (precision, seed); the noise is float32's spread
over seeds (data order), the bf16 error is |bf16 - float32| at the same seed, step by step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

CHILD = """
import json, sys, time, torch
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"]) if spec["threads"] else None
import w2s.train.recipe as recipe
from w2s.train.config import TrainConfig
from benchmarks.train_step import child
print("RESULT " + json.dumps(child(spec)))
"""


def bare_step(run, batch: dict) -> float:
    """Forward with transformers' causal-LM loss on the response tokens, backward, optimiser step."""
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100).clone()
    labels[:, 1:] = labels[:, 1:].masked_fill(batch["mask"] == 0, -100)
    labels[:, 0] = -100
    loss = run.engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    run.engine.backward(loss)
    run.engine.step()
    return loss.item()


def child(spec: dict) -> dict:
    """In the child process: step times (mode steps) or a loss curve (mode curve)."""
    import w2s.train.recipe as recipe
    from w2s.train.config import TrainConfig

    run = recipe.setup(TrainConfig(**spec["config"]))
    if spec["mode"] == "curve":
        return {"loss": [row["loss"] for row in recipe.train(run).rows]}
    stream = recipe.micro_batches(run)
    times: dict[str, list[float]] = {"cached": [], "bare": []}
    for _ in range(spec["steps"]):
        tick = time.perf_counter()
        recipe.optimiser_step(run, stream)
        times["cached"].append(time.perf_counter() - tick)
        batch, _ = next(run.reader.micro_batches(run.position))  # the next micro-batch, read outside the timing
        batch = {k: v.to(run.engine.device) for k, v in batch.items()}
        tick = time.perf_counter()
        bare_step(run, batch)
        times["bare"].append(time.perf_counter() - tick)
    warm = spec["steps"] // 4  # the first steps warm up allocators
    return {name: statistics.median(t[warm:]) for name, t in times.items()}


def launch(spec: dict) -> dict:
    launcher = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")
    env = {**{k: v for k, v in os.environ.items() if k not in launcher}, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True, env=env)
    line = next((out for out in done.stdout.splitlines() if out.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"benchmark run failed:\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


REPO = Path(__file__).resolve().parents[1]


def config(args, precision: str, out: Path, seed: int = 0, steps: int = 10**6) -> dict:
    return {
        "cache_dir": str(args.cache),
        "policy": str(args.policy),
        "out_dir": str(out),
        "max_steps": steps,
        "micro_batch_size": args.micro_batch_size,
        "grad_accum": 1,
        "lr": 1e-5,
        "precision": precision,
        "accept_other_ref": precision == "bf16",
        "check_rows": 0,
        "log_every": 10**9,
        "seed": seed,
        "epochs": 100,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, help="a cache with strong_ref (the policy's)")
    parser.add_argument("--policy", type=Path)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved processes per precision")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    parser.add_argument("--curves", type=int, default=0, help="also loss curves of this many seeds")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--tables", type=Path, nargs="+", help="print the markdown of JSONs written by --out")
    parser.add_argument("--docs", type=Path, help="with --tables: also put it into this page between its markers")
    args = parser.parse_args()
    if args.tables:
        sys.path.insert(0, str(REPO))
        from benchmarks.doc_tables import markers, merged_reports, write_between

        # step times and loss curves may come from separate runs
        markdown = tables({"steps": {}, "curves": {}} | merged_reports(args.tables))
        print(markdown)
        if args.docs:
            write_between(args.docs, markers("train_step", "begin"), markdown)
        return
    if args.cache is None or args.policy is None:
        parser.error("--cache and --policy are needed to measure")
    results: dict = {"steps": {}, "curves": {}, "load_average": os.getloadavg()[0], "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for precision in ("fp32", "bf16"):
                spec = {"mode": "steps", "steps": args.steps, "threads": args.threads,
                        "config": config(args, precision, Path(tmp) / f"s{round_}{precision}")}  # fmt: skip
                got = launch(spec)
                print(f"round {round_} {precision}: {got}", flush=True)
                results["steps"].setdefault(precision, []).append(got)
        for seed in range(args.curves):
            for precision in ("fp32", "bf16"):
                folder = Path(tmp) / f"c{seed}{precision}"
                spec = {"mode": "curve", "threads": args.threads,
                        "config": config(args, precision, folder, seed, args.steps)}  # fmt: skip
                results["curves"][f"{precision}-{seed}"] = launch(spec)["loss"]
                print(f"curve {precision} seed {seed}: {results['curves'][f'{precision}-{seed}']}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    print(tables(results))


def tables(results: dict) -> str:
    """Markdown of a results JSON: step times and ratios, and the loss-curve comparison."""
    lines = [
        f"Load average {results['load_average']:.1f} at the start, {results['cpus']} cores; fastest median of the "
        "rounds.",
        "",
        "| precision | cached WSPO step (s) | bare policy step (s) | cached / bare |",
        "|---|---|---|---|",
    ]
    best = {}
    for precision, rounds in results["steps"].items():
        cached = min(r["cached"] for r in rounds)
        bare = min(r["bare"] for r in rounds)
        best[precision] = cached
        lines.append(f"| {precision} | {cached:.3f} | {bare:.3f} | {cached / bare:.2f}x |")
    if {"fp32", "bf16"} <= best.keys():
        lines.append(f"\nbf16 cached step: {best['fp32'] / best['bf16']:.2f}x faster than fp32")
    curves = results.get("curves", {})
    seeds = sorted({int(k.split("-")[1]) for k in curves})
    if len(seeds) >= 2:
        steps = min(len(v) for v in curves.values())
        noise = [
            statistics.pstdev([curves[f"fp32-{s}"][t] for s in seeds]) for t in range(steps)
        ]  # fp32 spread over seeds
        gap = [
            statistics.mean(abs(curves[f"bf16-{s}"][t] - curves[f"fp32-{s}"][t]) for s in seeds) for t in range(steps)
        ]
        lines += ["", "| step | fp32 spread over seeds (std) | mean abs bf16 - fp32, same seed |", "|---|---|---|"]
        lines += [f"| {t + 1} | {noise[t]:.4f} | {gap[t]:.4f} |" for t in range(steps)]
        signed = [curves[f"bf16-{s}"][t] - curves[f"fp32-{s}"][t] for s in seeds for t in range(1, steps)]
        lines.append(
            f"\nAfter the first update, bf16 - fp32 at the same seed averages {statistics.mean(signed):+.3f} and is "
            f"positive in {sum(d > 0 for d in signed)} of {len(signed)} (seed, step) pairs."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
