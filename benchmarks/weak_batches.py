"""Search's weak scorer under a token budget (`generate.weak_batch_tokens`, auto) against one batch of every
response (the scorer before the budget: up to 32 responses per forward pass), on the real weak pair.

Best-of-N's last step is the largest call search makes: N finished responses of one prompt, each scored whole.
This times `WeakScorer.score` over N responses of a given length (fine-tune answers of the real world joined
until the length is reached), with the weak pair in float32, incremental (the default) and rescoring from the
start, in interleaved repeats in one process, and prints the ratio (one batch seconds / budget seconds) per case.

    python benchmarks/weak_batches.py --world runs/real --lengths 64,256 --n 16 --repeats 3 --out F.json
    python benchmarks/weak_batches.py --tables F.json --docs docs/performance.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, default=REPO / "runs" / "real", help="the real world (make real-world)")
    parser.add_argument("--lengths", default="64,256", help="weak tokens per response, comma separated")
    parser.add_argument("--n", type=int, default=16, help="responses per call (best-of-N's N)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budgets", default="auto", help="weak_batch_tokens values timed against one batch")
    parser.add_argument("--modes", default="incremental,full", help="incremental, full (rescore from the start)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, help="write the numbers to this JSON file")
    parser.add_argument("--tables", type=Path, nargs="+", help="print the markdown table of JSONs written by --out")
    parser.add_argument("--docs", type=Path, help="with --tables: also put it into this page between its markers")
    return parser.parse_args(argv)


def responses(world: Path, tokenizer, length: int, n: int) -> list[str]:
    """`n` distinct texts of about `length` weak tokens each, made of the world's fine-tune answers."""
    answers = [json.loads(line)["response"] for line in (world / "data" / "finetune.jsonl").open()]
    texts = []
    for start in range(n):
        words: list[str] = []
        index = start
        while len(tokenizer(" ".join(words), add_special_tokens=False).input_ids) < length:
            words += answers[index % len(answers)].split()
            index += 7
        ids = tokenizer(" ".join(words), add_special_tokens=False).input_ids[:length]
        texts.append(tokenizer.decode(ids))
    return texts


def measure(args) -> dict:
    import torch

    from w2s.models import load_causal_lm, load_tokenizer
    from w2s.search.scorer import WeakScorer

    if args.threads:
        torch.set_num_threads(args.threads)
    tuned = load_causal_lm("weak_aligned", str(args.world / "weak_aligned"), dtype=torch.float32)
    untuned = load_causal_lm("weak_base", str(args.world / "weak_base"), dtype=torch.float32)
    tokenizer = load_tokenizer("weak_aligned", str(args.world / "weak_aligned"))
    prompt = json.loads((args.world / "data" / "prompts.jsonl").open().readline())["prompt"]
    settings = {"one batch": 10**9, **{name: name if name == "auto" else int(name) for name in args.budgets.split(",")}}
    cases: dict = {}
    for length in (int(x) for x in args.lengths.split(",")):
        texts = responses(args.world, tokenizer, length, args.n)
        for incremental in (mode == "incremental" for mode in args.modes.split(",")):
            case = f"{args.n} x {length} tokens, {'incremental' if incremental else 'full rescore'}"
            seconds: dict = {name: [] for name in settings}
            scores: dict = {}
            for _ in range(args.repeats):
                for name, budget in settings.items():
                    scorer = WeakScorer(tuned, untuned, tokenizer, batch_tokens=budget, incremental=incremental)
                    start = time.perf_counter()
                    scores[name] = scorer.score(prompt, texts, [True] * len(texts))
                    seconds[name].append(time.perf_counter() - start)
            auto = WeakScorer(tuned, untuned, tokenizer).batch_tokens
            worst = max(abs(a - b) for name in settings for a, b in zip(scores["one batch"], scores[name]))
            cases[case] = {"seconds": seconds, "auto": auto, "max_abs_score_diff": worst}
            one = statistics.median(seconds["one batch"])
            for name in settings:
                took = statistics.median(seconds[name])
                print(f"{case}: {name} {took:.2f} s, {one / took:.2f}x", flush=True)
    return {"threads": torch.get_num_threads(), "torch": torch.__version__, "cases": cases}


def table(report: dict) -> str:
    first = next(iter(report["cases"].values()))
    lines = [
        f"Weak pair SmolLM2-135M x 2, float32, {report['threads']} torch threads; median of "
        f"{len(first['seconds']['one batch'])} interleaved runs; auto resolved to {first['auto']} here.",
        "",
        "| responses | weak_batch_tokens | seconds | speed-up over one batch |",
        "|---|---|---|---|",
    ]
    for case, entry in report["cases"].items():
        one = statistics.median(entry["seconds"]["one batch"])
        for name, times in entry["seconds"].items():
            label = "one batch (no budget)" if name == "one batch" else name
            lines.append(
                f"| {case} | {label} | {statistics.median(times):.2f} | {one / statistics.median(times):.2f}x |"
            )
    worst = max(entry["max_abs_score_diff"] for entry in report["cases"].values())
    lines += ["", f"Largest difference between a budget's score and one batch's: {worst:.1e}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    if args.tables:
        from benchmarks.doc_tables import markers, merged_reports, write_between

        markdown = table(merged_reports(args.tables))
        print(markdown)
        if args.docs:
            write_between(args.docs, markers("weak_batches", "begin"), markdown)
        return
    report = measure(args)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    print(table(report))


if __name__ == "__main__":
    main()
