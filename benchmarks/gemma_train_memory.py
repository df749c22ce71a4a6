"""Peak memory of cross-tokenizer WSPO training of Gemma-3-270M (262,144-entry vocabulary) against the formula.

    .venv/bin/python benchmarks/gemma_train_memory.py --cache runs/science-real/cache --policy runs/real/strong_gemma

Each setting runs `w2s train` for two steps in its own process (fp32, on the CPU) and reads that process's peak
resident memory (`ru_maxrss`); a process that imports the same libraries and loads nothing gives the baseline that
is taken off. The formula is `w2s.memory.train_memory` for one device (weights, gradients, Adam's states,
activations and the chunked log-prob step of the output layer over micro_batch x longest row tokens). Printed: one
row per setting with both numbers and their ratio, and the same as JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from w2s.memory import GIB, Shape, train_memory  # noqa: E402

MEASURE = """
import json, resource, sys
from w2s.cli import main
code = main(sys.argv[1:]) if len(sys.argv) > 1 else 0
print("W2S_PEAK " + json.dumps({"code": code, "kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""
PARTS = ("weights", "gradients", "optimizer", "activations", "logprobs")
BASELINE = "import w2s.train.recipe, w2s.cache.build, deepspeed, transformers, peft\n" + MEASURE


def peak_kib(script: str, args: list[str]) -> int:
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("W2S_PEAK ")]
    if not lines or json.loads(lines[-1][9:])["code"] != 0:
        raise SystemExit(f"w2s train {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return json.loads(lines[-1][9:])["kib"]


def longest_row(cache: Path) -> int:
    import pyarrow.parquet as pq

    table = pq.read_table(sorted((cache / "parquet").glob("*.parquet")), columns=["input_ids"])
    return max(len(ids) for ids in table.column("input_ids").to_pylist())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True, help="a cross-tokenizer cache with Gemma as strong_ref")
    parser.add_argument("--policy", type=Path, required=True, help="Gemma-3-270M (the real world's strong_gemma)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    from transformers import AutoConfig

    shape, max_len = Shape.of(AutoConfig.from_pretrained(args.policy)), longest_row(args.cache)
    baseline = peak_kib(BASELINE, [])
    rows = []
    for lora, micro_batch in ((False, 4), (False, 8), (True, 4), (True, 8)):
        with tempfile.TemporaryDirectory() as tmp:
            cli = ["train", "--config", str(REPO / "configs" / "real.yaml"), f"run_root={tmp}",
                   f"cache_dir={args.cache}", f"policy={args.policy}", f"train.out_dir={tmp}/wspo",
                   f"train.lora={str(lora).lower()}", "train.max_steps=2", f"train.micro_batch_size={micro_batch}",
                   "train.precision=fp32", "train.log_every=1"]  # fmt: skip
            measured = (peak_kib(MEASURE, cli) - baseline) * 1024
        formula = train_memory(shape, micro_batch, max_len, gpus=1, zero_stage=0, b=4, lora_rank=8 if lora else 0)
        rows.append({"setting": "LoRA r=8" if lora else "every weight", "micro_batch": micro_batch,
                     "max_len": max_len, "measured_gib": round(measured / GIB, 3),
                     "formula_gib": round(formula.total / GIB, 3), "ratio": round(measured / formula.total, 3),
                     "formula_parts_gib": {k: round(getattr(formula, k) / GIB, 3) for k in PARTS}})  # fmt: skip
    print(f"Gemma-3-270M ({shape.params / 1e6:.0f}M parameters, vocabulary {shape.vocab:,}), fp32 on the CPU, "
          f"baseline {baseline / 2**20:.2f} GiB taken off")  # fmt: skip
    print("| setting | micro-batch x longest row | measured peak (GiB) | formula (GiB) | measured / formula |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['setting']} | {row['micro_batch']} x {row['max_len']} | {row['measured_gib']:.2f} | "
              f"{row['formula_gib']:.2f} | {row['ratio']:.2f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"baseline_gib": baseline / 2**20, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
