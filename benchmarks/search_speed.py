"""Search speed: incremental weak scoring against a full rescore, and the searches against the authors' loop.

    .venv/bin/python benchmarks/search_speed.py --tiny runs/world --real runs/real --out runs/search_speed.json
    .venv/bin/python benchmarks/search_speed.py --table runs/search_speed*.json --docs docs/search.md
    .venv/bin/python benchmarks/search_speed.py --table runs/search_speed_real_b.json --summary --docs README.md

(a) Weak compute against the token budget: chunk-level beam search with the weak pair rescoring every candidate
    from its first token (`WeakScorer(incremental=False)`, what the search did before and what Zhou et al.'s code
    does) and incrementally (the default), interleaved run by run on the same prompts and seeds, at three or more
    budgets (`max_new_tokens`), on the tiny world and on the real pair (Gemma-3-270M steered by SmolLM2-135M).
    Reports weak positions run per prompt (per weak model, prompts included) and strong tokens per second.
(b) On the real pair, CBS, BoN and (when `mcts` is in `w2s.search.components.SEARCHES`) MCTS as w2s runs them,
    against a batch-1 re-implementation of the authors' loop (`authors_search`: each candidate's prefix encoded
    afresh and its chunk sampled alone, each candidate rescored alone from its first token, no KV reuse): strong
    tokens per second and weak positions per second, and the ratios.

Both write one JSON report (`--out`); `--table REPORT --docs FILE` writes the tables between
`<!-- search-speed-table -->` and `<!-- /search-speed-table -->` in FILE (never typed by hand).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from doc_tables import markers, write_between  # noqa: E402

from w2s.io import atomic_write_text, read_jsonl  # noqa: E402
from w2s.models import load_causal_lm, load_tokenizer  # noqa: E402
from w2s.sampling import encode_prompt  # noqa: E402
from w2s.search.cbs import chunk_beam_search  # noqa: E402
from w2s.search.components import SEARCHES  # noqa: E402
from w2s.search.samplers import DEFAULT_SAMPLING, HFSampler, LMStepper, sample_chunk  # noqa: E402
from w2s.search.scorer import WeakScorer  # noqa: E402

MARKERS = markers("search-speed-table")
SUMMARY_MARKERS = markers("search-speed-summary")
"""The README's summary: only the searches against the authors' loop."""


def load_pair(world: Path, strong: str, aligned: str = "weak_aligned") -> SimpleNamespace:
    """The strong model and sampler, and the weak pair, of a world folder."""
    load = lambda role, name: load_causal_lm(role, str(world / name)).eval()  # noqa: E731
    strong_model = load("strong", strong)
    return SimpleNamespace(
        sampler=HFSampler(strong_model, load_tokenizer("strong", str(world / strong))),
        tuned=load("weak", aligned), untuned=load("weak", "weak_base"),
        tokenizer=load_tokenizer("weak", str(world / "weak_base")),
    )  # fmt: skip


def prompts_of(world: Path, count: int) -> list[str]:
    """The first `count` prompts of the world's held-out prompts (real world) or test split (tiny world)."""
    path = world / "data" / "prompts.jsonl"
    return [row["prompt"] for row in read_jsonl(path if path.exists() else world / "data" / "test.jsonl")[:count]]


def timed(run, *args, **kwargs) -> tuple[object, float]:
    """`run(*args, **kwargs)` and its wall seconds."""
    start = time.perf_counter()
    result = run(*args, **kwargs)
    return result, time.perf_counter() - start


