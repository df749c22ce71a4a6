"""Bytes per token of each cache store, side by side in one run, with read and write throughput and what the
16-bit storage dtypes cost the trained model (a script, not a test).

    .venv/bin/python benchmarks/cache_storage.py [--world PATH] [--rows N] [--steps 30] [--encodings]
                                                 [--readme docs/cache.md]

The weak pair and the strong reference score the rows once; the same scored shards are then written in every
store (full, compact), storage dtype and format, through the cache's own writers, plus "before": the writers
this project had until now (pyarrow's defaults: dictionary encoding on every column and zstd's default level, the
Arrow schema copied into every footer; Zarr with default codecs, sharding and pretty-printed metadata). Bytes per
response token count every file of the store (footers and metadata included; the prompt's ids are in each row),
for a weak-pair cache and for one that also caches the strong reference. Write throughput: response tokens per
second of the format's `write`; read: of reading every shard with the columns the trainer reads (before: every
column, as the trainer did). Then `storage_precision.py` trains the same WSPO run on each dtype (--steps).

--encodings adds the measurements behind the writers' choices: each Parquet column under each candidate
encoding, and the zstd (Parquet) and Blosc/zstd (Zarr) levels against size and write speed.
--readme FILE replaces the text between `<!-- storage-table -->` and `<!-- /storage-table -->` in FILE with the
generated tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import storage_legacy  # noqa: E402
from benchmarks.cache_throughput import cache_config, find_world, subset_file  # noqa: E402
from benchmarks.storage_precision import compare, table  # noqa: E402

VARIANTS = (("full", "float32"), ("full", "float16"), ("compact", "float32"), ("compact", "float16"))
VARIANTS += (("compact", "bfloat16"),)
FORMATS = ("parquet", "zarr")
MARKERS = ("<!-- storage-table -->", "<!-- /storage-table -->")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, help="world folder (weak_base/, weak_aligned/, strong_base/, data/)")
    parser.add_argument("--dataset", default="cache.jsonl", help="jsonl file under <world>/data, or a path")
    parser.add_argument("--rows", type=int, default=1000, help="first N rows of the dataset")
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--rows-per-shard", type=int, default=256, help="the cache's default")
    parser.add_argument("--steps", type=int, default=30, help="WSPO steps per storage dtype (0: skip)")
    parser.add_argument("--encodings", action="store_true", help="also print the per-column and level sweeps")
    parser.add_argument("--readme", type=Path, help="write the tables between the storage-table markers")
    return parser.parse_args()


def score(world: Path, dataset: Path, args: argparse.Namespace, tmp: Path):
    """The build's job (with the strong reference) and its scored shards, in shard order."""
    from w2s.cache.build import rows_of_shard, score_shard, setup

    config = cache_config(
        world,
        dataset,
        tmp / "scored",
        args.max_len,
        backend="transformers",
        strong_ref=str(world / "strong_base"),
        rows_per_shard=args.rows_per_shard,
    )
    job = setup(config)
    return job, [score_shard(job, rows_of_shard(job, index)) for index in job.my_shards]


def without_ref(shard):
    """The shard as a weak-pair-only build would have scored it."""
    values = {k: v for k, v in shard.token_values.items() if k != "logp_strong_ref"}
    return dataclasses.replace(shard, token_values=values)


def write_store(job, shards, out: Path, store: str, dtype: str, fmt: str, with_ref: bool) -> tuple[int, float]:
    """Writes the shards as a finished cache (manifest too) at `out`; returns (bytes, seconds in `write`)."""
    from w2s.cache.formats import get_format
    from w2s.cache.manifest import MANIFEST, cache_layout, file_entry, manifest_body, shard_entry
    from w2s.io import atomic_write_json
    from w2s.schemas.cache import shard_name

    config = dataclasses.replace(job.config, out_dir=str(out), store=store, storage_dtype=dtype, format=fmt)
    models = {k: v for k, v in job.provenance["models"].items() if with_ref or k != "strong_ref"}
    provenance = {**job.provenance, "models": models, "storage_dtype": dtype}
    provenance |= {"store": store} if store != "full" else {}
    layout = cache_layout(config, provenance)
    seconds, entries, row_start = 0.0, [], 0
    for index, shard in zip(job.my_shards, shards):
        shard = shard if with_ref else without_ref(shard)
        path = out / shard_name(index, fmt)
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        get_format(fmt).write(shard, path, layout)
        seconds += time.perf_counter() - started
        tokens = int(shard.input_offsets[-1])
        entries.append(shard_entry(index, row_start, shard.num_rows, tokens, shard.num_tokens, {fmt: file_entry(path)}))
        row_start += shard.num_rows
    atomic_write_json(out / MANIFEST, manifest_body(provenance, entries, config))
    return sum(e["files"][fmt]["bytes"] for e in entries), seconds


def read_seconds(folder: Path, fmt: str, columns) -> float:
    """Fastest of three passes reading every shard of a cache with `columns` (None: all)."""
    from w2s.cache.store import Cache

    cache, best = Cache.open(folder), float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for index in range(len(cache.shards)):
            cache.read_shard(index, fmt, columns)
        best = min(best, time.perf_counter() - started)
    return best


