"""Cross-tokenizer alignment (w2s.align) and the chunk-level WSPO loss, on the two real tokenizers (SmolLM2's
byte-level BPE, Gemma-3's SentencePiece-style BPE with byte fallback) and on synthetic spans."""

from __future__ import annotations

import re
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from w2s.align import align, align_response, chunk_sums, token_byte_spans
from w2s.errors import DataError
from w2s.tokens import encode_example
from w2s.train.losses import wspo_chunk_loss, wspo_loss

PAIRS = [("gemma", "smollm2"), ("smollm2", "gemma")]
"""(strong, weak) tokenizer names."""
WORDS = ["the", " cat", " sat", " on", " mat", "Hello", " world", ",", ".", " 2024", " 12345", "ing", " people"]
CHARS = (
    list("aZq09 \n\t\r") + list("éüñøÅç") + ["🤖", "🦩", "🫠", "👍🏽", "❤️", "👨\u200d👩\u200d👧"] + list("日本語中文⿕")
)
TEXTS = st.lists(st.one_of(st.sampled_from(WORDS), st.sampled_from(CHARS)), min_size=1, max_size=30).map("".join)
"""English-like fragments mixed with letters, digits, whitespace, accents, emoji and CJK (never U+2581 `▁`, which
Gemma's normaliser turns into a space: such a text is refused, see test_a_literal_metaspace_is_refused_by_gemma)."""
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _gpt2_byte_of() -> dict[str, int]:
    """The GPT-2 byte-level alphabet (its published `bytes_to_unicode`), character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + i): b for i, b in enumerate(others)}


BYTE_OF = _gpt2_byte_of()


def piece_bytes(name: str, piece: str) -> bytes:
    """The bytes a vocabulary string stands for, read independently of w2s.align."""
    if name == "smollm2":
        return bytes(BYTE_OF[ch] for ch in piece)
    if re.fullmatch(r"<0x[0-9A-F]{2}>", piece):
        return bytes([int(piece[3:5], 16)])
    return piece.replace("\u2581", " ").encode()


def chunk_bytes(text: str, ends: list[int]) -> list[bytes]:
    """The text's bytes cut at the alignment's sync points."""
    data = text.encode()
    return [data[start:end] for start, end in zip([0, *ends[:-1]], ends)]


def tokens_in_chunks(spans, chunk_of, num_text_chunks) -> list[list[int]]:
    """Indices of each text chunk's tokens (EOS left out)."""
    grouped = [[] for _ in range(num_text_chunks)]
    for t in range(len(spans)):
        grouped[chunk_of[t]].append(t)
    return grouped


# --- the same tokenizer on both sides: token-level WSPO exactly -------------------------------------------------


def pack_identity_batch(tokenizer, texts, prompt_lens, seed):
    """One batch as the trainer would hold it: prompt (masked), response + EOS, padding; every tensor both as
    `wspo_loss` wants it (per-token weak ratio) and as `wspo_chunk_loss` wants it (chunk sums and chunk ids)."""
    generator = torch.Generator().manual_seed(seed)
    rows = [(p, token_byte_spans(tokenizer, text, f"row {i}")) for i, (p, text) in enumerate(zip(prompt_lens, texts))]
    seq = max(p + len(r.ids) + 1 for p, r in rows) + 1
    alignments = [align(r.spans, r.spans, r.num_bytes) for _, r in rows]
    max_chunks = max(a.num_chunks for a in alignments)
    shape = (len(rows), seq)
    policy, ref = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    weak, mask, index = torch.zeros(shape), torch.zeros(shape), torch.full(shape, -1, dtype=torch.int64)
    sums = torch.zeros(len(rows), max_chunks)
    for b, ((p, response), alignment) in enumerate(zip(rows, alignments)):
        n = len(response.ids) + 1  # + EOS
        assert alignment.strong_chunk == list(range(n)) == alignment.weak_chunk  # every chunk is one token
        values = torch.randn(n, generator=generator)  # [n] weak per-token log-ratios, float32
        weak[b, p : p + n], mask[b, p : p + n] = values, 1.0
        index[b, p : p + n] = torch.tensor(alignment.strong_chunk)
        sums[b, :n] = torch.from_numpy(chunk_sums(values.numpy(), alignment.weak_chunk, alignment.num_chunks))
    return policy.requires_grad_(), ref, weak, mask, index, sums