def budget_rows(pair: SimpleNamespace, prompts: list[str], budgets: list[int], cbs: dict) -> list[dict]:
    """Full rescore and incremental CBS at each budget, interleaved (the order alternates prompt by prompt)."""
    rows = []
    for budget in budgets:
        totals = {mode: dict(strong=0, weak=0, scored=0, seconds=0.0) for mode in ("full", "incremental")}
        for index, prompt in enumerate(prompts):
            modes = ["full", "incremental"] if index % 2 == 0 else ["incremental", "full"]
            for mode in modes:
                scorer = WeakScorer(pair.tuned, pair.untuned, pair.tokenizer, incremental=mode == "incremental")
                args = (pair.sampler, scorer, prompt)
                result, seconds = timed(chunk_beam_search, *args, max_new_tokens=budget, seed=index, **cbs)
                total = totals[mode]
                total["strong"] += result.num_sampled
                total["weak"] += result.weak_forwarded
                total["scored"] += result.weak_tokens
                total["seconds"] += seconds
        for mode, total in totals.items():
            rows.append(dict(budget=budget, mode=mode, prompts=len(prompts), **total))
        print(f"  budget {budget}: " + "; ".join(
            f"{m} {t['weak'] / len(prompts):.0f} weak positions/prompt, {t['strong'] / t['seconds']:.1f} strong tok/s"
            for m, t in totals.items()), flush=True)  # fmt: skip
    return rows


@torch.no_grad()
def authors_search(pair, prompt: str, width: int, num_samples: int, chunk_len: int, budget: int, seed: int) -> dict:
    """Zhou et al.'s chunk-level beam search loop at batch 1: per hypothesis and sample, the prefix is encoded
    afresh and one chunk sampled alone; each candidate is rescored alone from its first weak token."""
    tokenizer, eos = pair.sampler.tokenizer, pair.sampler.eos_id
    scorer = WeakScorer(pair.tuned, pair.untuned, pair.tokenizer, batch_size=1, incremental=False)
    prompt_ids, generator = encode_prompt(tokenizer, prompt), torch.Generator().manual_seed(seed)
    beam, used, sampled = [([], False, 0.0)], 0, 0  # (strong ids, finished, score)
    while used < budget and not all(done for _, done, _ in beam):
        repeats, length = (width * num_samples if used == 0 else num_samples), min(chunk_len, budget - used)
        candidates = [h for h in beam if h[1]]
        for ids, _, _ in [h for h in beam if not h[1]]:
            for _ in range(repeats):
                stepper = LMStepper(pair.sampler.model, [prompt_ids + ids])
                chunk = sample_chunk(stepper, length, eos, generator, DEFAULT_SAMPLING)[0][0]
                done = bool(chunk) and chunk[-1] == eos
                new = ids + (chunk[:-1] if done else chunk)
                text = tokenizer.decode(new, skip_special_tokens=True)
                candidates.append((new, done, scorer.score(prompt, [text], [done])[0]))
                sampled += len(chunk)
        used += length
        beam = sorted(candidates, key=lambda h: -h[2])[:width]
    return dict(strong=sampled, weak=scorer.tokens_forwarded, scored=scorer.tokens_scored)


def search_rows(pair, prompts: list[str], budget: int, cbs: dict, bon: dict, mcts: dict) -> list[dict]:
    """CBS, BoN and MCTS as w2s runs them (incremental scoring, batched) and the authors' loop, interleaved."""
    guide = SimpleNamespace(tuned=pair.tuned, untuned=pair.untuned, tokenizer=pair.tokenizer)
    names = [name for name in ("cbs", "bon", "mcts") if name in SEARCHES.names()]
    if "mcts" not in names:
        print("  mcts is not registered in SEARCHES: skipped")
    params = {"cbs": cbs, "bon": bon, "mcts": mcts}
    shapes = {"cbs": (cbs["width"], cbs["num_samples"], cbs["chunk_len"]), "bon": (1, bon["n"], budget)}
    totals: dict[str, dict] = {}
    for index, prompt in enumerate(prompts):
        for name in names:
            guide.scorer = WeakScorer(pair.tuned, pair.untuned, pair.tokenizer)
            job = SimpleNamespace(sampler=pair.sampler, params=params[name], max_new_tokens=budget, guide=guide)
            result, seconds = timed(SEARCHES.get(name)().run, job, prompt, index)
            add(totals, f"{name} (w2s)", result.num_sampled, result.weak_forwarded, result.weak_tokens, seconds)
            if name in shapes:
                out, seconds = timed(authors_search, pair, prompt, *shapes[name], budget, index)
                add(totals, f"{name} (authors' loop, batch 1)", out["strong"], out["weak"], out["scored"], seconds)
    rows = [dict(search=name, budget=budget, prompts=len(prompts), **total) for name, total in totals.items()]
    for row in rows:
        print(f"  {row['search']}: {row['strong'] / row['seconds']:.1f} strong tok/s, "
              f"{row['weak'] / row['seconds']:.0f} weak positions/s", flush=True)  # fmt: skip
    return rows


