"""The cache on a real model (SmolLM2-135M-Instruct): `w2s cache` against a naive loop and TRL's reference
precompute, in float32 and bfloat16, and the scorer's efficiency against this CPU's limit (a script, not a test).

  .venv/bin/python benchmarks/cache_real.py [--world runs/real] [--part scorer|process|error|all] [--out F.json]

Row sets (built here from the real world's own English text, no downloads): `long`, 60 chat rows whose prompts
are 100-1,000 tokens (notes made of the world's fine-tune answers, then a question) with a 20-40 token answer;
`short`, 60 chat rows of the world's own short prompts and answers.

  - scorer: `TransformersScorer` in one process at several batch_tokens and both dtypes, tokens/second, against
    the naive loop (one row at a time, full-vocabulary log-softmax) in the same process, interleaved; and the
    efficiency: the limit is 2 x non-embedding parameters per token plus 2 x the output layer on response tokens,
    at the GEMM rate measured here (same dtype), so efficiency = limit time / measured time.
  - process: whole processes, load included, interleaved `repeats` times: `w2s cache` (defaults), the naive loop
    and TRL's `precompute_ref_log_probs` loop (TRL is not installed here, so its loop is re-implemented: a
    DataLoader of batch 8, padded, full logits, `selective_log_softmax`), each in float32 and bfloat16.
  - pair: both weak models at the auto budget, in turn and side by side (`cache.side_by_side`), against the
    naive loop, interleaved in one process, with the efficiency of the pair against the limit.
  - error: bfloat16 against float32 on the cached weak log-ratio (per token and per sequence).
  - ceiling: no timing. The causal attention's FLOPs (QK^T and PV over the lower triangle), which the limit does
    not count, against the limit's: the share of the limit a scorer could reach if attention ran at the GEMM
    rate and every other op were free.

Prints markdown tables and writes every number to --out (docs tables are generated from it by
scripts/perf_tables.py-like code in `tables()` here: `--tables F.json`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
REPO = Path(__file__).resolve().parents[1]
MODELS = ("weak_base", "weak_aligned")
DTYPES = ("float32", "bfloat16")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, default=REPO / "runs" / "real", help="the real world (make real-world)")
    parser.add_argument("--part", default="all", choices=("scorer", "pair", "process", "error", "ceiling", "all"))
    parser.add_argument("--sets", default="long,short", help="row sets, comma separated")
    parser.add_argument("--rows", type=int, default=60, help="rows per set")
    parser.add_argument("--budgets", default="256,512,1024,2048,8192", help="batch_tokens tried by the scorer part")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per method")
    parser.add_argument(
        "--methods", default="", help="process part: only these methods, comma separated ('naive float32,...')"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: torch's choice); 1 is steadier on a shared machine"
    )
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="write every measured number to this JSON file")
    parser.add_argument("--tables", type=Path, nargs="+", help="print the markdown tables of JSONs written by --out")
    parser.add_argument("--docs", type=Path, help="with --tables: also put them into this page between its markers")
    parser.add_argument("--worker", nargs=4, metavar=("METHOD", "ROWS", "DTYPE", "WORLD"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------- the row sets


def english_pieces(world: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """The world's answers (sentences to build notes from) and its (prompt, answer) pairs."""
    pairs = []
    for name in ("finetune.jsonl", "cache.jsonl"):
        for line in (world / "data" / name).read_text().splitlines():
            row = json.loads(line)
            pairs.append((row["prompt"], row["response"]))
    return [response for _, response in pairs], pairs


def build_rows(world: Path, kind: str, count: int, tokenizer) -> list[dict]:
    """`count` chat rows of the `kind` set (see the module docstring), deterministic (seed 0)."""
    rng = random.Random(0)
    sentences, pairs = english_pieces(world)
    rows = []
    for index in range(count):
        prompt, response = pairs[index % len(pairs)]
        if kind == "long":
            target = 100 + (900 * index) // max(1, count - 1)  # prompt tokens spread over 100..1,000
            notes: list[str] = []
            while len(tokenizer(" ".join(notes))["input_ids"]) < target - 20:
                notes.append(rng.choice(sentences))
            prompt = "Read these notes, then answer.\n\n" + " ".join(notes) + "\n\nQuestion: " + prompt
        rows.append({"id": f"{kind}-{index:03d}", "prompt": prompt, "response": response})
    return rows


