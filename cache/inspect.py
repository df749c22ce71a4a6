"""`w2s inspect CACHE`: what a cache holds, on one screen, and a PNG of its reward distributions.

The figures are only worth reading about a sound cache, so inspect verifies it first (sizes, checksums and row
ids of every shard file, as `w2s verify` does), says so, and refuses a cache that fails.

A cross-tokenizer cache (`w2s.schemas.cache`) stores strong tokens and one weak log-ratio per chunk, at the chunk's
last token: its per-token figures are then per chunk (named by their last strong token), and the first row's
alignment is shown, its strong tokens grouped by chunk with each chunk's weak sum.

Tokens are decoded with the `tokenizers` library from the cache's own tokenizer copy when the run record proves
that copy is the one published with this manifest (`copy_decoder`), so `w2s inspect` imports no model library
(transformers brings torch: seconds of start-up); otherwise through transformers (`cache_strong_tokenizer`).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from w2s.cache.store import Cache  # noqa: E402
from w2s.errors import CacheMismatch  # noqa: E402
from w2s.io import sha256_file  # noqa: E402
from w2s.runs import MARKER  # noqa: E402
from w2s.schemas.cache import STRONG_CHUNK_FIELD  # noqa: E402

COLUMNS = ("row_id", "input_ids", "prompt_len", "weak_seq_reward", "weak_log_ratio")
SHOWN_CHUNKS = 24
"""Chunks of the first row that `chunk_view` shows."""


class CopyDecoder:
    """A tokenizer copy's `tokenizer.json` read by the `tokenizers` library: the two calls inspect makes, giving
    what transformers' fast tokenizer gives when it does not clean up spaces (`copy_decoder` checks that)."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_file(str(path))

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=False)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str | None]:
        return [self.backend.id_to_token(token) for token in ids]