def add(totals: dict, name: str, strong: int, weak: int, scored: int, seconds: float) -> None:
    """Adds one run's counts and seconds to `totals[name]`."""
    total = totals.setdefault(name, dict(strong=0, weak=0, scored=0, seconds=0.0))
    for key, value in dict(strong=strong, weak=weak, scored=scored, seconds=seconds).items():
        total[key] += value


def per_second(row: dict, key: str) -> float:
    return row[key] / row["seconds"] if row["seconds"] > 0 else float("nan")


def budget_table(rows: list[dict]) -> str:
    """Per budget: strong tokens sampled, weak positions run (in all and per strong token) and strong tokens per
    second, full rescore against incremental. Linear growth shows as a constant count per strong token."""
    lines = [
        "| budget | strong tokens / prompt | weak positions / prompt: full | incremental | full / incremental "
        "| per strong token: full | incremental | strong tok/s: full | incremental | incremental / full |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for budget in sorted({row["budget"] for row in rows}):
        full, inc = ({row["mode"]: row for row in rows if row["budget"] == budget}[m] for m in ("full", "incremental"))
        strong = full["strong"] / full["prompts"]
        weak = [row["weak"] / row["prompts"] for row in (full, inc)]
        speed = [per_second(row, "strong") for row in (full, inc)]
        lines.append(
            f"| {budget} | {strong:.0f} | {weak[0]:,.0f} | {weak[1]:,.0f} | {weak[0] / weak[1]:.1f}x "
            f"| {weak[0] / strong:.1f} | {weak[1] / strong:.1f} "
            f"| {speed[0]:.1f} | {speed[1]:.1f} | {speed[1] / speed[0]:.2f}x |"
        )
    return "\n".join(lines)


def search_table(rows: list[dict]) -> str:
    """Each search's strong tokens and weak positions per second; its ratio to the authors' loop where there is one."""
    lines = [
        "| search | strong tok/s | weak positions run / s | weak tokens scored / s | strong tok/s vs authors' loop |",
        "|---|---:|---:|---:|---:|",
    ]
    by_name = {row["search"]: row for row in rows}
    for row in rows:
        base = by_name.get(row["search"].replace("(w2s)", "(authors' loop, batch 1)"))
        ratio = f"{per_second(row, 'strong') / per_second(base, 'strong'):.2f}x" if base and base is not row else ""
        lines.append(
            f"| {row['search']} | {per_second(row, 'strong'):.1f} | {per_second(row, 'weak'):,.1f} "
            f"| {per_second(row, 'scored'):,.1f} | {ratio} |"
        )
    return "\n".join(lines)


def tables(report: dict) -> str:
    """The markdown tables of a report, with the settings they were measured at."""
    parts = []
    for world, section in report["budgets"].items():
        parts += [f"**{world}** ({section['note']}):", "", budget_table(section["rows"]), ""]
    if report.get("searches"):
        parts += [f"**Searches on the real pair** ({report['searches']['note']}):", ""]
        parts += [search_table(report["searches"]["rows"]), ""]
    parts.append(f"Measured on {report['machine']}; `benchmarks/search_speed.py`.")
    return "\n".join(parts)


def summary(report: dict) -> str:
    """The searches' table alone, with its settings (what the README shows)."""
    searches = report["searches"]
    return "\n".join([f"Real pair, {searches['note']}; {report['machine']}:", "", search_table(searches["rows"])])


def merged(reports: list[dict]) -> dict:
    """One report from several runs (e.g. the tiny world and the real pair measured separately)."""
    report = dict(reports[0], budgets={})
    for part in reports:
        report["budgets"].update(part["budgets"])
        report["searches"] = part.get("searches") or report.get("searches")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", type=Path, help="a tiny (or micro) world folder")
    parser.add_argument("--real", type=Path, help="a real world folder (strong_gemma, weak_base, weak_aligned)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "search_speed.json")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per world")
    parser.add_argument("--tiny-budgets", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--real-budgets", type=int, nargs="+", default=[16, 32, 48])
    parser.add_argument("--search-budget", type=int, default=32, help="token budget of the searches in (b)")
    parser.add_argument("--parts", default="ab", help="a: budgets (full vs incremental), b: searches vs authors' loop")
    parser.add_argument("--table", type=Path, nargs="+", help="only print (or with --docs write) these reports' tables")
    parser.add_argument("--docs", type=Path, help="write the tables between the search-speed-table markers")
    parser.add_argument("--summary", action="store_true", help="with --table: only the searches' table (README)")
    args = parser.parse_args()
    if args.table is not None:
        report = merged([json.loads(path.read_text()) for path in args.table])
        body = summary(report) if args.summary else tables(report)
        if args.summary and args.docs is not None:
            write_between(args.docs, SUMMARY_MARKERS, body)
            print(f"search speed summary written into {args.docs}")
        elif args.docs is None:
            print(body)
        else:
            write_between(args.docs, MARKERS, body)
            print(f"search speed tables written into {args.docs}")
        return 0
    torch.set_num_threads(1)  # small models on a shared machine: one thread is fastest (tests/eval/conftest.py)
    report = measure(args)
    atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")
    print(tables(report), f"\nreport written to {args.out}", sep="\n")
    return 0


def measure(args) -> dict:
    """Runs (a) on each world given and (b) on the real pair."""
    cbs = dict(width=2, num_samples=2, chunk_len=8)
    note = lambda budgets: (  # noqa: E731
        f"CBS W=2, K=2, L=8, {args.prompts} prompts, budgets {budgets}, one CPU thread, fp32"
    )
    report = {"machine": f"{torch.get_num_threads()} torch thread(s), CPU", "budgets": {}, "cbs": cbs}
    real_label = "real pair (Gemma-3-270M steered by SmolLM2-135M)"
    worlds = [(f"tiny world ({args.tiny.name if args.tiny else ''})", args.tiny, "strong_base", args.tiny_budgets),
              (real_label, args.real, "strong_gemma", args.real_budgets)]  # fmt: skip
    pairs = {}
    for label, world, strong, budgets in worlds:
        if world is None:
            continue
        pair = pairs[label] = load_pair(world, strong)
        if "a" not in args.parts:
            continue
        print(f"(a) {label}: {world}", flush=True)
        rows = budget_rows(pair, prompts_of(world, args.prompts), budgets, cbs)
        report["budgets"][label] = dict(note=note(budgets), rows=rows)
    if args.real is not None and "b" in args.parts:
        print("(b) searches on the real pair", flush=True)
        bon = dict(n=4)
        # the tree search's budget is strong tokens: at most what CBS can sample (W*K chunks per round)
        most = cbs["width"] * cbs["num_samples"] * args.search_budget
        mcts = {**SEARCHES.get("mcts").defaults, "budget": most} if "mcts" in SEARCHES.names() else {}
        rows = search_rows(pairs[real_label], prompts_of(args.real, args.prompts), args.search_budget, cbs, bon, mcts)
        report["searches"] = dict(
            note=f"budget {args.search_budget}, {args.prompts} prompts, CBS W=2 K=2 L=8, BoN N=4, MCTS {mcts or '-'}",
            rows=rows,
        )
    return report


if __name__ == "__main__":
    sys.exit(main())