def write_rows(work: Path, world: Path, kind: str, count: int) -> Path:
    """The `kind` row set as a jsonl file under `work` (what `w2s cache` reads)."""
    from w2s.models import load_tokenizer

    path = work / f"{kind}.jsonl"
    if not path.exists():
        rows = build_rows(world, kind, count, load_tokenizer("weak_base", str(world / "weak_base")))
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def encode(path: Path, tokenizer) -> tuple[list[list[int]], list[int]]:
    """Token ids and prompt lengths as `w2s cache` makes them (`w2s.data.encode_rows`, chat template on)."""
    from w2s.data import encode_rows, load_rows

    fields = {"prompt_field": "prompt", "response_field": "response", "messages_field": "", "id_field": "id"}
    dataset, _ = load_rows(str(path), "train")
    encoded = encode_rows(dataset, str(path), tokenizer, fields, 4096, False, True, None)
    return [list(row.input_ids) for row in encoded], [row.prompt_len for row in encoded]


# ------------------------------------------------------------------------------------- the compared scorers


def naive_logprobs(model, sequences, prompt_lens) -> list:
    """The naive loop: one row at a time, full logits, full-vocabulary log-softmax, gather."""
    import torch

    out = []
    with torch.no_grad():
        for seq, prompt_len in zip(sequences, prompt_lens):
            ids = torch.tensor([seq])
            logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            out.append(logps[prompt_len - 1 :].gather(-1, ids[0, prompt_len:, None])[:, 0].numpy())
    return out


def trl_logprobs(model, sequences, prompt_lens, batch_size: int = 8, pad_id: int = 0) -> list:
    """TRL's `precompute_ref_log_probs` (DPOTrainer, 0.2x): the reference model over a DataLoader of
    `per_device_train_batch_size` (8) padded rows, full logits, `selective_log_softmax` of the labels, masked."""
    import torch
    from torch.utils.data import DataLoader

    def collate(indices):
        width = max(len(sequences[i]) for i in indices)
        ids = torch.full((len(indices), width), pad_id)
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, i in enumerate(indices):
            ids[row, : len(sequences[i])], mask[row, : len(sequences[i])] = torch.tensor(sequences[i]), 1
        return indices, ids, mask

    out: list = [None] * len(sequences)
    with torch.no_grad():
        for indices, ids, mask in DataLoader(range(len(sequences)), batch_size=batch_size, collate_fn=collate):
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            per_token = torch.gather(logits.log_softmax(-1), 2, ids[:, 1:, None])[..., 0]  # selective_log_softmax
            for row, i in enumerate(indices):
                out[i] = per_token[row, prompt_lens[i] - 1 : len(sequences[i]) - 1].numpy()
    return out


def load(world: Path, role: str, dtype: str):
    import torch

    from w2s.models import load_causal_lm

    return load_causal_lm(role, str(world / role), getattr(torch, dtype)).eval()


# ------------------------------------------------------------------------------ part 1: the scorer in-process


def gemm_rate(dtype: str, seconds: float = 2.0) -> float:
    """FLOP/s of a `[512, 576] x [576, 1536]` matmul (SmolLM2's MLP shape) in `dtype` on this machine."""
    import torch

    a, b = torch.randn(512, 576).to(getattr(torch, dtype)), torch.randn(576, 1536).to(getattr(torch, dtype))
    for _ in range(5):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * 512 * 576 * 1536 * count / (time.perf_counter() - start)


def limit_flops(model, sequences, prompt_lens) -> float:
    """2 x non-embedding parameters per token, plus 2 x the output layer on each response token."""
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    body = sum(p.numel() for p in model.parameters()) - embed.numel() - (0 if head is embed else head.numel())
    tokens = sum(len(s) for s in sequences)
    response = sum(len(s) - p for s, p in zip(sequences, prompt_lens))
    return 2.0 * body * tokens + 2.0 * head.numel() * response


