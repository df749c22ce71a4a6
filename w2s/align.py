"""Aligning two tokenizations of one response, so a per-token weak signal can train a strong model with another
tokenizer (cross-tokenizer WSPO).

The weak pair scores a response under its own tokenizer and the strong model trains under its own: they share the
response TEXT, never token ids. Both tokenizations are cut where both have a token boundary (a "synchronisation
point"); the chunks are the smallest spans between such points. Log-probs and log-ratios add within a chunk, so a
chunk's weak log-ratio is exact, and the sum over a response is preserved (`chunk_sums`).

Steps (one encode per side, then an O(n + m) walk):

1. `token_byte_spans(tokenizer, response, where)`: the response's ids, tokenised as w2s feeds them to the model
   (`w2s.tokens.encode_example`: on its own after the rendered prompt's ids, no special tokens added, spellings of
   special tokens kept as text; so the prompt does not change the response's ids and is not an argument), and each
   token's [start, end) in the response's UTF-8 bytes. An HF fast tokenizer's offsets are CHARACTER offsets: they
   are turned into bytes with a cumulative table. Pieces of one character (byte fallback `<0xE2>`, byte-level
   `ðŁ`) all carry that character's span, so such a run is re-cut by each piece's own byte count (byte-level
   alphabet, `<0xXX>`, `▁` = one space) when those counts add up to the run's bytes; otherwise the run stays
   one coarse span and simply never holds a boundary inside. A tokenizer that does not give the text back
   (a normaliser such as NFKC, lowercasing, unknown tokens) is refused (`DataError`): aligning it would be
   aligning garbage. A leading-space difference only (a SentencePiece dummy prefix and its stripping decoder)
   is accepted.
2. `align(strong, weak, num_bytes)`: a byte p is a boundary of one side when every token before the cut reaches
   no further than p (ends are made monotone: the running maximum) and the earliest non-empty token after it
   starts exactly at p. Overlapping spans (a dummy-prefix `▁` at (0, 1) before `H` at (0, 1)), gaps left by
   trimmed offsets and empty spans therefore never invent a boundary; they only make a chunk longer. Sync points
   are the boundaries of both sides, and each token's chunk is the first sync point at or past its reach. With `eos`,
   end-of-sequence is one more chunk of its own on both sides (the strong EOS token, the weak EOS term).
3. `chunk_sums(values, chunk_of, num_chunks)`: the weak per-token values summed per chunk, for
   `w2s.train.losses.wspo_chunk_loss`.

With the same tokenizer on both sides every chunk is one token, and the chunk loss is the token-level WSPO loss.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING

import numpy as np
from tokenizers.pre_tokenizers import ByteLevel

from w2s.errors import DataError

if TYPE_CHECKING:  # annotations only: transformers takes about a second to import, and `w2s --help` reaches here
    from transformers import PreTrainedTokenizerBase

Span = tuple[int, int]
"""[start, end) of a token in the response's UTF-8 bytes."""

BYTE_LEVEL_ALPHABET = frozenset(ByteLevel.alphabet())
"""The 256 characters a byte-level BPE (GPT-2, SmolLM2) spells its bytes with: one character per byte."""
BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
"""A SentencePiece byte-fallback token: one byte."""


@dataclass(frozen=True)
class ResponseTokens:
    """A response as one tokenizer sees it."""

    ids: list[int]
    """The response's token ids (no EOS), as the model is fed them after the prompt."""
    spans: list[Span]
    """Each token's [start, end) in the response's UTF-8 bytes (may overlap, repeat or be empty; see `align`)."""
    num_bytes: int
    """Length of the response in UTF-8 bytes."""


@dataclass(frozen=True)
class Alignment:
    """Which chunk each token of either side belongs to; chunk ids are 0, 1, ... in order, without gaps."""

    strong_chunk: list[int]
    """Chunk of each strong token (text tokens, then EOS when aligned with `eos`), non-decreasing."""
    weak_chunk: list[int]
    """Chunk of each weak token (text tokens, then the EOS term when aligned with `eos`), non-decreasing."""
    num_chunks: int
    chunk_ends: list[int]
    """Byte where each text chunk ends (the sync points; the last is the response's length); EOS has none."""


