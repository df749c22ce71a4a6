"""Benchmark: what hashing every shard as it is read costs a training step (a script, not a test).

The trainer's reader (`Cache.read_shard`) reads each shard's whole file (or every file of a Zarr shard's folder)
once, hashes it against the manifest and parses only the columns the loss uses from those bytes. Before, it read
only those columns from disk and hashed nothing. This script trains the same short run both ways in one process,
interleaved (--rounds), the "unhashed" way by putting the old read back for that run only, and prints:

  - the reader's share of step time (`read_seconds` / `step_seconds` of metrics.jsonl) and the median step time of
    each, and their ratio;
  - a direct timing of one pass over every shard with the trainer's columns, hashed and not (fastest of 5), and
    that difference as a share of an epoch's training time: the cost hashing adds per epoch;
  - the same direct timing on made-up shards of real size (--big-rows rows of 64 prompt and 192 response tokens,
    full float32 store with the strong reference), as microseconds per 1000 response tokens: multiply by a real
    run's response tokens per step and divide by its step time for the share hashing would take there.

    .venv/bin/python benchmarks/read_hashing.py [--world PATH] [--cache PATH] [--format parquet] [--steps 30]

Without --cache, a cache of the world's cache split is built in a temporary folder (both formats, with the strong
reference, shards of --rows-per-shard rows). Without --world, runs/tiny/world, else the test suite's micro world
is built in a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.cache_throughput import find_world  # noqa: E402


@contextlib.contextmanager
def unhashed():
    """The reader as it was: the shard's columns read from disk by path, nothing hashed (this benchmark only)."""
    from w2s.cache.formats import get_format
    from w2s.cache.store import Cache

    hashed = Cache.read_shard

    def read_shard(self, index, fmt=None, columns=None):
        fmt = self.require_format(fmt)
        return get_format(fmt).read(self.shard_path(index, fmt), columns)

    Cache.read_shard = read_shard
    try:
        yield
    finally:
        Cache.read_shard = hashed


def build_cache(world: Path, out: Path, rows_per_shard: int) -> Path:
    from w2s.cache.build import build_cache, setup
    from w2s.cache.config import CacheConfig
    from w2s.source import DataSource

    config = CacheConfig(
        out_dir=str(out),
        data=DataSource(str(world / "data" / "cache.jsonl")),
        weak_base=str(world / "weak_base"),
        weak_aligned=str(world / "weak_aligned"),
        strong_ref=str(world / "strong_base"),
        format="both",
        rows_per_shard=rows_per_shard,
    )
    build_cache(setup(config))
    return out


def train_once(args: argparse.Namespace, out: Path) -> dict:
    """One short run; its steps' median time and the reader's share of the summed step time."""
    from w2s.train import recipe
    from w2s.train.config import TrainConfig

    config = TrainConfig(
        cache_dir=str(args.cache),
        cache_format=args.format,
        policy=str(args.policy),
        out_dir=str(out),
        max_steps=args.steps,
        epochs=args.epochs,
        micro_batch_size=args.micro_batch_size,
        grad_accum=1,
        lr=1e-4,
        check_rows=0,
        log_every=10**9,
        verify_cache="sizes",
    )
    run = recipe.setup(config)
    rows = recipe.train(run).rows
    return {
        "step_ms": 1000 * statistics.median(r["step_seconds"] for r in rows),
        "read_share": sum(r["read_seconds"] for r in rows) / sum(r["step_seconds"] for r in rows),
        "steps_per_epoch": run.reader.steps_per_epoch(),
    }


def read_pass(cache_dir: Path, fmt: str, passes: int = 5) -> float:
    """Fastest of `passes` reads of every shard with the columns the trainer reads."""
    from w2s.cache.store import Cache
    from w2s.train.reader import ROW_COLUMNS, default_fields

    cache, best = Cache.open(cache_dir), float("inf")
    columns = (*ROW_COLUMNS, *default_fields("strong_ref" in cache.provenance.get("models", {})))
    for _ in range(passes):
        started = time.perf_counter()
        for index in range(len(cache.shards)):
            cache.read_shard(index, fmt, columns)
        best = min(best, time.perf_counter() - started)
    return best