def scorer_part(args, work: Path, kind: str) -> dict:
    """Tokens/second of the scorer at each budget and dtype and of the naive loop, interleaved in one process."""
    from w2s.cache.backends import TransformersScorer
    from w2s.models import load_tokenizer

    sequences, prompt_lens = encode(
        write_rows(work, args.world, kind, args.rows), load_tokenizer("t", str(args.world / "weak_base"))
    )
    tokens = sum(len(s) for s in sequences)
    budgets = [int(b) for b in args.budgets.split(",")]
    result: dict = {"rows": len(sequences), "tokens": tokens, "prompt_tokens": [min(prompt_lens), max(prompt_lens)]}
    for dtype in args.dtypes.split(","):
        scorer = TransformersScorer(str(args.world / "weak_base"), dtype, role="weak_base")
        times: dict = {str(b): [] for b in budgets} | {"naive": []}
        for _ in range(args.repeats):
            for method in times:
                start = time.perf_counter()
                if method == "naive":
                    naive_logprobs(scorer.model, sequences, prompt_lens)
                else:
                    scorer.batch_tokens = int(method)
                    scorer.response_logprobs(sequences, prompt_lens)
                times[method].append(time.perf_counter() - start)
        rate = gemm_rate(dtype)
        limit_s = limit_flops(scorer.model, sequences, prompt_lens) / rate
        result[dtype] = {
            "gemm_gflops": rate / 1e9,
            "limit_tok_s": tokens / limit_s,
            "tok_s": {m: tokens / min(t) for m, t in times.items()},
            "efficiency": {m: limit_s / min(t) for m, t in times.items()},
        }
        print(f"{kind} {dtype}: {json.dumps(result[dtype])}", flush=True)
    return result


def time_pair(scorers: dict, sequences, prompt_lens, threads: int, repeats: int) -> dict[str, list[float]]:
    """Seconds of each way of scoring both models, `repeats` interleaved runs each."""
    from w2s.cache.backends import run_side_by_side
    from w2s.device import side_by_side_threads

    def score(role: str) -> list:
        return scorers[role].response_logprobs(sequences, prompt_lens)

    each = side_by_side_threads("auto", "cpu", len(scorers), threads) or 1
    methods = {
        "in turn": lambda: [score(role) for role in scorers],
        "side by side": lambda: run_side_by_side(score, list(scorers), each),
        "naive": lambda: [naive_logprobs(scorer.model, sequences, prompt_lens) for scorer in scorers.values()],
    }
    times: dict = {name: [] for name in methods}
    for _ in range(repeats):
        for name, method in methods.items():
            start = time.perf_counter()
            method()
            times[name].append(time.perf_counter() - start)
    return times


def pair_part(args, work: Path, kind: str) -> dict:
    """Both weak models, as `w2s cache` scores them (the auto token budget): in turn with every thread, side by
    side (`cache.side_by_side`), and the naive loop, interleaved in one process; tokens/s count both models'
    tokens, and the limit is both models' FLOPs at the GEMM rate of this process's thread count."""
    import torch

    from w2s.cache.backends import TransformersScorer
    from w2s.models import load_tokenizer

    sequences, prompt_lens = encode(
        write_rows(work, args.world, kind, args.rows), load_tokenizer("t", str(args.world / "weak_base"))
    )
    tokens, threads = 2 * sum(len(s) for s in sequences), torch.get_num_threads()
    result: dict = {"rows": len(sequences), "tokens": tokens, "prompt_tokens": [min(prompt_lens), max(prompt_lens)],
                    "threads": threads}  # fmt: skip
    for dtype in args.dtypes.split(","):
        scorers = {role: TransformersScorer(str(args.world / role), dtype, role=role) for role in MODELS}
        times = time_pair(scorers, sequences, prompt_lens, threads, args.repeats)
        rate = gemm_rate(dtype)
        limit_s = sum(limit_flops(s.model, sequences, prompt_lens) for s in scorers.values()) / rate
        result[dtype] = {
            "gemm_gflops": rate / 1e9,
            "batch_tokens": scorers[MODELS[0]].batch_tokens,
            "limit_tok_s": tokens / limit_s,
            "tok_s": {m: tokens / min(t) for m, t in times.items()},
            "efficiency": {m: limit_s / min(t) for m, t in times.items()},
        }
        print(f"{kind} pair {dtype}: {json.dumps(result[dtype])}", flush=True)
    return result