@pytest.mark.parametrize("name", ["smollm2", "gemma"])
def test_the_same_tokenizer_gives_one_token_chunks_and_exactly_wspo_loss(real_tokenizers, name):
    @FAST
    @given(
        st.lists(TEXTS, min_size=1, max_size=3),
        st.lists(st.integers(1, 4), min_size=3, max_size=3),
        st.integers(0, 2**31),
    )
    def check(texts, prompt_lens, seed):
        policy, ref, weak, mask, index, sums = pack_identity_batch(real_tokenizers[name], texts, prompt_lens, seed)
        token_loss, token_metrics = wspo_loss(policy, ref, weak, mask, gamma=0.1)
        (token_grad,) = torch.autograd.grad(token_loss, policy)
        chunk_loss, chunk_metrics = wspo_chunk_loss(policy, ref, sums, index, mask, gamma=0.1)
        (chunk_grad,) = torch.autograd.grad(chunk_loss, policy)
        assert (chunk_loss - token_loss).item() == 0.0 and chunk_loss.dtype == torch.float32
        assert chunk_metrics == token_metrics
        assert torch.allclose(chunk_grad, token_grad, rtol=1e-6, atol=0)

    check()


# --- two tokenizers: exact spans, smallest common chunks, the sum kept ------------------------------------------


@pytest.mark.parametrize("name", ["smollm2", "gemma"])
def test_spans_are_each_tokens_own_bytes(real_tokenizers, name):
    tokenizer = real_tokenizers[name]

    @FAST
    @given(TEXTS)
    def check(text):
        response = token_byte_spans(tokenizer, text, "row 0")
        data = text.encode()
        assert response.num_bytes == len(data) and response.spans[0][0] == 0 and response.spans[-1][1] == len(data)
        assert all(a[1] == b[0] for a, b in zip(response.spans, response.spans[1:]))  # no overlap, no gap
        if text.strip():  # the ids the cache scores and the trainer trains on (w2s refuses a blank response)
            encoded = encode_example(tokenizer, "Hi", text, max_len=10**6)
            assert encoded.input_ids[encoded.prompt_len : -1] == response.ids
        pieces = tokenizer.convert_ids_to_tokens(response.ids)
        assert [data[s:e] for s, e in response.spans] == [piece_bytes(name, p) for p in pieces]

    check()


@pytest.mark.parametrize("strong_name, weak_name", PAIRS)
def test_chunks_are_the_smallest_common_spans_and_keep_the_weak_sum(real_tokenizers, strong_name, weak_name):
    @FAST
    @given(TEXTS, st.integers(0, 2**31))
    def check(text, seed):
        strong = token_byte_spans(real_tokenizers[strong_name], text, "row 0, strong")
        weak = token_byte_spans(real_tokenizers[weak_name], text, "row 0, weak")
        alignment = align(strong.spans, weak.spans, strong.num_bytes)
        texts = len(alignment.chunk_ends)
        assert alignment.num_chunks == texts + 1 and alignment.strong_chunk[-1] == alignment.weak_chunk[-1] == texts
        assert alignment.strong_chunk[-2] == alignment.weak_chunk[-2] == texts - 1  # EOS alone, after the text
        data, expected = text.encode(), chunk_bytes(text, alignment.chunk_ends)
        for side in (strong, weak):
            chunk_of = alignment.strong_chunk if side is strong else alignment.weak_chunk
            assert all(0 <= b - a <= 1 for a, b in zip(chunk_of, chunk_of[1:])) and chunk_of[0] == 0
            groups = tokens_in_chunks(side.spans, chunk_of, texts)
            assert [b"".join(data[slice(*side.spans[t])] for t in g) for g in groups] == expected
        strong_inner = {strong.spans[t][1] for t in range(len(strong.ids))} - set(alignment.chunk_ends)
        weak_inner = {weak.spans[t][1] for t in range(len(weak.ids))} - set(alignment.chunk_ends)
        assert not strong_inner & weak_inner  # a cut both sides share is always a sync point: chunks are smallest
        values = np.random.default_rng(seed).normal(size=len(weak.ids) + 1).astype(np.float32)  # + the EOS term
        sums = chunk_sums(values, alignment.weak_chunk, alignment.num_chunks)
        assert sums.dtype == np.float32 and sums.shape == (alignment.num_chunks,)
        assert float(sums.astype(np.float64).sum()) == pytest.approx(float(values.astype(np.float64).sum()), abs=1e-5)

    check()


# --- the named pitfalls, each with both real tokenizers on either side ------------------------------------------


def aligned_chunks(real_tokenizers, strong_name, weak_name, text) -> list[bytes]:
    alignment = align_response(real_tokenizers[strong_name], real_tokenizers[weak_name], text, "row 0")
    return chunk_bytes(text, alignment.chunk_ends)


@pytest.mark.parametrize("strong_name, weak_name", PAIRS)
def test_digits(real_tokenizers, strong_name, weak_name):
    chunks = aligned_chunks(real_tokenizers, strong_name, weak_name, "in 2024, 12345 people")
    assert chunks == [b"in", b" ", b"2", b"0", b"2", b"4", b",", b" ", b"1", b"2", b"3", b"4", b"5", b" people"]


