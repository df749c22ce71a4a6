"""Start-up of the `w2s` commands that load no model: whole-process wall time of `w2s --help`, `w2s cache --help`,
`w2s verify CACHE` and `w2s inspect CACHE`, for two installs of w2s side by side (before: an older checkout's
`w2s`; after: this one's), run interleaved (before, after, after, before, ...) so that the machine's drift
affects both; the ratio is the median of the pair-by-pair ratios. Also records which model libraries each
command imports (in a fresh interpreter of the same install).

    .venv/bin/python benchmarks/startup.py --before /tmp/base/.venv/bin/w2s --cache runs/tiny/cache \
        --out runs/bench/startup.json --doc docs/performance.md

--doc FILE replaces the text between `<!-- startup-table -->` and `<!-- /startup-table -->` in FILE with the table;
--from-json REPORT writes the table of an earlier run's report instead of measuring.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.doc_tables import markers, write_between  # noqa: E402
from w2s.io import atomic_write_json  # noqa: E402

MODEL_LIBRARIES = ("torch", "transformers", "deepspeed", "datasets", "vllm", "ray", "accelerate")
MARKERS = markers("startup-table")
PROBE = f"""
import sys
from w2s.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("MODEL_LIBRARIES", sorted(m for m in {MODEL_LIBRARIES!r} if m in sys.modules), file=sys.stderr)
"""


def commands(cache: Path) -> dict[str, list[str]]:
    return {
        "w2s --help": ["--help"],
        "w2s cache --help": ["cache", "--help"],
        "w2s verify CACHE": ["verify", str(cache)],
        "w2s inspect CACHE": ["inspect", str(cache)],
    }


def wall_seconds(program: Path, words: list[str], cwd: Path) -> float | str:
    """One whole run of `program words`, start to exit, in seconds; a run that fails gives its exit status and the
    end of its error output instead (it is reported, and its pair is left out of the figures)."""
    start = time.perf_counter()
    done = subprocess.run([str(program), *words], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return f"exit {done.returncode}: {' '.join(done.stderr.split())[-300:]}"
    return seconds


def model_libraries(program: Path, words: list[str], cwd: Path) -> list[str]:
    """The model libraries `program words` imports, read in a fresh interpreter of the program's install."""
    python = program.parent / "python"
    done = subprocess.run([str(python), "-c", PROBE, *words], cwd=cwd, capture_output=True, text=True)
    line = next((x for x in done.stderr.splitlines() if x.startswith("MODEL_LIBRARIES ")), None)
    if line is None:
        raise SystemExit(f"{python}: the import probe of {words} failed: {done.stderr.strip()[-500:]}")
    return ast.literal_eval(line.removeprefix("MODEL_LIBRARIES "))


def interleaved(before: Path, after: Path, words: list[str], runs: int, cwd: Path) -> dict[str, list]:
    """`runs` runs of each install, in turn (the order swapped every run), after one warm-up run of each."""
    wall_seconds(before, words, cwd), wall_seconds(after, words, cwd)  # warm-up: file caches for both
    times: dict[str, list] = {"before": [], "after": []}
    for run in range(runs):
        order = (("before", before), ("after", after))
        for label, program in order if run % 2 == 0 else order[::-1]:
            times[label].append(wall_seconds(program, words, cwd))
    return times