def attention_flops(config, sequences) -> float:
    """FLOPs of causal attention (QK^T and PV over the lower triangle, every head and layer) over `sequences`."""
    width = config.num_attention_heads * getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    pairs = sum(len(seq) * (len(seq) + 1) // 2 for seq in sequences)
    return 2.0 * 2.0 * pairs * width * config.num_hidden_layers


def ceiling_part(args, work: Path, kind: str) -> dict:
    """The limit's FLOPs and causal attention's for one model over the row set, and the ceiling they imply."""
    from w2s.models import load_tokenizer

    sequences, prompt_lens = encode(
        write_rows(work, args.world, kind, args.rows), load_tokenizer("t", str(args.world / "weak_base"))
    )
    model = load(args.world, "weak_base", "float32")
    limit, attention = limit_flops(model, sequences, prompt_lens), attention_flops(model.config, sequences)
    return {"rows": len(sequences), "limit_gflop": limit / 1e9, "attention_gflop": attention / 1e9,
            "ceiling": limit / (limit + attention)}  # fmt: skip


# ------------------------------------------------------------------------------- part 2: the bf16 error


def error_part(args, work: Path, kind: str) -> dict:
    """bfloat16 against float32 on the weak log-ratio, per token and per sequence (summed), both weak models."""
    import numpy as np

    from w2s.cache.backends import TransformersScorer
    from w2s.models import load_tokenizer

    path = write_rows(work, args.world, kind, args.rows)
    sequences, prompt_lens = encode(path, load_tokenizer("t", str(args.world / "weak_base")))
    ratio = {}
    for dtype in DTYPES:
        logps = {
            role: TransformersScorer(str(args.world / role), dtype, 1024, role=role).response_logprobs(
                sequences, prompt_lens
            )
            for role in MODELS
        }
        ratio[dtype] = [a - b for a, b in zip(logps["weak_aligned"], logps["weak_base"])]
    token_err = np.abs(np.concatenate(ratio["bfloat16"]) - np.concatenate(ratio["float32"]))
    seq32 = np.array([r.sum() for r in ratio["float32"]])
    seq16 = np.array([r.sum() for r in ratio["bfloat16"]])
    seq_err = np.abs(seq16 - seq32)
    result = {
        "tokens": int(token_err.size),
        "token_abs_err_mean": float(token_err.mean()),
        "token_abs_err_max": float(token_err.max()),
        "token_ratio_abs_mean_fp32": float(np.abs(np.concatenate(ratio["float32"])).mean()),
        "seq_abs_err_mean": float(seq_err.mean()),
        "seq_abs_err_max": float(seq_err.max()),
        "seq_reward_std_fp32": float(seq32.std()),
        "seq_spearman": spearman(seq32, seq16),
        "pair_order_agreement": pair_agreement(seq32, seq16),
    }
    if kind == "short":  # search scores short responses; measured once
        result |= search_agreement(args.world)
    print(f"{kind} bf16 error: {json.dumps(result)}", flush=True)
    return result


def search_agreement(world: Path, candidates: int = 16, beam: int = 4) -> dict:
    """How often the weak pair in bfloat16 picks what it picks in float32, as search uses it (`WeakScorer`): for
    each of the world's 8 held-out prompts (and each of 3 prefix lengths: 8, 16 tokens unfinished, and whole
    with EOS, as chunk-level beam search scores partial hypotheses), `candidates` responses drawn from the
    world's answers (seed 0); agreement of the top-1 pick and of the top-`beam` set."""
    import numpy as np
    import torch

    from w2s.models import load_tokenizer
    from w2s.search.scorer import WeakScorer

    tokenizer = load_tokenizer("weak_base", str(world / "weak_base"))
    sentences, _ = english_pieces(world)
    prompts = [json.loads(line)["prompt"] for line in (world / "data" / "prompts.jsonl").read_text().splitlines()]
    rng = random.Random(0)
    cases = []
    for prompt in prompts:
        pool = rng.sample(sentences, candidates)
        for cut in (8, 16, None):
            texts = [tokenizer.decode(tokenizer(t)["input_ids"][:cut]) if cut else t for t in pool]
            cases.append((prompt, texts, [cut is None] * candidates))
    scores = {}
    for dtype in DTYPES:
        models = [load(world, role, dtype) for role in ("weak_aligned", "weak_base")]
        scorer = WeakScorer(*models, tokenizer)
        with torch.no_grad():
            scores[dtype] = [np.array(scorer.score(p, t, f)) for p, t, f in cases]
    top1 = [int(np.argmax(a) == np.argmax(b)) for a, b in zip(scores["float32"], scores["bfloat16"])]
    topk = [
        len(set(np.argsort(-a)[:beam]) & set(np.argsort(-b)[:beam])) / beam
        for a, b in zip(scores["float32"], scores["bfloat16"])
    ]
    diff = np.abs(np.concatenate(scores["float32"]) - np.concatenate(scores["bfloat16"]))
    return {
        "search_cases": len(cases),
        "search_top1_agreement": float(np.mean(top1)),
        f"search_top{beam}_overlap": float(np.mean(topk)),
        "search_score_abs_err_mean": float(diff.mean()),
        "search_score_abs_err_max": float(diff.max()),
    }


def spearman(a, b) -> float:
    import numpy as np

    ranks = [np.argsort(np.argsort(x)) for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def pair_agreement(a, b) -> float:
    """Share of row pairs whose sequence rewards are ordered the same way in both (what a preference sees)."""
    import numpy as np

    i, j = np.triu_indices(len(a), 1)
    return float(np.mean(np.sign(a[i] - a[j]) == np.sign(b[i] - b[j])))


# ------------------------------------------------------------------------ part 3: whole processes, load in


def worker(method: str, rows: str, dtype: str, world: str) -> None:
    """One whole process of the naive loop or TRL's precompute: load the tokenizer and both weak models, encode
    the rows, score them (the timing is the caller's: the process's wall time)."""
    from w2s.models import load_tokenizer

    world_path = Path(world)
    sequences, prompt_lens = encode(Path(rows), load_tokenizer("t", str(world_path / "weak_base")))
    score = naive_logprobs if method == "naive" else trl_logprobs
    for role in MODELS:
        score(load(world_path, role, dtype), sequences, prompt_lens)


def cache_command(work: Path, world: Path, rows: Path, dtype: str, run: int) -> list[str]:
    """`w2s cache` with its defaults, on these rows and the weak pair only (no strong reference)."""
    config = work / "cache.yaml"
    config.write_text("cache:\n  strong_ref: ''\n")
    return [
        str(REPO / ".venv" / "bin" / "w2s"), "cache", "--config", str(config),
        f"run_root={work / f'run-{run}'}", *data_overrides(rows),
        f"cache.weak_base={world / 'weak_base'}", f"cache.weak_aligned={world / 'weak_aligned'}",
        "cache.max_len=2048", "cache.backend=transformers", *([f"cache.model_dtype={dtype}"] if dtype else []),
    ]  # fmt: skip


def data_overrides(rows: Path) -> list[str]:
    """The overrides naming the rows file and its id field (the cache's data-source section)."""
    return [f"cache.data.path={rows}", "cache.data.id_field=id"]


def process_part(args, work: Path, kind: str) -> dict:
    """Wall seconds of whole processes, interleaved `repeats` times: w2s cache (auto dtype, then each dtype named),
    the naive loop and TRL's precompute in each dtype."""
    rows = write_rows(work, args.world, kind, args.rows)
    me = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    commands = {"w2s cache (defaults)": cache_command(work, args.world, rows, "", 0)}
    for dtype in args.dtypes.split(","):
        commands[f"w2s cache {dtype}"] = cache_command(work, args.world, rows, dtype, 0)
        commands[f"naive {dtype}"] = [*me, "naive", str(rows), dtype, str(args.world)]
        commands[f"trl {dtype}"] = [*me, "trl", str(rows), dtype, str(args.world)]
    if args.methods:
        commands = {name: command for name, command in commands.items() if name in args.methods.split(",")}
    times: dict[str, list[float]] = {name: [] for name in commands}
    for repeat in range(args.repeats):
        for name, command in commands.items():
            command = [c.replace("run-0", f"run-{repeat}-{len(times[name])}-{abs(hash(name))}") for c in command]
            start = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=work)
            times[name].append(time.perf_counter() - start)
            print(f"{kind} {name}: {times[name][-1]:.1f} s", flush=True)
    median = {name: statistics.median(t) for name, t in times.items()}
    return {"rows": args.rows, "seconds": times, "median_s": median}


# --------------------------------------------------------------------------------------------- the tables


def tables(results: dict) -> str:
    """Markdown tables of a results JSON (what docs/performance.md includes)."""
    lines = [f"Machine: {results['machine']}", ""]
    for kind, part in results.get("process", {}).items():
        median = part["median_s"]
        lines += [f"**Whole process, {kind} rows** (median of {len(next(iter(part['seconds'].values())))} "
                  "interleaved runs; ratio = naive float32 seconds / seconds)", "",
                  "| method | seconds | speed-up over naive float32 |", "|---|---|---|"]  # fmt: skip
        base = median.get("naive float32")
        for name, seconds in median.items():
            lines.append(
                f"| {name} | {seconds:.1f} | {base / seconds:.2f}x |" if base else f"| {name} | {seconds:.1f} | |"
            )
        lines.append("")
    for kind, part in results.get("scorer", {}).items():
        lines += [f"**Scorer in one process, {kind} rows** ({part['rows']} rows, {part['tokens']} tokens, prompts "
                  f"{part['prompt_tokens'][0]}-{part['prompt_tokens'][1]} tokens, one model)", "",
                  "| dtype | method | tokens/s | of the limit |", "|---|---|---|---|"]  # fmt: skip
        for dtype in DTYPES:
            if dtype not in part:
                continue
            entry = part[dtype]
            for method, rate in entry["tok_s"].items():
                name = "naive loop" if method == "naive" else f"batch_tokens={method}"
                lines.append(f"| {dtype} | {name} | {rate:.0f} | {entry['efficiency'][method]:.0%} |")
            lines.append(
                f"| {dtype} | limit ({entry['gemm_gflops']:.0f} GFLOP/s GEMM) | {entry['limit_tok_s']:.0f} | 100% |"
            )
        lines.append("")
    for kind, part in results.get("pair", {}).items():
        lines += [f"**Both weak models as `w2s cache` scores them, {kind} rows** ({part['rows']} rows, "
                  f"{part['tokens']} tokens of the two models, {part['threads']} torch threads)", "",
                  "| dtype | method | tokens/s | of the limit | vs naive |", "|---|---|---|---|---|"]  # fmt: skip
        for dtype in [dtype for dtype in DTYPES if dtype in part]:
            entry = part[dtype]
            for method, rate in entry["tok_s"].items():
                share, speedup = entry["efficiency"][method], rate / entry["tok_s"]["naive"]
                lines.append(f"| {dtype} | {method} | {rate:.0f} | {share:.0%} | {speedup:.2f}x |")
            lines.append(
                f"| {dtype} | limit ({entry['gemm_gflops']:.0f} GFLOP/s GEMM) | {entry['limit_tok_s']:.0f} | 100% | |"
            )
        lines.append("")
    if results.get("ceiling"):
        lines += ["**What the limit leaves out: causal attention** (one model; ceiling = limit / (limit + attention), "
                  "the share of the limit reachable with attention at the GEMM rate and every other op free)", "",
                  "| rows | limit GFLOP | attention GFLOP | ceiling |", "|---|---|---|---|"]  # fmt: skip
        for kind, part in results["ceiling"].items():
            flops = f"{part['limit_gflop']:.0f} | {part['attention_gflop']:.0f}"
            lines.append(f"| {kind} | {flops} | {part['ceiling']:.1%} |")
        lines.append("")
    for kind, err in results.get("error", {}).items():
        lines += [f"**bfloat16 against float32, weak log-ratio, {kind} rows** ({err['tokens']} response tokens)", "",
                  "| measure | value |", "|---|---|"]  # fmt: skip
        lines += [f"| {name} | {value:.4g} |" for name, value in err.items() if name != "tokens"]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.tables:
        sys.path.insert(0, str(REPO))
        from benchmarks.doc_tables import markers, merged_reports, write_between

        # parts measured in separate runs: each table states its own conditions
        markdown = tables(merged_reports(args.tables))
        print(markdown)
        if args.docs:
            write_between(args.docs, markers("cache_real", "begin"), markdown)
        return
    if args.worker:
        worker(*args.worker)
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the whole-process runs too
    work = args.work or Path(tempfile.mkdtemp(prefix="w2s-cache-real-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    for kind in args.sets.split(","):
        if args.part in ("scorer", "all"):
            results.setdefault("scorer", {})[kind] = scorer_part(args, work, kind)
        if args.part in ("pair", "all"):
            results.setdefault("pair", {})[kind] = pair_part(args, work, kind)
        if args.part in ("error", "all"):
            results.setdefault("error", {})[kind] = error_part(args, work, kind)
        if args.part in ("process", "all"):  # keyed by the row count too: runs of 8 and 60 rows are both kept
            results.setdefault("process", {})[f"{args.rows} {kind}"] = process_part(args, work, kind)
        if args.part in ("ceiling", "all"):
            results.setdefault("ceiling", {})[f"{args.rows} {kind}"] = ceiling_part(args, work, kind)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    print(tables(results))


def machine() -> dict:
    import torch

    from w2s.device import cpu_flags

    flags = sorted(cpu_flags() & {"amx_bf16", "avx512_bf16", "avx512f", "avx2"})
    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "flags": flags,
        "torch": torch.__version__,
    }


if __name__ == "__main__":
    main()