@pytest.mark.parametrize("strong_name, weak_name", PAIRS)
def test_leading_spaces_and_whitespace_markers(real_tokenizers, strong_name, weak_name):
    # Gemma spells "  two" as `▁▁`,`two`, SmolLM2 as `Ġ`,`Ġtwo`: their only common cut is after "two"
    chunks = aligned_chunks(real_tokenizers, strong_name, weak_name, "  two  spaces\n\ttab")
    assert chunks == [b"  two", b"  spaces", b"\n", b"\t", b"tab"]


@pytest.mark.parametrize("strong_name, weak_name", PAIRS)
def test_multibyte_utf8_and_emoji(real_tokenizers, strong_name, weak_name):
    # SmolLM2 splits é, 🤖 and 日 into byte pieces whose character offsets repeat ((4, 6), (5, 6), (5, 6))
    chunks = aligned_chunks(real_tokenizers, strong_name, weak_name, "café 🤖 日本語")
    assert chunks == [b"caf", "é".encode(), " 🤖".encode(), " 日本".encode(), "語".encode()]


@pytest.mark.parametrize("strong_name, weak_name", PAIRS)
def test_byte_fallback(real_tokenizers, strong_name, weak_name):
    text = "\u2fd5 x 🦩🫠"
    gemma = real_tokenizers["gemma"].convert_ids_to_tokens(token_byte_spans(real_tokenizers["gemma"], text, "").ids)
    assert gemma[:3] == ["<0xE2>", "<0xBF>", "<0x95>"]  # the pitfall is there: Gemma byte-falls-back on ⿕
    chunks = aligned_chunks(real_tokenizers, strong_name, weak_name, text)
    # both cut ⿕ and 🦩 into bytes at the same places: the chunks are those bytes, finer than characters
    assert chunks == [b"\xe2", b"\xbf", b"\x95", b" x", b" \xf0\x9f", b"\xa6", b"\xa9", "🫠".encode()]


@contextmanager
def nfkc(tokenizer):
    """The tokenizer with an NFKC normaliser in front of its own, for the duration of the block."""
    backend = tokenizer.backend_tokenizer
    own = backend.normalizer
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), *([own] if own is not None else [])])
    try:
        yield tokenizer
    finally:
        backend.normalizer = own


@pytest.mark.parametrize("strong_name, weak_name", PAIRS)
def test_a_normaliser_that_changes_the_text_is_refused(real_tokenizers, strong_name, weak_name):
    text = "ﬁne ① x"  # NFKC: "fine 1 x"
    assert len(aligned_chunks(real_tokenizers, strong_name, weak_name, text)) > 1  # fine without the normaliser
    with (
        nfkc(real_tokenizers[weak_name]),
        pytest.raises(DataError, match=rf"^data\.jsonl row 7, weak tokenizer \S*{weak_name}\S*: the tokenizer changes"),
    ):
        align_response(real_tokenizers[strong_name], real_tokenizers[weak_name], text, "data.jsonl row 7")
    with nfkc(real_tokenizers[weak_name]):  # a text NFKC leaves alone still aligns
        assert aligned_chunks(real_tokenizers, strong_name, weak_name, "fine 1 x")


def test_a_literal_metaspace_is_refused_by_gemma(real_tokenizers):
    with pytest.raises(DataError, match="changes the response text"):
        token_byte_spans(real_tokenizers["gemma"], "x\u2581y", "row 0, strong tokenizer")


# --- synthetic spans and a dummy-prefix tokenizer -----------------------------------------------------------------


def test_overlaps_gaps_and_empty_spans_never_make_a_cut():
    # strong: a dummy-prefix `▁` at (0, 1) over "Hi" at (0, 2), "llo", an empty span, a space trimmed off
    # (the gap 5..6: whose it is is not known), "wo", an empty span at the end
    strong = [(0, 1), (0, 2), (2, 5), (3, 3), (6, 8), (8, 8)]
    weak = [(0, 1), (1, 2), (2, 5), (5, 6), (6, 8)]  # weak cuts at 1, 2, 5, 6
    alignment = align(strong, weak, 8)
    assert alignment.chunk_ends == [2, 8]  # not 1 (strong's overlap), not 5 or 6 (strong's gap)
    assert alignment.strong_chunk == [0, 0, 1, 1, 1, 1, 2] and alignment.weak_chunk == [0, 0, 1, 1, 1, 2]
    assert alignment.num_chunks == 3 and align(strong, weak, 8, eos=False).num_chunks == 2


def test_a_text_and_its_tokens_must_agree():
    with pytest.raises(ValueError, match="3-byte response with 0 strong"):
        align([], [(0, 3)], 3)
    assert align([], [], 0).num_chunks == 1  # an empty text: only the EOS chunk