def measure(before: Path, after: Path, cache: Path, runs: int, cwd: Path) -> dict:
    """Per command: every run's seconds (or failure) of both installs, the medians and the median ratio
    after/before over the pairs where both succeeded, and the model libraries each install imports."""
    results = {}
    for name, words in commands(cache).items():
        times = interleaved(before, after, words, runs, cwd)
        both = zip(times["before"], times["after"])
        pairs = [(b, a) for b, a in both if isinstance(b, float) and isinstance(a, float)]
        if not pairs:
            raise SystemExit(f"{name}: no pair of runs succeeded: {times}")
        ratios = [a / b for b, a in pairs]
        results[name] = {
            "seconds": times,
            "failed_runs": {side: [t for t in times[side] if isinstance(t, str)] for side in times},
            "before_median_s": statistics.median(b for b, _ in pairs),
            "after_median_s": statistics.median(a for _, a in pairs),
            "pairs": len(pairs),
            "ratio_median": statistics.median(ratios),
            "ratio_range": [min(ratios), max(ratios)],
            "model_libraries": {side: model_libraries(program, words, cwd) for side, program in
                                (("before", before), ("after", after))},
        }  # fmt: skip
        done = results[name]
        print(f"{name}: {done['before_median_s']:.2f} s -> {done['after_median_s']:.2f} s "
              f"(x{done['ratio_median']:.2f}); failed: {done['failed_runs']}", flush=True)  # fmt: skip
    return results


def table(report: dict) -> str:
    """The markdown table of a report (docs/performance.md's start-up section)."""
    rows = [
        "| command | before (s) | after (s) | after / before | pairs | failed runs (before, after) "
        "| model libraries imported before | after |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for name, r in report["commands"].items():
        low, high = r["ratio_range"]
        libraries = [", ".join(r["model_libraries"][side]) or "none" for side in ("before", "after")]
        failed = ", ".join(str(len(r["failed_runs"][side])) for side in ("before", "after"))
        rows.append(
            f"| `{name}` | {r['before_median_s']:.2f} | {r['after_median_s']:.2f} | "
            f"{r['ratio_median']:.2f} ({low:.2f}-{high:.2f}) | {r['pairs']} | {failed} | {libraries[0]} | "
            f"{libraries[1]} |"
        )
    load = report.get("load_average")
    load_text = f", load average {load[0]:.1f} at the start, {load[1]:.1f} at the end" if load else ""
    return "\n".join(rows) + (
        f"\n\nMedians of {report['runs']} interleaved whole-process runs each ({report['machine']}{load_text}); the "
        f"ratio is the median of the run-by-run ratios (their range in brackets), over the pairs where both runs "
        f"succeeded (a failed run's exit status and error are in the JSON report). Before: {report['before_label']}; "
        f"after: {report['after_label']}. CACHE: {report['cache_label']}."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="the baseline's `w2s` program")
    parser.add_argument("--after", type=Path, default=Path(sys.executable).parent / "w2s", help="default: this one")
    parser.add_argument("--before-label", default="the baseline", help="what --before is, for the table")
    parser.add_argument("--after-label", default="this checkout", help="what --after is, for the table")
    parser.add_argument("--cache", type=Path, help="a finished cache for verify and inspect")
    parser.add_argument("--cache-label", default="", help="what the cache is, for the table")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "startup.json")
    parser.add_argument("--doc", type=Path, help="write the table between the startup-table markers")
    parser.add_argument("--from-json", type=Path, help="an earlier run's report: write its table, measure nothing")
    args = parser.parse_args()
    if args.from_json is not None:
        return write_table(json.loads(args.from_json.read_text()), args.doc)
    if args.before is None or args.cache is None:
        parser.error("--before and --cache are needed to measure (or --from-json REPORT)")
    cache = args.cache.resolve()
    load_start = os.getloadavg()[0]
    results = measure(args.before.resolve(), args.after.resolve(), cache, args.runs, cwd=cache.parent)
    report = {
        "load_average": [load_start, os.getloadavg()[0]],
        "runs": args.runs,
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
        "before_label": args.before_label,
        "after_label": args.after_label,
        "cache_label": args.cache_label or str(cache),
        "commands": results,
    }
    atomic_write_json(args.out, report)
    return write_table(report, args.doc)


def write_table(report: dict, doc: Path | None) -> int:
    """Prints the report's table, and writes it between the markers of `doc` when given."""
    print(table(report))
    if doc is not None:
        write_between(doc, MARKERS, table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
