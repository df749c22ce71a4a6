"""Builds the tiny world: corpus, shared tokenizer, the two bases and, per task (length, tone), a partly aligned
weak model and the strong SFT ceiling; then scores them.

Everything is written to a temporary folder beside `out_dir` and renamed into place at the end, with
`world.json` (hashes of the tokenizer and every model's weights, and the config) as the last file, so a killed
build never leaves a world that looks finished. Same seed and thread count, same bytes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from w2s.io import atomic_write_json, atomic_write_text, sha256_file
from w2s.models import save_tokenizer
from w2s.runs import claim, finished_run, read_marker
from w2s.sampling import generate
from w2s.world.config import ModelShape, WorldConfig
from w2s.world.corpus import build_splits
from w2s.world.metrics import length_reward, score_responses, tone_reward
from w2s.world.sft import encode_pairs, train_sft
from w2s.world.tokenizer import check_corpus, train_tokenizer

MODEL_NAMES = ("weak_base", "weak_aligned", "strong_base", "weak_aligned_tone", "strong_sft", "strong_sft_tone")
TASK_MODELS = {
    "length": {"weak_aligned": "weak_aligned", "strong_sft": "strong_sft"},
    "tone": {"weak_aligned": "weak_aligned_tone", "strong_sft": "strong_sft_tone"},
}
"""Per task, the folder of its weak aligned model and of its SFT ceiling (the two bases are shared)."""
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


def task_reward(task: str, tokenizer: PreTrainedTokenizerFast, response: str, l_min: int, l_max: int) -> float:
    """The reward of a task ("length" or "tone") of one reference summary."""
    if task == "tone":
        return tone_reward(response)
    return length_reward(len(tokenizer(response, add_special_tokens=False)["input_ids"]), l_min, l_max)


def filtered_subset(config: WorldConfig, tokenizer: PreTrainedTokenizerFast, examples: list[dict], task: str) -> list:
    """Reward-filtered data: the examples whose reference summary earns the task's full reward."""
    return [ex for ex in examples if task_reward(task, tokenizer, ex["response"], config.l_min, config.l_max) == 1.0]


def mixed_subset(config: WorldConfig, filtered: list[dict], examples: list[dict]) -> list[dict]:
    """The weak aligned model's data: every filtered example, plus unfiltered ones (those not kept, in split
    order) so that the filtered share is `align_mix`: a partial alignment."""
    kept_ids = {ex["example_id"] for ex in filtered}
    others = [ex for ex in examples if ex["example_id"] not in kept_ids]
    extra = round(len(filtered) * (1 - config.align_mix) / config.align_mix)
    return filtered + others[:extra]


def fine_tune(config: WorldConfig, start, tokenizer, data: list[dict], budget: tuple[int, float], seed: int, desc: str):
    """A copy of `start` fine-tuned on `data` for budget = (steps, lr); returns (model, losses)."""
    model = copy.deepcopy(start)
    steps, lr = budget
    encoded = encode_pairs(tokenizer, data, MAX_LEN)
    losses = train_sft(model, encoded, tokenizer.pad_token_id, steps, config.batch_size, lr, seed, desc)
    return model, losses


def train_bases(config: WorldConfig, splits: dict, tokenizer: PreTrainedTokenizerFast) -> tuple[dict, dict]:
    """The weak and strong bases, trained from scratch on the train split; (models, losses) by name."""
    train = encode_pairs(tokenizer, splits["train"], MAX_LEN)
    models, losses = {}, {}
    for offset, (name, shape) in ((1, ("weak_base", config.weak)), (3, ("strong_base", config.strong))):
        models[name] = new_model(shape, tokenizer, config.seed + offset)
        losses[name] = train_sft(
            models[name], train, tokenizer.pad_token_id, shape.steps, config.batch_size, shape.lr,
            config.seed + offset, name.replace("_", " "),
        )  # fmt: skip
    return models, losses