def copy_decoder(cache: Cache) -> CopyDecoder | None:
    """A decoder of the stored ids read from the cache's own tokenizer copy, or None (then transformers decodes).

    Used only when the folder's run record (`w2s.runs`) holds the sha256 of this manifest.json and of every file of
    the copy, and they match: the copy is then the one published with this manifest, whose fingerprint it records.
    Also None for a remote cache, a copy without tokenizer.json, or one whose decode transformers post-processes
    (`clean_up_tokenization_spaces` on a non-BPE model)."""
    if cache.place.remote:
        return None
    root = Path(cache.place.join("manifest.json")).parent
    name = "strong_tokenizer" if cache.provenance.get("cross_tokenizer") else "tokenizer"
    try:
        published = json.loads((root / MARKER).read_text()).get("published", {})
        config = json.loads((root / name / "tokenizer_config.json").read_text())
        model = json.loads((root / name / "tokenizer.json").read_text())["model"]["type"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    files = [p for p in (root / name).rglob("*") if p.is_file()]
    recorded = [published.get(p.relative_to(root).as_posix()) for p in [root / "manifest.json", *files]]
    if None in recorded or recorded != [sha256_file(p) for p in [root / "manifest.json", *files]]:
        return None
    if config.get("clean_up_tokenization_spaces") and (
        model != "BPE" or config.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output")
    ):
        return None
    return CopyDecoder(root / name / "tokenizer.json")


def stored_ids_tokenizer(cache: Cache):
    """What decodes the stored ids: `copy_decoder`'s, else transformers' tokenizer (`cache_strong_tokenizer`)."""
    decoder = copy_decoder(cache)
    if decoder is not None:
        return decoder
    from w2s.cache.portable import cache_strong_tokenizer  # transformers, and torch with it: only on this path

    return cache_strong_tokenizer(cache)


def load_columns(cache: Cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequence rewards `[rows]`, flat per-token ratios `[response tokens]`, and the token id each ratio is about
    `[response tokens]`, over all shards (read from the cache's default format). A compact cache stores no
    `weak_seq_reward`: it is summed here from the stored ratios (in float32, after their rounding to storage). In a
    cross-tokenizer cache the ratios are those of the chunks, each about its last strong token."""
    rewards, ratios, tokens = [], [], []
    cross = cache.layout.cross_tokenizer
    for index in range(len(cache.shards)):
        data = cache.read_shard(index, columns=COLUMNS + ((STRONG_CHUNK_FIELD,) if cross else ()))
        ratio = data.token_values["weak_log_ratio"]
        if len(data.weak_seq_reward) == data.num_rows:
            rewards.append(data.weak_seq_reward)
        else:
            rewards.append(np.add.reduceat(ratio, data.offsets[:-1]).astype(np.float32))
        shard_tokens = np.concatenate([data.sequence(row)[data.prompt_len[row] :] for row in range(data.num_rows)])
        keep = np.ones(len(ratio), bool)
        if cross:  # a chunk ends where the next token's chunk differs, or its row ends
            chunks = data.token_values[STRONG_CHUNK_FIELD]
            keep = np.append(chunks[1:] != chunks[:-1], True)
            keep[data.offsets[1:-1] - 1] = True
        ratios.append(ratio[keep])
        tokens.append(shard_tokens[keep])
    return np.concatenate(rewards), np.concatenate(ratios), np.concatenate(tokens)


def chunk_view(cache: Cache, tokenizer, count: int = SHOWN_CHUNKS) -> str | None:
    """A cross-tokenizer cache's first row as aligned: its first `count` chunks, each the strong tokens in it and
    the chunk's weak log-ratio sum, e.g. `['Ġdan'] +0.013 | ['Ġlo', 'st'] -0.145`; None for another cache."""
    if not cache.layout.cross_tokenizer:
        return None
    data = cache.read_shard(0, columns=("row_id", "input_ids", "prompt_len", "weak_log_ratio", STRONG_CHUNK_FIELD))
    values = data.values(0)
    chunks, ratio = values[STRONG_CHUNK_FIELD], values["weak_log_ratio"]
    pieces = tokenizer.convert_ids_to_tokens(data.sequence(0)[data.prompt_len[0] :].tolist())
    shown = []
    for chunk in range(min(count, int(chunks[-1]) + 1)):
        where = np.flatnonzero(chunks == chunk)
        shown.append(f"{[pieces[t] for t in where]} {ratio[where[-1]]:+.3f}")
    more = " | ..." if int(chunks[-1]) + 1 > count else ""
    total = f" ({int(chunks[-1]) + 1} chunks over {len(chunks)} strong tokens)"
    return f"row {int(data.row_id[0])}, strong tokens by chunk with the weak sums: " + " | ".join(shown) + more + total


def extreme_tokens(
    ratios: np.ndarray, tokens: np.ndarray, tokenizer, count: int = 8, min_seen: int = 3
) -> tuple[list, list]:
    """Tokens with the highest and lowest mean weak log-ratio (seen at least `min_seen` times)."""
    sums: dict[int, list[float]] = defaultdict(lambda: [0.0, 0])
    for token, ratio in zip(tokens.tolist(), ratios.tolist()):
        sums[token][0] += ratio
        sums[token][1] += 1
    means = sorted(((s / n, t, n) for t, (s, n) in sums.items() if n >= min_seen), reverse=True)
    show = lambda rows: [(repr(tokenizer.decode([t])), m, n) for m, t, n in rows]  # noqa: E731
    return show(means[:count]), show(means[::-1][:count])


def plot_histograms(rewards: np.ndarray, ratios: np.ndarray, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.hist(rewards, bins=50, color="tab:blue")
    left.set(title="weak_seq_reward (per sequence)", xlabel="sum of log-ratios", ylabel="rows")
    right.hist(ratios, bins=100, color="tab:orange", log=True)
    right.set(title="weak_log_ratio (per token)", xlabel="log pi_aligned - log pi_base", ylabel="tokens (log)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_summary(cache: Cache, rewards: np.ndarray, ratios: np.ndarray, top: list, bottom: list) -> None:
    """One screen: totals and provenance, reward statistics, and the most positive and negative tokens."""
    console = Console()
    totals, prov = cache.totals, cache.provenance
    console.print(
        f"[bold]{cache.path}[/bold]: {totals['rows']} rows, {totals['tokens']} tokens "
        f"({totals['response_tokens']} response), {len(cache.shards)} shards, {totals['bytes']} bytes; "
        f"schema v{cache.manifest['schema_version']}, backend {prov['backend']}, "
        f"{cache.layout.store} store, stored {cache.layout.dtype}"
    )
    stats = Table(title="weak reward")
    for column in ("", "mean", "std", "min", "p50", "max"):
        stats.add_column(column)
    for name, values in (("weak_seq_reward", rewards), ("weak_log_ratio", ratios)):
        figures = (values.mean(), values.std(), values.min(), np.median(values), values.max())
        stats.add_row(name, *(f"{v:.3f}" for v in figures))
    console.print(stats)
    for title, rows in (("most positive tokens", top), ("most negative tokens", bottom)):
        console.print(f"{title}: " + ", ".join(f"{tok} {m:+.2f} (x{n})" for tok, m, n in rows))


def verified(cache: Cache) -> str:
    """The line saying what was verified.

    Raises:
        CacheMismatch: the cache fails verification (the first problem named, and how many there are).
    """
    problems = cache.verify()
    if problems:
        more = f" (and {len(problems) - 1} more: `w2s verify {cache.path}` lists them)" if len(problems) > 1 else ""
        first = " ".join(problems[0].split())
        raise CacheMismatch(f"{cache.path}: fails verification, not inspected: {first}{more}")
    files = sum(len(shard["files"]) for shard in cache.shards)
    return f"verified: {files} shard files match their sizes, checksums and row ids"


def default_plot(cache: Cache) -> Path | None:
    """inspect.png in the cache's own folder, where it can be written (the folder is w2s's); None for a remote or
    read-only cache: the current folder is the user's, and an inspect.png of theirs there would be overwritten."""
    folder = None if cache.place.remote else Path(cache.place.join("inspect.png")).parent
    return folder / "inspect.png" if folder is not None and os.access(folder, os.W_OK) else None


def inspect_cache(cache_dir: str | Path, plot_path: str | Path | None = None) -> dict:
    """Verifies the cache, prints the summary and writes `inspect.png` in the cache folder (or at `plot_path`; for a
    remote or read-only cache, only at `plot_path`); returns the figures.

    Raises:
        CacheMismatch: no finished cache there, or one that fails verification (nothing is written then).
    """
    cache = Cache.open(cache_dir)
    Console().print(verified(cache))
    rewards, ratios, tokens = load_columns(cache)
    tokenizer = stored_ids_tokenizer(cache)  # the stored ids' tokenizer, the cache's own copy: works anywhere
    top, bottom = extreme_tokens(ratios, tokens, tokenizer)
    plot_path = plot_path or default_plot(cache)
    if plot_path is not None:
        plot_histograms(rewards, ratios, Path(plot_path))
    print_summary(cache, rewards, ratios, top, bottom)
    alignment = chunk_view(cache, tokenizer)
    if alignment is not None:
        Console().print(alignment, markup=False)
    Console().print(
        f"histograms: {plot_path}"
        if plot_path
        else "histograms: not drawn, the cache folder is remote or "
        "read-only (w2s writes nowhere else unasked); inspect_cache(..., plot_path=FILE) draws them"
    )
    return {
        "rows": int(cache.totals["rows"]),
        "reward_mean": float(rewards.mean()),
        "ratio_mean": float(ratios.mean()),
        "top": top,
        "bottom": bottom,
        "plot": str(plot_path) if plot_path else None,
    }
