"""Builds the tiny world: corpus, shared tokenizer, weak base, weak aligned and strong base, then scores them.

Everything is written to a temporary folder beside `out_dir` and renamed into place at the end, with
`world.json` (hashes of the tokenizer and every model's weights, and the config) as the last file, so a killed
build never leaves a world that looks finished. Same seed and thread count, same bytes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from w2s.io import atomic_write_json, atomic_write_text, publish_dir, sha256_file
from w2s.sampling import generate
from w2s.world.config import ModelShape, WorldConfig
from w2s.world.corpus import build_splits
from w2s.world.metrics import length_reward, score_responses
from w2s.world.sft import encode_pairs, train_sft
from w2s.world.tokenizer import train_tokenizer

MODEL_NAMES = ("weak_base", "weak_aligned", "strong_base")
MAX_LEN = 256


def config_hash(config: WorldConfig) -> str:
    """Hash of every setting that changes the world's bytes (out_dir and eval size excluded)."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("out_dir", "eval_examples")}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def new_model(shape: ModelShape, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    """A freshly initialised Llama of the given shape; heads are 64 wide (vLLM's CPU attention needs that)."""
    heads = max(1, shape.hidden_size // 64)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=4 * shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=64,
        max_position_embeddings=MAX_LEN,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One sorted-key JSON object per line, written atomically (read back with `w2s.io.read_jsonl`)."""
    atomic_write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def aligned_subset(tokenizer: PreTrainedTokenizerFast, examples: list[dict], l_min: int, l_max: int) -> list[dict]:
    """Reward-filtered data: the examples whose reference summary earns the full length reward."""
    return [
        ex
        for ex in examples
        if length_reward(len(tokenizer(ex["response"], add_special_tokens=False)["input_ids"]), l_min, l_max) == 1.0
    ]


def train_models(config: WorldConfig, splits: dict, tokenizer: PreTrainedTokenizerFast) -> dict:
    """Trains the three models; returns them by name, with their loss curves."""
    pad = tokenizer.pad_token_id
    train = encode_pairs(tokenizer, splits["train"], MAX_LEN)
    weak = new_model(config.weak, tokenizer, config.seed + 1)
    weak_losses = train_sft(
        weak, train, pad, config.weak.steps, config.batch_size, config.weak.lr, config.seed + 1, "weak base"
    )
    aligned = copy.deepcopy(weak)
    kept = aligned_subset(tokenizer, splits["align"], config.l_min, config.l_max)
    align_data = encode_pairs(tokenizer, kept, MAX_LEN)
    align_losses = train_sft(
        aligned,
        align_data,
        pad,
        config.align_steps,
        config.batch_size,
        config.align_lr,
        config.seed + 2,
        "weak aligned",
    )
    strong = new_model(config.strong, tokenizer, config.seed + 3)
    strong_losses = train_sft(
        strong, train, pad, config.strong.steps, config.batch_size, config.strong.lr, config.seed + 3, "strong base"
    )
    return {
        "models": {"weak_base": weak, "weak_aligned": aligned, "strong_base": strong},
        "losses": {"weak_base": weak_losses, "weak_aligned": align_losses, "strong_base": strong_losses},
        "align_examples": len(kept),
    }


def evaluate_models(config: WorldConfig, models: dict, tokenizer: PreTrainedTokenizerFast, test: list[dict]) -> dict:
    """Length reward and content score of each model's sampled summaries on the test split."""
    examples = test[: config.eval_examples]
    prompts = [ex["prompt"] for ex in examples]
    results = {}
    for name, model in models.items():
        responses = generate(model, tokenizer, prompts, max_new_tokens=64, seed=config.seed)
        results[name] = score_responses(tokenizer, responses, examples, config.l_min, config.l_max)
    return results


def print_table(results: dict, console: Console) -> None:
    table = Table(title="tiny world: the three models on the test split (sampled, T=0.7, top_k=50)")
    for column in ("model", "length reward", "content", "mean tokens", "in [L_min, L_max]"):
        table.add_column(column, justify="right" if column != "model" else "left")
    for name, row in results.items():
        cells = (
            f"{row['length_reward']:.3f}",
            f"{row['content']:.3f}",
            f"{row['mean_tokens']:.1f}",
            f"{row['in_window']:.2f}",
        )
        table.add_row(name, *cells)
    console.print(table)


def is_built(config: WorldConfig) -> bool:
    manifest = Path(config.out_dir) / "world.json"
    if not manifest.exists():
        return False
    return json.loads(manifest.read_text()).get("config_hash") == config_hash(config)


def build_world(config: WorldConfig, force: bool = False) -> dict:
    """Builds (or, when an identical world is already there, reuses) the tiny world.

    Returns:
        The contents of `world.json`.
    """
    console = Console()
    out_dir = Path(config.out_dir)
    if is_built(config) and not force:
        console.print(f"[green]world already built[/green] at {out_dir} (same config); `--force` rebuilds it")
        return json.loads((out_dir / "world.json").read_text())
    started = time.time()
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    sizes = {"train": config.num_train, "align": config.num_align, "cache": config.num_cache, "test": config.num_test}
    splits = build_splits(config.seed, sizes, config.min_facts, config.max_facts)
    for split, rows in splits.items():
        write_jsonl(tmp / "data" / f"{split}.jsonl", rows)
    tokenizer = train_tokenizer((ex["prompt"] + " " + ex["response"] for ex in splits["train"]), config.vocab_size)
    trained = train_models(config, splits, tokenizer)
    tokenizer.save_pretrained(tmp / "tokenizer")
    for name, model in trained["models"].items():
        model.save_pretrained(tmp / name)
        tokenizer.save_pretrained(tmp / name)
    results = evaluate_models(config, trained["models"], tokenizer, splits["test"])
    manifest = {
        "config_hash": config_hash(config),
        "config": asdict(config),
        "tokenizer_sha256": sha256_file(tmp / "tokenizer" / "tokenizer.json"),
        "weights_sha256": {name: sha256_file(tmp / name / "model.safetensors") for name in MODEL_NAMES},
        "align_examples": trained["align_examples"],
        "final_loss": {name: losses[-1] for name, losses in trained["losses"].items()},
        "metrics": results,
        "build_seconds": round(time.time() - started, 1),
    }
    atomic_write_json(tmp / "world.json", manifest)
    publish_dir(tmp, out_dir)
    print_table(results, console)
    console.print(f"world written to {out_dir} in {manifest['build_seconds']} s")
    return manifest