def token_byte_spans(tokenizer: PreTrainedTokenizerBase, response: str, where: str) -> ResponseTokens:
    """The response's ids and their byte spans under `tokenizer` (module docstring, step 1).

    Args:
        tokenizer: a fast (Rust-backed) tokenizer: only those give offsets.
        response: the response text.
        where: what is being tokenised, for refusals (e.g. "data.jsonl row 12 field 'response', weak tokenizer
            models/weak").

    Raises:
        DataError: a tokenizer without offsets, or one whose tokens do not give the response text back.
    """
    if not tokenizer.is_fast:
        raise DataError(
            f"{where}: a slow (Python) tokenizer gives no offsets; cross-tokenizer alignment needs a fast one"
        )
    encoded = tokenizer(response, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    _check_round_trip(tokenizer, ids, response, where)
    to_byte = _byte_table(response)
    spans = [(to_byte[start], to_byte[end]) for start, end in offsets]
    return ResponseTokens(ids, _split_character_pieces(tokenizer, ids, spans), to_byte[-1])


def _check_round_trip(tokenizer: PreTrainedTokenizerBase, ids: list[int], response: str, where: str) -> None:
    """Refuses a tokenizer whose tokens spell another text than `response` (a leading-space difference aside)."""
    decoded = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if decoded == response or decoded.lstrip(" ") == response.lstrip(" "):
        return
    at = next((i for i, (a, b) in enumerate(zip(decoded, response)) if a != b), min(len(decoded), len(response)))
    raise DataError(
        f"{where}: the tokenizer changes the response text (its normaliser or unknown tokens): character {at} "
        f"{response[at : at + 8]!r} comes back as {decoded[at : at + 8]!r}; cross-tokenizer alignment needs a "
        "tokenizer that gives the text back"
    )


def _byte_table(text: str) -> list[int]:
    """UTF-8 byte offset of each character offset 0..len(text)."""
    if text.isascii():
        return list(range(len(text) + 1))
    return list(accumulate((len(ch.encode("utf-8")) for ch in text), initial=0))


def _split_character_pieces(tokenizer: PreTrainedTokenizerBase, ids: list[int], spans: list[Span]) -> list[Span]:
    """Re-cuts each run of tokens whose spans overlap (pieces of one character) by the pieces' own byte counts,
    when those add up to the run's bytes; other runs are left as they are."""
    result, index = list(spans), 0
    while index < len(spans):
        stop, reach = index + 1, spans[index][1]
        while stop < len(spans) and spans[stop][0] < reach:  # overlaps what came before: same run
            reach = max(reach, spans[stop][1])
            stop += 1
        if stop - index > 1:
            lengths = _piece_lengths(tokenizer, ids[index:stop])
            if lengths is not None and sum(lengths) == reach - spans[index][0]:
                ends = list(accumulate(lengths, initial=spans[index][0]))
                result[index:stop] = list(zip(ends[:-1], ends[1:]))
        index = stop
    return result


def _piece_lengths(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[int] | None:
    """Bytes of text each token stands for, read from its vocabulary string; None where that cannot be told."""
    backend = tokenizer.backend_tokenizer
    byte_level = "ByteLevel" in f"{backend.pre_tokenizer!r}{backend.decoder!r}"
    lengths = []
    for piece in tokenizer.convert_ids_to_tokens(ids):
        if byte_level:
            if not set(piece) <= BYTE_LEVEL_ALPHABET:
                return None
            lengths.append(len(piece))
        else:
            lengths.append(1 if BYTE_PIECE.fullmatch(piece) else len(piece.replace("\u2581", " ").encode("utf-8")))
    return lengths


def boundaries(spans: list[Span], num_bytes: int) -> tuple[list[int], list[int]]:
    """Each token's reach (the running maximum of the ends, the last one `num_bytes`) and the bytes where this
    tokenization can be cut: after token t when its reach is exactly where the earliest later non-empty token
    starts (an overlap or a gap there means the cut is not known, so there is none).

    Returns:
        (reach per token, sorted boundary bytes ending with `num_bytes`).
    """
    if num_bytes == 0 or not spans:
        return [num_bytes] * len(spans), ([num_bytes] if num_bytes else [])
    reach = [min(end, num_bytes) for end in accumulate((end for _, end in spans), max)]
    reach[-1] = num_bytes  # trimmed trailing whitespace still belongs to the last token
    later_start, next_start = [0] * len(spans), num_bytes + 1
    for t in range(len(spans) - 1, -1, -1):  # later_start[t]: the earliest start of a non-empty token after t
        later_start[t] = next_start
        if spans[t][1] > spans[t][0]:
            next_start = min(next_start, spans[t][0])
    cuts = [p for p, s in zip(reach[:-1], later_start[:-1]) if p == s and 0 < p < num_bytes]
    return reach, [*dict.fromkeys(cuts), num_bytes]


def align(strong: list[Span], weak: list[Span], num_bytes: int, eos: bool = True) -> Alignment:
    """The chunks of one response's two tokenizations (module docstring, step 2).

    Args:
        strong: the strong tokens' byte spans (`ResponseTokens.spans`).
        weak: the weak tokens' byte spans.
        num_bytes: the response's length in bytes.
        eos: both sequences end with an end-of-sequence token (term): give it a chunk of its own on each side.
    """
    if bool(strong) != bool(num_bytes) or bool(weak) != bool(num_bytes):
        raise ValueError(f"align: a {num_bytes}-byte response with {len(strong)} strong and {len(weak)} weak tokens")
    strong_reach, strong_cuts = boundaries(strong, num_bytes)
    weak_reach, weak_cuts = boundaries(weak, num_bytes)
    sync, i, j = [], 0, 0
    while i < len(strong_cuts) and j < len(weak_cuts):  # two-pointer intersection of sorted lists
        if strong_cuts[i] == weak_cuts[j]:
            sync.append(strong_cuts[i])
        i, j = (i + (strong_cuts[i] <= weak_cuts[j]), j + (weak_cuts[j] <= strong_cuts[i]))
    strong_chunk, weak_chunk = _chunk_of(strong_reach, sync), _chunk_of(weak_reach, sync)
    if eos:
        strong_chunk.append(len(sync))
        weak_chunk.append(len(sync))
    return Alignment(strong_chunk, weak_chunk, len(sync) + eos, sync)


def _chunk_of(reach: list[int], sync: list[int]) -> list[int]:
    """Index of the first sync point at or past each token's reach (`reach` is non-decreasing)."""
    chunks, k = [], 0
    for r in reach:
        while sync[k] < r:
            k += 1
        chunks.append(k)
    return chunks


def align_response(
    strong_tokenizer: PreTrainedTokenizerBase,
    weak_tokenizer: PreTrainedTokenizerBase,
    response: str,
    where: str,
    eos: bool = True,
) -> Alignment:
    """`align` of `response` as tokenised by each tokenizer; `where` names the row, e.g. "data.jsonl row 3"; a
    refusal adds the role and the tokenizer's path."""
    strong = token_byte_spans(strong_tokenizer, response, f"{where}, strong tokenizer {strong_tokenizer.name_or_path}")
    weak = token_byte_spans(weak_tokenizer, response, f"{where}, weak tokenizer {weak_tokenizer.name_or_path}")
    return align(strong.spans, weak.spans, strong.num_bytes, eos)


def chunk_sums(values, chunk_of: list[int], num_chunks: int) -> np.ndarray:
    """Per-token `values` (the weak log-ratios) summed per chunk, accumulated in float64 and returned as float32,
    so the total over a response is kept up to float rounding.

    Args:
        values: one value per weak token (a list, a numpy array or a CPU tensor), `[tokens]`.
        chunk_of: the chunk of each of those tokens (`Alignment.weak_chunk`).
        num_chunks: `Alignment.num_chunks`.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(chunk_of),):
        raise ValueError(f"chunk_sums: {values.shape} values for {len(chunk_of)} tokens")
    return np.bincount(np.asarray(chunk_of, dtype=np.int64), weights=values, minlength=num_chunks).astype(np.float32)


def chunk_share(strong_tokenizer, weak_tokenizer, texts: list[str]) -> dict:
    """How often chunks span more than one token, over `texts`: per side ("strong", "weak") the characters in all
    text chunks and (`<side>_multi`) in chunks of more than one of that side's tokens, the number of chunks, and
    (`multi`) a Counter of (side, chunk text) for those chunks."""
    totals, multi = Counter(), Counter()
    for row, text in enumerate(texts):
        alignment = align_response(strong_tokenizer, weak_tokenizer, text, f"text {row}")
        data, starts = text.encode(), [0, *alignment.chunk_ends[:-1]]
        for side, chunk_of in (("strong", alignment.strong_chunk[:-1]), ("weak", alignment.weak_chunk[:-1])):
            sizes = Counter(chunk_of)  # tokens per text chunk (EOS left out)
            for k, (start, end) in enumerate(zip(starts, alignment.chunk_ends)):
                chars = len(data[start:end].decode())
                totals[side] += chars
                if sizes[k] > 1:
                    totals[f"{side}_multi"] += chars
                    multi[(side, data[start:end].decode())] += 1
        totals["chunks"] += len(alignment.chunk_ends)
    return {"totals": totals, "multi": multi}
