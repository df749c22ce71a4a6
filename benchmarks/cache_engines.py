"""The same cache built three ways, side by side in one run: one process (`w2s cache`), N processes through
`num_shards`/`shard_index` plus `w2s cache merge`, and N Ray actors (`w2s cache engine=ray`, on a local Ray started
here first; its start-up is timed apart). Each engine builds the cache twice, with big and with small shards: the
difference in wall time over the difference in shard count is the engine's cost per shard, which is what the
shard-size guidance in docs/scaling.md comes from.

    python benchmarks/cache_engines.py --world runs/tiny/world --rows 2000 --workers 2 --shard-rows 400 10

Every build runs the `w2s` command line in a fresh process, as a user would, so Python and model start-up count.
On a CPU, one process uses every core's torch threads (and, as a second row, one thread), and N workers or actors
one N-th each. The last column turns the cost per shard into rows: the rows the engine scores in that time (wall
time including start-up, so it errs high); a shard of 20 times as many rows spends under 5% on its own overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENGINES = ("one process", "one process, 1 thread", "shard_index + merge", "ray")


def make_dataset(world: Path, rows: int, out: Path) -> Path:
    """`rows` rows cycled from the world's cache split, with fresh example ids."""
    source = [json.loads(line) for line in (world / "data" / "cache.jsonl").read_text().splitlines() if line.strip()]
    picked = [{**source[i % len(source)], "example_id": f"bench-{i}"} for i in range(rows)]
    out.write_text("".join(json.dumps(row) + "\n" for row in picked))
    return out


def w2s(args: list[str], threads: int, extra_env: dict | None = None) -> subprocess.Popen:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "TQDM_DISABLE": "1",
        "HF_HUB_OFFLINE": "1",
        **(extra_env or {}),
    }
    return subprocess.Popen([sys.executable, "-m", "w2s.cli", *args], env=env, stdout=subprocess.DEVNULL)


def wait(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"a build failed: {proc.args}")


def overrides(world: Path, dataset: Path, out: Path, shard_rows: int) -> list[str]:
    return [
        f"cache.out_dir={out}",
        f"cache.data.path={dataset}",
        f"cache.weak_base={world / 'weak_base'}",
        f"cache.weak_aligned={world / 'weak_aligned'}",
        "cache.strong_ref=",
        f"cache.rows_per_shard={shard_rows}",
        "cache.format=parquet",
    ]


def build(engine: str, workers: int, cores: int, keys: list[str], ray_address: str) -> float:
    """Wall seconds of one build by `engine`, merge included."""
    config = ["--config", os.devnull]
    started = time.time()
    if engine.startswith("one process"):
        wait([w2s(["cache", *config, *keys], 1 if engine.endswith("1 thread") else cores)])
    elif engine == "shard_index + merge":
        share = max(1, cores // workers)
        wait(
            [w2s(["cache", *config, *keys, f"num_shards={workers}", f"shard_index={i}"], share) for i in range(workers)]
        )
        out = next(k.split("=", 1)[1] for k in keys if k.startswith("cache.out_dir="))
        wait([w2s(["cache", *config, "merge", out], 1)])
    else:
        share = max(1, cores // workers)
        ray_keys = ["engine=ray", f"ray_actors={workers}", f"ray_address={ray_address}"]
        wait([w2s(["cache", *config, *keys, *ray_keys], share)])
    return time.time() - started


def start_ray(cpus: int) -> tuple[str, float]:
    """A local Ray of `cpus` CPUs, started in this process (stopped by `ray.shutdown()`, which ends only what it
    started); its address for the builds to join, and how long it took to start."""
    import ray

    started = time.time()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="warning")
    return ray.get_runtime_context().gcs_address, time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, default=Path("runs/tiny/world"))
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-rows", type=int, nargs=2, default=(400, 10), metavar=("BIG", "SMALL"))
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    scratch = Path(tempfile.mkdtemp(prefix="w2s-engines-"))
    dataset = make_dataset(args.world.resolve(), args.rows, scratch / "rows.jsonl")
    address, ray_start = start_ray(max(cores, args.workers))
    results = {}
    try:
        for engine in ENGINES:
            for shard_rows in args.shard_rows:
                out = scratch / "cache"
                shutil.rmtree(out, ignore_errors=True)
                keys = overrides(args.world.resolve(), dataset, out, shard_rows)
                results[engine, shard_rows] = build(engine, args.workers, cores, keys, address)
                tokens = json.loads((out / "manifest.json").read_text())["totals"]["response_tokens"]
    finally:
        import ray

        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    report(results, args, cores, tokens, ray_start)


def report(results: dict, args, cores: int, tokens: int, ray_start: float) -> None:
    big, small = args.shard_rows
    shards = lambda rows: -(-args.rows // rows)  # noqa: E731
    base = results["one process", big]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.rows} rows ({tokens} response tokens, weak pair), {args.world}; {cores} cores, load average {load}")
    print(f"workers/actors: {args.workers}; local Ray start-up (`ray.init`, not counted below): {ray_start:.1f} s\n")
    print(
        f"| engine | wall s, {shards(big)} shards of {big} | response tokens/s | vs one process | wall s, "
        f"{shards(small)} shards of {small} | cost per extra shard (s) | = scoring time of N rows |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for engine in ENGINES:
        t_big, t_small = results[engine, big], results[engine, small]
        per_shard = (t_small - t_big) / (shards(small) - shards(big))
        print(
            f"| {engine} | {t_big:.1f} | {tokens / t_big:,.0f} | {base / t_big:.2f}x | {t_small:.1f} | "
            f"{per_shard:.3f} | {per_shard * args.rows / t_big:.1f} |"
        )


if __name__ == "__main__":
    main()