def big_cache(out: Path, fmt: str, rows: int, shards: int = 4, prompt: int = 64, response: int = 192) -> Path:
    """A cache of made-up shards of real size (random ids and log-probs: incompressible, so the bytes are an upper
    bound), written by the cache's own writers with a real manifest."""
    import numpy as np

    from w2s.cache.config import CacheConfig
    from w2s.cache.formats import get_format
    from w2s.cache.manifest import MANIFEST, cache_layout, file_entry, manifest_body, shard_entry
    from w2s.io import atomic_write_json
    from w2s.schemas.cache import ShardData, shard_name

    config = CacheConfig(out_dir=str(out), format=fmt)
    provenance = {"num_shards": 1, "models": {"strong_ref": {}}}
    layout, rng, entries = cache_layout(config, provenance), np.random.default_rng(0), []
    names = ("logp_weak_base", "logp_weak_aligned", "weak_log_ratio", "logp_strong_ref")
    for index in range(shards):
        tokens = rows * response
        values = {name: -rng.random(tokens, dtype=np.float32) for name in names}
        shard = ShardData(
            row_id=np.arange(index * rows, (index + 1) * rows, dtype=np.int64),
            example_id=[f"row-{index * rows + i}" for i in range(rows)],
            input_ids=rng.integers(1, 49152, rows * (prompt + response)).astype(np.int32),
            input_offsets=np.arange(rows + 1, dtype=np.int64) * (prompt + response),
            prompt_len=np.full(rows, prompt, np.int32),
            response_len=np.full(rows, response, np.int32),
            weak_seq_reward=values["weak_log_ratio"].reshape(rows, response).sum(1),
            token_values=values,
            offsets=np.arange(rows + 1, dtype=np.int64) * response,
        )
        path = out / shard_name(index, fmt)
        path.parent.mkdir(parents=True, exist_ok=True)
        get_format(fmt).write(shard, path, layout)
        entries.append(
            shard_entry(index, index * rows, rows, rows * (prompt + response), tokens, {fmt: file_entry(path)})
        )
    atomic_write_json(out / MANIFEST, manifest_body(provenance, entries, config))
    return out


def big_shards(args: argparse.Namespace, tmp: Path) -> None:
    """Hashed and unhashed reads of made-up shards of real size, per format."""
    from w2s.cache.store import Cache

    print(f"\nmade-up shards of real size: {args.big_rows} rows x (64 prompt + 192 response tokens), 4 shards")
    print("| format | MB | read unhashed (ms) | read hashed (ms) | added (us per 1000 response tokens) |")
    print("|---|---:|---:|---:|---:|")
    for fmt in ("parquet", "zarr"):
        cache_dir = big_cache(tmp / f"big-{fmt}", fmt, args.big_rows)
        with unhashed():
            plain = read_pass(cache_dir, fmt)
        checked = read_pass(cache_dir, fmt)
        cache = Cache.open(cache_dir)
        tokens = cache.totals["response_tokens"]
        added = 1e6 * (checked - plain) / (tokens / 1000)
        print(
            f"| {fmt} | {cache.totals['bytes'] / 1e6:.1f} | {1000 * plain:.1f} | {1000 * checked:.1f} | {added:.1f} |"
        )


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, list[dict]]:
    """Training runs of both readers, interleaved over --rounds (a first, unrecorded run warms caches up)."""
    results: dict[str, list[dict]] = {"hashed": [], "unhashed": []}
    train_once(args, tmp / "warm-up")
    for round_ in range(args.rounds):
        for name in ("unhashed", "hashed") if round_ % 2 else ("hashed", "unhashed"):
            with unhashed() if name == "unhashed" else contextlib.nullcontext():
                results[name].append(train_once(args, tmp / f"{name}-{round_}"))
    return results


def report(args: argparse.Namespace, runs: dict[str, list[dict]]) -> None:
    from w2s.cache.store import Cache

    best = {name: min(rs, key=lambda r: r["step_ms"]) for name, rs in runs.items()}
    share = {name: statistics.median(r["read_share"] for r in rs) for name, rs in runs.items()}
    with unhashed():
        plain = read_pass(args.cache, args.format)
    checked = read_pass(args.cache, args.format)
    files = [s["files"][args.format]["bytes"] for s in Cache.open(args.cache).shards]
    epoch_seconds = best["unhashed"]["steps_per_epoch"] * best["unhashed"]["step_ms"] / 1000
    print(f"\n{args.cache} ({args.format}, {len(files)} shards, {sum(files) / 1e6:.2f} MB), policy {args.policy}")
    print(f"{args.steps} steps of {args.micro_batch_size} rows, {args.rounds} interleaved rounds; ", end="")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print("| reader | step time (ms, fastest median) | reader share of step time (median) |")
    print("|---|---:|---:|")
    for name in ("unhashed", "hashed"):
        print(f"| {name} | {best[name]['step_ms']:.1f} | {100 * share[name]:.2f}% |")
    print(f"\none pass over every shard: {1000 * plain:.1f} ms unhashed, {1000 * checked:.1f} ms hashed")
    print(f"step time ratio hashed/unhashed: {best['hashed']['step_ms'] / best['unhashed']['step_ms']:.3f}")
    print(f"hashing cost per epoch / epoch step time: {100 * (checked - plain) / epoch_seconds:.2f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, help="a world folder (default: runs/tiny/world, else a micro world)")
    parser.add_argument("--cache", type=Path, help="a cache built with the strong reference (default: built here)")
    parser.add_argument("--policy", type=Path, help="default: the world's strong_base")
    parser.add_argument("--format", default="parquet", choices=("parquet", "zarr"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=100, help="enough for --steps; each epoch re-reads every shard")
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--rows-per-shard", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--big-rows", type=int, default=256, help="rows per made-up shard of real size (0: skip)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        world, _ = find_world(args.world, tmp)
        args.policy = args.policy or world / "strong_base"
        args.cache = args.cache or build_cache(world, tmp / "cache", args.rows_per_shard)
        report(args, measure(args, tmp))
        if args.big_rows:
            big_shards(args, tmp)


if __name__ == "__main__":
    main()
