"""The micro world's models, loaded once per test module, for the search, sampler and eval tests."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from w2s.io import read_jsonl
from w2s.search.scorer import WeakScorer


@pytest.fixture(scope="module")
def world(micro_world):
    """The micro world's tokenizer, three models, a weak scorer and its data, on one torch thread.

    These models take a millisecond a step on one thread; two threads on a busy 2-core machine make every
    step ~50x slower (threads spin waiting for each other), so the module runs on one and restores the setting.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    load = lambda name: AutoModelForCausalLM.from_pretrained(micro_world / name).eval()  # noqa: E731
    tokenizer = AutoTokenizer.from_pretrained(micro_world / "tokenizer")
    tuned, untuned = load("weak_aligned"), load("weak_base")
    examples = read_jsonl(micro_world / "data" / "test.jsonl")
    yield SimpleNamespace(
        tokenizer=tokenizer,
        strong=load("strong_base"),
        tuned=tuned,
        untuned=untuned,
        scorer=WeakScorer(tuned, untuned, tokenizer),
        examples=examples,
        prompt=examples[0]["prompt"],
        train=read_jsonl(micro_world / "data" / "train.jsonl"),
    )
    torch.set_num_threads(threads)