def train_models(config: WorldConfig, splits: dict, tokenizer: PreTrainedTokenizerFast) -> dict:
    """Trains the six models (two bases; per task a partly aligned weak model and an SFT ceiling); returns them
    by name, with their loss curves and the sizes of each task's fine-tuning data."""
    models, losses = train_bases(config, splits, tokenizer)
    sizes = {}
    for index, (task, names) in enumerate(TASK_MODELS.items()):
        filtered = filtered_subset(config, tokenizer, splits["align"], task)
        mixed = mixed_subset(config, filtered, splits["align"])
        seed = config.seed + 10 * (index + 1)
        aligned, sft = names["weak_aligned"], names["strong_sft"]
        align_budget, sft_budget = (config.align_steps, config.align_lr), (config.sft_steps, config.sft_lr)
        models[aligned], losses[aligned] = fine_tune(
            config, models["weak_base"], tokenizer, mixed, align_budget, seed + 2, aligned
        )
        models[sft], losses[sft] = fine_tune(config, models["strong_base"], tokenizer, filtered, sft_budget, seed, sft)
        sizes[task] = {"filtered": len(filtered), "aligned_on": len(mixed)}
    return {"models": {name: models[name] for name in MODEL_NAMES}, "losses": losses, "align_examples": sizes}


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
    table = Table(title="tiny world: the models on the test split (sampled, T=0.7, top_k=50)")
    columns = {"length_reward": "length", "tone_reward": "tone", "content": "content", "clause_accuracy": "clauses"}
    columns.update({"mean_tokens": "tokens", "in_window": "in window"})
    table.add_column("model", justify="left")
    for label in columns.values():
        table.add_column(label, justify="right")
    for name, row in results.items():
        table.add_row(name, *(f"{row[key]:.3f}" if key != "mean_tokens" else f"{row[key]:.1f}" for key in columns))
    console.print(table)


WORLD_FILES = ("data", "tokenizer", *MODEL_NAMES, "world.json")
"""Everything a world build publishes (and what a rebuild clears)."""


def is_built(config: WorldConfig) -> bool:
    """True when `out_dir` holds a finished world of this config whose every file still checks (no lock taken)."""
    return finished_run(config.out_dir, "world") and read_marker(Path(config.out_dir))["identity"] == config_hash(
        config
    )


def build_world(config: WorldConfig, force: bool = False) -> dict:
    """Builds (or, when an identical world is already there and checks, reuses) the tiny world.

    The folder is claimed through `w2s.runs`: a folder of the user's is refused, another config's world is
    replaced (its own files only), and a damaged one is rebuilt.

    Returns:
        The contents of `world.json`.
    """
    check_corpus(config, MAX_LEN)  # before the folder is claimed: a refused config writes nothing
    console = Console()
    out_dir = Path(config.out_dir)
    with claim(
        out_dir, "world", identity=config_hash(config), on_change="replace", force=force, artefacts=WORLD_FILES
    ) as folder:
        if folder.done:
            console.print(
                f"[green]world already built[/green] at {out_dir} (same config, files checked); `--force` rebuilds it"
            )
            return json.loads((out_dir / "world.json").read_text())
        folder.reset(WORLD_FILES)  # not finished, damaged or forced: only the world's own names are cleared
        tmp = folder.scratch()
        manifest = write_world(config, tmp)
        folder.publish_tree(tmp, last="world.json")
        folder.finish(WORLD_FILES)
    print_table(manifest["metrics"], console)
    console.print(f"world written to {out_dir} in {manifest['build_seconds']} s")
    return manifest


def write_world(config: WorldConfig, tmp: Path) -> dict:
    """Builds every file of the world into `tmp`, world.json last; returns world.json's contents."""
    started = time.time()
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    sizes = {"train": config.num_train, "align": config.num_align, "cache": config.num_cache, "test": config.num_test}
    sizes["val"] = config.num_val  # drawn last, so the earlier splits are those of a world without it
    splits = build_splits(config.seed, sizes, config.min_facts, config.max_facts)
    for split, rows in splits.items():
        write_jsonl(tmp / "data" / f"{split}.jsonl", rows)
    tokenizer = train_tokenizer((ex["prompt"] + " " + ex["response"] for ex in splits["train"]), config.vocab_size)
    trained = train_models(config, splits, tokenizer)
    save_tokenizer(tokenizer, tmp / "tokenizer")
    for name, model in trained["models"].items():
        model.save_pretrained(tmp / name)
        save_tokenizer(tokenizer, tmp / name)
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
    return manifest