def measure(job, shards, tmp: Path) -> list[dict]:
    """One row per (store, dtype, format): bytes per response token with and without the reference, throughput."""
    from w2s.schemas.cache import TRAINING_FIELDS

    tokens = sum(shard.num_tokens for shard in shards)
    rows = []
    plan = [("before", dtype, fmt) for dtype in ("float32", "float16") for fmt in FORMATS]
    plan += [(store, dtype, fmt) for store, dtype in VARIANTS for fmt in FORMATS]
    for store, dtype, fmt in plan:
        sizes, write = {}, 0.0
        for with_ref in (False, True):
            out = tmp / f"{store}-{dtype}-{fmt}-{'ref' if with_ref else 'pair'}"
            with storage_legacy.writers(store == "before"):
                size, seconds = write_store(
                    job, shards, out, "full" if store == "before" else store, dtype, fmt, with_ref
                )
            sizes[with_ref] = size / tokens
            write = seconds if with_ref else write
        reads = read_seconds(out, fmt, None if store == "before" else TRAINING_FIELDS)
        rows.append(
            {
                "store": store,
                "dtype": dtype,
                "format": fmt,
                "pair": sizes[False],
                "ref": sizes[True],
                "write": tokens / write,
                "read": tokens / reads,
                "path": out,
            }
        )
    return rows


def size_table(rows: list[dict]) -> str:
    lines = [
        "| store | storage dtype | format | bytes/token, weak pair | bytes/token, + strong ref | "
        "write (k tokens/s) | read for training (k tokens/s) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        store = "before (full)" if r["store"] == "before" else r["store"]
        lines.append(
            f"| {store} | {r['dtype']} | {r['format']} | {r['pair']:.2f} | {r['ref']:.2f} | "
            f"{r['write'] / 1e3:,.0f} | {r['read'] / 1e3:,.0f} |"
        )
    return "\n".join(lines)


def targets(rows: list[dict]) -> str:
    """One line per format: the float32 full store against 12 bytes per token, the compact store against 4."""
    lines = []
    for fmt in FORMATS:
        full = next(r for r in rows if (r["store"], r["dtype"], r["format"]) == ("full", "float32", fmt))
        compact = [r for r in rows if r["store"] == "compact" and r["dtype"] != "float32" and r["format"] == fmt]
        best = min(compact, key=lambda r: r["pair"])
        verdict = lambda value, goal: "met" if value <= goal else "NOT met"  # noqa: E731
        lines.append(
            f"- {fmt}: full float32 {full['pair']:.2f} bytes/token for a weak-pair cache (target 12: "
            f"{verdict(full['pair'], 12)}; {full['ref']:.2f} with the strong reference); compact {best['dtype']} "
            f"{best['pair']:.2f} (target 4: {verdict(best['pair'], 4)}; {best['ref']:.2f} with the strong reference)"
        )
    return "\n".join(lines)


def encodings_report(job, shards) -> str:
    """The per-column and level sweeps behind the writers' choices (Parquet columns, Parquet and Zarr levels)."""
    return "\n\n".join(
        [storage_legacy.column_sweep(shards), storage_legacy.level_sweep(shards, tempfile.mkdtemp(prefix="w2s-lv-"))]
    )


def write_readme(path: Path, text: str) -> None:
    """Replaces what lies between the storage-table markers in `path` with `text`."""
    content = path.read_text()
    start, end = content.find(MARKERS[0]), content.find(MARKERS[1])
    if start < 0 or end < start:
        raise SystemExit(f"{path}: no {MARKERS[0]} ... {MARKERS[1]} markers to write between")
    path.write_text(content[: start + len(MARKERS[0])] + "\n" + text + "\n" + content[end:])
    print(f"\nwrote the tables into {path}")


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="w2s-storage-") as name:
        tmp = Path(name)
        world, origin = find_world(args.world, tmp)
        dataset = subset_file(world, args.dataset, args.rows, tmp)
        job, shards = score(world, dataset, args, tmp)
        tokens = sum(shard.num_tokens for shard in shards)
        ids = sum(int(shard.input_offsets[-1]) for shard in shards)
        label, rows_scored = world if origin == "given" else origin, sum(s.num_rows for s in shards)
        header = (
            f"`benchmarks/cache_storage.py`, {label}: {rows_scored} rows in "
            f"{len(shards)} shards of {args.rows_per_shard}, {tokens:,} response tokens, {ids / tokens:.1f} token ids "
            f"per response token; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores. SmolLM2-135M is "
            "not installed here: pass --world with weak_base/, weak_aligned/, strong_base/ and data/ for real models."
        )
        rows = measure(job, shards, tmp)
        text = header + "\n\n" + size_table(rows) + "\n\n" + targets(rows)
        if args.steps:
            caches = [(f"{r['store']} {r['dtype']}", r["path"]) for r in rows if r["format"] == "parquet"]
            caches = [c for c in caches if not c[0].startswith("before") and c[0] != "full float16"]
            text += "\n\n" + table(compare(caches, world / "strong_base", args.steps, tmp), args.steps)
        print("\n" + text)
        if args.encodings:
            print("\n" + encodings_report(job, shards))
        if args.readme:
            write_readme(args.readme, text)


if __name__ == "__main__":
    main()
