"""Memory of the log-prob step at real vocabulary sizes, measured deterministically against `w2s.memory`'s formulas.

`TensorPeak` counts the bytes of tensors alive at once (no timing, no allocator): the chunked path must stay
within `logprob_step_bytes` and not grow with tokens, and the plain path must cost what the formula says, which
is what docs/memory.md's table of the paper configs is computed from.
"""

import pytest
import torch

from tests.w2s.tensor_peak import TensorPeak
from w2s.heads import Head
from w2s.logprobs import chunk_rows, head_logprobs, logprobs_of_targets, target_logprobs
from w2s.memory import logprob_step_bytes

pytestmark = pytest.mark.integration  # about a minute: real vocabulary sizes, up to 1 GB of plain-path logits

QWEN2_VOCAB = 151_936
HIDDEN = 64
DTYPES = {4: torch.float32, 2: torch.bfloat16}


class WrappedLinear(torch.nn.Linear):
    """Not exactly `nn.Linear`, so `head_logprobs` calls the layer under checkpointing (the 'module' path)."""


def step_peak(path: str, b: int, train: bool, tokens: int, vocab: int, chunk: int, softcap=None) -> int:
    """Peak live bytes of one log-prob step over `tokens` final hidden states (forward, and backward if train)."""
    torch.manual_seed(0)
    layer = (WrappedLinear if path == "module" else torch.nn.Linear)(HIDDEN, vocab, bias=False).to(DTYPES[b])
    hidden = torch.randn(tokens, HIDDEN, dtype=DTYPES[b], requires_grad=train)
    targets = torch.randint(0, vocab, (tokens,))
    with torch.set_grad_enabled(train), TensorPeak() as probe:
        out = head_logprobs(Head(layer, vocab, 1.0, softcap), hidden, targets, chunk)
        if train:
            out.sum().backward()
        del out
    return probe.peak


@pytest.mark.parametrize("path", ["linear", "module"])
@pytest.mark.parametrize("b", [4, 2])
@pytest.mark.parametrize("train", [False, True])
def test_chunked_step_stays_within_its_formula_and_does_not_grow_with_tokens(path, b, train):
    chunk, softcap = 48, None
    peaks = [step_peak(path, b, train, tokens, QWEN2_VOCAB, chunk, softcap) for tokens in (192, 384)]
    for tokens, peak in zip((192, 384), peaks):
        formula = logprob_step_bytes(tokens, QWEN2_VOCAB, HIDDEN, b, path=path, train=train, chunk=chunk)
        assert 0.9 * formula <= peak <= formula, (tokens, peak / formula)
    # twice the tokens: only the kept hidden states grow (tokens x hidden), never tokens x vocab
    assert peaks[1] - peaks[0] <= 192 * (HIDDEN * b * 2 + 16)


def test_soft_cap_costs_one_more_block_in_training_only():
    for train in (False, True):
        peak = step_peak("linear", 4, train, 192, QWEN2_VOCAB, 48, softcap=5.0)
        formula = logprob_step_bytes(192, QWEN2_VOCAB, HIDDEN, 4, train=train, chunk=48, softcap=True)
        assert 0.9 * formula <= peak <= formula


@pytest.mark.parametrize("b", [4, 2])
@pytest.mark.parametrize("train", [False, True])
def test_plain_path_costs_what_the_formula_says(b, train):
    """The 'before' of docs/memory.md's table: a model's own full logits, then the float32 log-softmax and gather."""
    from benchmarks.random_models import qwen2_shaped

    model = qwen2_shaped(QWEN2_VOCAB, HIDDEN, layers=1).to(DTYPES[b])
    input_ids = torch.randint(0, QWEN2_VOCAB, (2, 129))
    with torch.set_grad_enabled(train), TensorPeak() as probe:
        out = logprobs_of_targets(model(input_ids=input_ids).logits, input_ids)
        if train:
            out.sum().backward()
        del out
    formula = logprob_step_bytes(input_ids.numel() - 2, QWEN2_VOCAB, HIDDEN, b, path="plain", train=train)
    assert 0.9 * formula <= probe.peak <= 1.05 * formula, probe.peak / formula


@pytest.mark.parametrize("vocab", [32_000, QWEN2_VOCAB, 262_144])
def test_default_chunk_keeps_a_whole_forward_near_one_block_at_any_vocabulary(vocab):
    """Through a whole (narrow) model: the step's extra memory is about one 128 MiB block at every vocabulary."""
    from benchmarks.random_models import qwen2_shaped

    model = qwen2_shaped(vocab, HIDDEN, layers=1)
    input_ids = torch.randint(0, vocab, (4, 257))
    scored = torch.zeros(4, 256, dtype=torch.bool)
    scored[:, 128:] = True  # half the positions are prompt: never through the output layer
    with torch.no_grad(), TensorPeak() as probe:
        target_logprobs(model, input_ids, torch.ones_like(input_ids), scored)
    block = min(chunk_rows(vocab), 4 * 128) * vocab * 4
    assert probe.peak <= block + 8 * 2**20  # the block, plus the narrow body's activations
    # against the plain path: half the positions (no prompt), and no float32 log-softmax beside the logits
    assert probe.peak < logprob_step_bytes(4 * 256, vocab, HIDDEN, path="plain") / 3
