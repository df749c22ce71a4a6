"""`w2s inspect CACHE`: what a cache holds, on one screen, and a PNG of its reward distributions."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from w2s.cache.manifest import read_manifest  # noqa: E402
from w2s.cache.store import read_parquet, read_zarr  # noqa: E402


def load_columns(cache_dir: Path, manifest: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequence rewards, flat per-token ratios, and the token id each ratio belongs to, over all shards."""
    rewards, ratios, tokens = [], [], []
    for shard in manifest["shards"]:
        files = shard["files"]
        data = read_parquet(cache_dir / files["parquet"]["name"]) if "parquet" in files else read_zarr(cache_dir / files["zarr"]["name"])
        rewards.append(data.weak_seq_reward)
        ratios.append(data.token_values["weak_log_ratio"])
        for row in range(data.num_rows):
            start = data.input_offsets[row] + data.prompt_len[row]
            tokens.append(data.input_ids[start : data.input_offsets[row + 1]])
    return np.concatenate(rewards), np.concatenate(ratios), np.concatenate(tokens)


def extreme_tokens(ratios: np.ndarray, tokens: np.ndarray, tokenizer, count: int = 8, min_seen: int = 3) -> tuple[list, list]:
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


def inspect_cache(cache_dir: str | Path, plot_path: str | Path | None = None) -> dict:
    """Prints the summary and writes `inspect.png` in the cache folder (or at `plot_path`); returns the figures."""
    cache_dir = Path(cache_dir)
    manifest = read_manifest(cache_dir)
    rewards, ratios, tokens = load_columns(cache_dir, manifest)
    tokenizer = AutoTokenizer.from_pretrained(manifest["provenance"]["models"]["weak_base"]["name_or_path"])
    top, bottom = extreme_tokens(ratios, tokens, tokenizer)
    plot_path = Path(plot_path or cache_dir / "inspect.png")
    plot_histograms(rewards, ratios, plot_path)
    console = Console()
    totals, prov = manifest["totals"], manifest["provenance"]
    console.print(f"[bold]{cache_dir}[/bold]: {totals['rows']} rows, {totals['tokens']} tokens "
                  f"({totals['response_tokens']} response), {len(manifest['shards'])} shards, {totals['bytes']} bytes; "
                  f"schema v{manifest['schema_version']}, backend {prov['backend']}, stored {prov['storage_dtype']}")
    stats = Table(title="weak reward")
    for column in ("", "mean", "std", "min", "p50", "max"):
        stats.add_column(column)
    for name, values in (("weak_seq_reward", rewards), ("weak_log_ratio", ratios)):
        stats.add_row(name, *(f"{v:.3f}" for v in (values.mean(), values.std(), values.min(), np.median(values), values.max())))
    console.print(stats)
    for title, rows in (("most positive tokens", top), ("most negative tokens", bottom)):
        console.print(f"{title}: " + ", ".join(f"{tok} {m:+.2f} (x{n})" for tok, m, n in rows))
    console.print(f"histograms: {plot_path}")
    return {"rows": int(totals["rows"]), "reward_mean": float(rewards.mean()), "ratio_mean": float(ratios.mean()),
            "top": top, "bottom": bottom, "plot": str(plot_path)}