def dummy_prefix_tokenizer() -> PreTrainedTokenizerFast:
    """A Llama-2-style tokenizer: SentencePiece `▁` prepended to the text, byte fallback, a stripping decoder."""
    tokenizer = Tokenizer(models.BPE(byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    special = ["<unk>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    tokenizer.train_from_iterator(
        ["hello world the cat"] * 20, trainers.BpeTrainer(vocab_size=300, special_tokens=special)
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>")


def test_a_dummy_prefix_tokenizer_aligns_and_keeps_its_leading_space():
    tokenizer = dummy_prefix_tokenizer()
    response = token_byte_spans(tokenizer, "héllo", "row 0")
    assert tokenizer.convert_ids_to_tokens(response.ids)[:2] == ["\u2581", "h"]  # the prefix is a token of its own
    assert response.spans[:2] == [(0, 1), (0, 1)]  # `▁` is not in the text: the run keeps its coarse span
    alignment = align(response.spans, response.spans, response.num_bytes)
    assert alignment.strong_chunk[:2] == [0, 0] and alignment.chunk_ends[-1] == len("héllo".encode())
    assert token_byte_spans(tokenizer, " hello", "row 1").num_bytes == 6  # decodes to "hello": accepted


# --- chunk sums and the chunk loss on its own ---------------------------------------------------------------------


def test_chunk_sums_accumulate_in_float64():
    values = np.array([1e8, 1.0, -1e8, 2.0], dtype=np.float32)  # float32 accumulation loses the 1.0
    assert chunk_sums(values, [0, 0, 0, 1], 3).tolist() == [1.0, 2.0, 0.0]
    with pytest.raises(ValueError, match=r"\(4,\) values for 3 tokens"):
        chunk_sums(values, [0, 0, 1], 2)


def reference_chunk_loss(policy, ref, sums, index, mask, gamma):
    """Straight from the formula, in plain Python."""
    losses = []
    for b in range(policy.shape[0]):
        strong = {}
        for t in range(policy.shape[1]):
            if mask[b, t]:
                strong[int(index[b, t])] = strong.get(int(index[b, t]), 0.0) + float(policy[b, t] - ref[b, t])
        terms = [(gamma * strong[k] - float(sums[b, k])) ** 2 for k in strong]
        losses.append(sum(terms) / float(mask[b].sum()))
    return sum(losses) / len(losses)


def test_chunk_loss_matches_the_formula_with_multi_token_chunks():
    torch.manual_seed(0)
    policy, ref = torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.float64)
    index = torch.tensor([[-1, 0, 0, 1, 2, -1], [0, 1, 1, 1, 2, 3]])
    sums = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.0, 0.25, -0.5, 3.0]], dtype=torch.float64)
    loss, metrics = wspo_chunk_loss(policy, ref, sums, index, mask, gamma=0.3)
    assert float(loss) == pytest.approx(reference_chunk_loss(policy, ref, sums, index, mask, 0.3), rel=1e-12)
    assert metrics["tokens"] == 10 and metrics["weak_ratio_mean"] == pytest.approx((1.5 + 3.75) / 7)
    optimum = torch.tensor([[0.0, 0.5 / 0.3, 0.0, -1.0 / 0.3, 2.0 / 0.3, 0.0]], dtype=torch.float64)
    zero, _ = wspo_chunk_loss(optimum, torch.zeros_like(optimum), sums[:1], index[:1], mask[:1], gamma=0.3)
    assert float(zero) == pytest.approx(0.0, abs=1e-24)  # any split of a chunk's ratio over its tokens is optimal


@pytest.mark.parametrize(
    "index, sums, why",
    [
        ([[0, 1, 0]], [[1.0, 1.0]], "contiguous"),  # chunk 0 comes back after chunk 1
        ([[0, 2, 2]], [[1.0, 1.0, 1.0]], "contiguous"),  # chunk 1 skipped
        ([[0, 1, 2]], [[1.0, 1.0]], "contiguous"),  # more chunks than weak sums
        ([[0, 0, 1]], [[1.0, 1.0, 5.0]], "past a row's last strong chunk"),  # a weak chunk no strong token has
    ],
)
def test_chunk_loss_refuses_a_bad_layout(index, sums, why):
    policy = torch.zeros(1, 3)
    with pytest.raises(ValueError, match=why):
        wspo_chunk_loss(policy, policy, torch.tensor(sums), torch.tensor(index), torch.ones(1, 3), gamma=0.1)
    with pytest.raises(ValueError, match="no response tokens"):
        wspo_chunk_loss(policy, policy, torch.zeros(1, 1), torch.zeros(1, 3, dtype=torch.int64), policy, gamma=0.1)
