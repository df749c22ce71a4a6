"""`w2s inspect CACHE`: what a cache holds, on one screen, and a PNG of its reward distributions.

The figures are only worth reading about a sound cache, so inspect verifies it first (sizes, checksums and row
ids of every shard file, as `w2s verify` does), says so, and refuses a cache that fails.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from w2s.cache.portable import cache_tokenizer  # noqa: E402
from w2s.cache.store import Cache  # noqa: E402
from w2s.errors import CacheMismatch  # noqa: E402

COLUMNS = ("row_id", "input_ids", "prompt_len", "weak_seq_reward", "weak_log_ratio")


def load_columns(cache: Cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequence rewards `[rows]`, flat per-token ratios `[response tokens]`, and the token id each ratio is about
    `[response tokens]`, over all shards (read from the cache's default format). A compact cache stores no
    `weak_seq_reward`: it is summed here from the stored ratios (in float32, after their rounding to storage)."""
    rewards, ratios, tokens = [], [], []
    for index in range(len(cache.shards)):
        data = cache.read_shard(index, columns=COLUMNS)
        ratio = data.token_values["weak_log_ratio"]
        if len(data.weak_seq_reward) == data.num_rows:
            rewards.append(data.weak_seq_reward)
        else:
            rewards.append(np.add.reduceat(ratio, data.offsets[:-1]).astype(np.float32))
        ratios.append(ratio)
        tokens += [data.sequence(row)[data.prompt_len[row] :] for row in range(data.num_rows)]
    return np.concatenate(rewards), np.concatenate(ratios), np.concatenate(tokens)


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


def inspect_cache(cache_dir: str | Path, plot_path: str | Path | None = None) -> dict:
    """Verifies the cache, prints the summary and writes `inspect.png` in the cache folder (or at `plot_path`; for a
    cache on another filesystem, a URL, in the current folder); returns the figures.

    Raises:
        CacheMismatch: no finished cache there, or one that fails verification (nothing is written then).
    """
    cache = Cache.open(cache_dir)
    Console().print(verified(cache))
    rewards, ratios, tokens = load_columns(cache)
    tokenizer = cache_tokenizer(cache)  # the cache's own copy: works from any directory, wherever the models went
    top, bottom = extreme_tokens(ratios, tokens, tokenizer)
    default_plot = Path("inspect.png") if cache.place.remote else cache.place.join("inspect.png")
    plot_path = Path(plot_path or default_plot)
    plot_histograms(rewards, ratios, plot_path)
    print_summary(cache, rewards, ratios, top, bottom)
    Console().print(f"histograms: {plot_path}")
    return {
        "rows": int(cache.totals["rows"]),
        "reward_mean": float(rewards.mean()),
        "ratio_mean": float(ratios.mean()),
        "top": top,
        "bottom": bottom,
        "plot": str(plot_path),
    }
