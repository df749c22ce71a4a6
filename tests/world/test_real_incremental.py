"""Incremental weak scoring on the real pair: Gemma-3-270M steered by SmolLM2-135M (another tokenizer), every
round of a chunk-level beam search and a best-of-N equal to a full rescore of the same texts, to 1e-5.

The weak pair runs in float64 here: SmolLM2's 30 float32 layers give sums that differ by up to ~5e-5 between
two batchings of the same full rescore (a row scored alone or beside longer ones), so float32 cannot tell an
exact method from a slightly wrong one at 1e-5; float64 agrees to ~1e-14 (docs/search.md)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.eval.checked_scorer import TOLERANCE, CheckedScorer
from w2s.models import load_causal_lm, load_tokenizer
from w2s.search.cbs import best_of_n, chunk_beam_search
from w2s.search.samplers import HFSampler

pytestmark = pytest.mark.slow


def test_incremental_scores_equal_a_full_rescore_on_gemma_steered_by_smollm2(real_world):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        load = lambda name: load_causal_lm("weak", str(real_world / name), torch.float64).eval()  # noqa: E731
        scorer = CheckedScorer(
            load("weak_aligned"), load("weak_base"), load_tokenizer("weak", str(real_world / "weak_base"))
        )
        strong = load_causal_lm("strong", str(real_world / "strong_gemma")).eval()
        sampler = HFSampler(strong, load_tokenizer("strong", str(real_world / "strong_gemma")))
        lines = (real_world / "data" / "prompts.jsonl").read_text().splitlines()[:1]
        for seed, prompt in enumerate(json.loads(line)["prompt"] for line in lines):
            cbs = chunk_beam_search(sampler, scorer, prompt, 2, 2, 6, max_new_tokens=24, seed=seed)
            bon = best_of_n(sampler, scorer, prompt, n=3, max_new_tokens=24, seed=seed)
            assert cbs.weak_forwarded < cbs.weak_tokens and bon.weak_tokens > 0
    finally:
        torch.set_num_threads(threads)
    assert len(scorer.calls) >= 5 and scorer.worst() <= TOLERANCE
    assert scorer.tokens_forwarded < scorer.full.tokens_forwarded / 2
