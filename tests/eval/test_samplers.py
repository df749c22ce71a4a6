"""The sampler protocol: any caller may ask for any prefixes, and the transformers sampler's KV-row reuse gives
what re-encoding gives (tokens and log-probs), whether the prefixes are rows it holds or not."""

from __future__ import annotations

import random

import pytest
import torch

from w2s.sampling import encode_prompt
from w2s.search.eft import eft_generate
from w2s.search.samplers import HFSampler
from w2s.search.vllm_sampler import VllmSampler

pytestmark = pytest.mark.integration


@torch.no_grad()
def chunk_logprob(model, prompt_ids: list[int], prefix: list[int], chunk: list[int]) -> float:
    """Sum of the model's log-probs of `chunk` after prompt + prefix, in one full forward (no cache)."""
    ids = prompt_ids + prefix + chunk
    logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), dim=-1)  # [seq-1, vocab]
    start = len(prompt_ids) + len(prefix)
    return sum(logprobs[t - 1, ids[t]].item() for t in range(start, len(ids)))


def pair(world, seed: int) -> tuple[HFSampler, HFSampler, list[int]]:
    """A sampler that reuses KV rows and one that re-encodes every step, both begun on the first test prompt."""
    prompt_ids = encode_prompt(world.tokenizer, world.prompt)
    fast, slow = HFSampler(world.strong, world.tokenizer), HFSampler(world.strong, world.tokenizer, use_cache=False)
    for sampler in (fast, slow):
        sampler.begin(prompt_ids, seed)
    return fast, slow, prompt_ids


def check_call(world, fast, slow, prompt_ids, prefixes, repeats, length):
    """One `sample` call on both samplers: same tokens, same log-probs, each equal to a full forward."""
    chunks, logprobs = fast.sample(prefixes, repeats, length)
    slow_chunks, slow_logprobs = slow.sample(prefixes, repeats, length)
    assert chunks == slow_chunks and len(chunks) == len(prefixes) * repeats
    torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(slow_logprobs), atol=1e-4, rtol=0)
    for row, (chunk, logprob) in enumerate(zip(chunks, logprobs)):
        assert 0 < len(chunk) <= length and world.tokenizer.eos_token_id not in chunk[:-1]
        expected = chunk_logprob(world.strong, prompt_ids, prefixes[row // repeats], chunk)
        assert logprob == pytest.approx(expected, abs=1e-4)
    return chunks


def test_held_rows_are_continued_and_other_prefixes_are_encoded_afresh(world):
    fast, slow, prompt_ids = pair(world, seed=2)
    eos = world.tokenizer.eos_token_id
    first = check_call(world, fast, slow, prompt_ids, [[]], 3, 4)
    assert fast.reused  # the empty response is the row `begin` encoded
    open_chunks = [chunk for chunk in first if eos not in chunk]
    assert len(open_chunks) >= 2
    # A beam search's next round: survivors of the last call, reordered and repeated -> rows it holds.
    check_call(world, fast, slow, prompt_ids, [open_chunks[1], open_chunks[0]], 2, 3)
    assert fast.reused
    # Prefixes it never held, of different lengths (a tree search backing up to an earlier node).
    mixed = [open_chunks[0][:2], [], open_chunks[1] + open_chunks[0][:1], open_chunks[0][:2]]
    check_call(world, fast, slow, prompt_ids, mixed, 2, 3)
    assert not fast.reused


def test_a_tree_search_may_expand_any_node(world):
    """An MCTS-like caller: expand a random node of its tree each time; rows are reused when the node is one
    the sampler has just drawn, and every draw is what a fresh forward gives."""
    fast, slow, prompt_ids = pair(world, seed=9)
    nodes, chooser, reused = [[]], random.Random(0), []
    for _ in range(6):
        node = chooser.choice(nodes)
        children = check_call(world, fast, slow, prompt_ids, [node], 2, 2)
        reused.append(fast.reused)
        nodes += [node + child for child in children if world.tokenizer.eos_token_id not in child]
    assert reused[0] and not all(reused)  # the root is held after begin; a jump back up is not


def test_the_same_seed_gives_the_same_draws(world):
    fast, _, prompt_ids = pair(world, seed=4)
    first = fast.sample([[]], 4, 5)
    fast.begin(prompt_ids, 4)
    assert fast.sample([[]], 4, 5) == first


def test_eft_refuses_a_sampler_without_next_token_distributions(world):
    vllm_like = VllmSampler(None, world.tokenizer)  # no engine needed: refused before any draw
    with pytest.raises(ValueError, match=r"next-token distribution.*engine: hf"):
        eft_generate(vllm_like, world.tuned, world.untuned, world.prompt, 1.0, 4)
