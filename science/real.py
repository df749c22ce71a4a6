"""`make science-real`: the papers' claims on real weights, across tokenizers: a SmolLM2-135M pair steers
Gemma-3-270M base.

From a built real world (`make real-world`: SmolLM2-135M-Instruct and Gemma-3-270M base converted from the
registry's GGUFs), the driver
1. writes the data (`w2s.science.real_data`): preference pairs, WSPO's cache rows, the SFT rows and the
   validation and test prompts, on disjoint topics; the attribute is answer length in words;
2. aligns the weak model with DPO (`w2s.world.dpo`) on in-window against out-of-window answers, and measures how
   its per-token log-ratio spreads (report.json's `weak_pair`, beside the real world's LoRA fine-tune);
3. builds the cross-tokenizer cache (weak pair in SmolLM2's tokens, chunk sums in Gemma's), the Gemma SFT ceiling
   (fine-tuned on the cache rows in the window), and per seed one cross-tokenizer WSPO run per gamma;
4. on validation: Gemma base and each gamma; the gamma is chosen on it (`science_report.select`);
5. on test: weak base, weak aligned, Gemma base, Gemma + WSPO, the SFT ceiling, CBS search, and best-of-N and
   tree search (MCTS) at the strong tokens search sampled, each with the reference log-likelihood per byte (the
   capability score);
6. report.json (the same format as `make science`'s, layout "real"), report.md and science-real.png.
Every stage is resumable: a finished stage is reused when its settings and files match.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from rich.console import Console
from tqdm import tqdm

from w2s.config import require, require_finite
from w2s.errors import UserError
from w2s.eval.config import EvalConfig, SystemConfig
from w2s.io import atomic_write_json, read_jsonl
from w2s.runs import LOCK, claim, finished_run
from w2s.science.real_data import (
    make_data,
    reference_loglik,
    weak_pair_diagnostics,
    write_data,
)
from w2s.science.tiny import MCTS_KNOBS, check_mcts, config_command, evaluate_system, matched_systems
from w2s.train.config import TrainConfig
from w2s.world.dpo import DpoSettings

KINDS = ("short", "window", "long")
"""The cache's answer kinds: under, inside and over the window."""
DATA_FILES = ("dpo.jsonl", "cache.jsonl", "sft.jsonl", "val.jsonl", "test.jsonl")


@dataclass
class SftSettings:
    """How the Gemma SFT ceiling is fine-tuned on the in-window rows."""

    steps: int = 14
    """Optimiser steps (14 steps of 4 rows: about two epochs of the 31 in-window rows)."""
    batch_size: int = 4
    """Rows per step."""
    lr: float = 2e-5
    """Peak learning rate (10% warm-up, then cosine), every weight trained."""


def _train_defaults() -> TrainConfig:
    return TrainConfig(lr=2e-4, epochs=2, micro_batch_size=4, grad_accum=1, log_every=5, check_rows=4, lora=True)


@dataclass
class ScienceRealConfig:
    """What `make science-real` runs: the real world, the data, the weak pair's DPO, WSPO, search and budgets."""

    layout: ClassVar[str] = "real"
    """The report's systems, metrics and claims (`w2s.science.report.REAL`)."""
    tasks: ClassVar[list[str]] = ["length"]
    world_per_seed: ClassVar[bool] = False

    out_dir: str = "runs/science-real"
    """Everything goes here: data/, weak_dpo/, cache/, sft/, seed-<s>/{wspo,val,test}, report.*."""
    world: str = "runs/real"
    """A built real world (`make real-world`): weak_base/ (SmolLM2-135M-Instruct) and strong_gemma/."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Each seed trains its own WSPO runs and samples every system (at least 3 for the report's intervals)."""
    data_seed: int = 0
    """Fixes the topic split, the answers and the wordings (the data, DPO and cache are built once)."""
    l_min: int = 15
    """Shortest answer, in words, of full reward."""
    l_max: int = 30
    """Longest answer, in words, of full reward."""
    tolerance: int = 10
    """Words outside the window at which the reward reaches 0."""
    num_val_topics: int = 3
    """Held-out topics of the validation prompts (six wordings each)."""
    num_test_topics: int = 6
    """Held-out topics of the test prompts (six wordings each)."""
    rejected: list[str] = field(default_factory=lambda: ["long"])
    """Kinds of the DPO pairs' rejected answers (long: the fact with every closing; short: its first 8 words).
    The weak base never stops early (it runs to any cap), so long answers are the on-policy failure; rejecting
    short ones as well taught the weak model to forbid an early EOS above all (-20 nats after a short answer),
    which WSPO passed on to Gemma as "never stop" (docs/science_real.md)."""
    num_train_topics: int = 0
    """Training topics (DPO pairs, cache rows) kept; 0 keeps every topic that is not held out (a reduced run
    sets fewer)."""
    dpo: DpoSettings = field(default_factory=DpoSettings)
    """The weak model's DPO (`w2s.world.dpo.DpoSettings`)."""
    gammas: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0])
    """The WSPO gamma sweep; the gamma used on test is selected on validation."""
    train: TrainConfig = field(default_factory=_train_defaults)
    """WSPO settings for Gemma (out_dir, cache_dir, policy, gammas and seed are set per seed)."""
    sft: SftSettings = field(default_factory=SftSettings)
    """The Gemma SFT ceiling (full fine-tune)."""
    search: dict[str, int] = field(default_factory=lambda: {"width": 2, "num_samples": 2, "chunk_len": 16})
    """Chunk-level beam search W, K, L over Gemma's chunks, scored by the SmolLM2 pair."""
    mcts: dict[str, float] = field(default_factory=lambda: dict(MCTS_KNOBS))
    """Tree search knobs (num_children, chunk_len, c, w, finalists; its budget is the strong tokens CBS sampled per
    prompt); {} leaves the tree search out."""
    max_new_tokens: int = 64
    """Token budget of every response (each system's own tokens)."""
    capability_margin: float = 0.05
    """Selection and the 'capability kept' claim allow this much less reference log-likelihood (nats per byte)."""
    threads: int = 2
    """torch threads for every stage."""
    resamples: int = 4000
    """Bootstrap resamples per interval."""

    def __post_init__(self) -> None:
        require(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "seeds", "distinct, at least 1")
        require(0 < self.l_min <= self.l_max and self.tolerance >= 1, "l_max", "needs 0 < l_min <= l_max")
        require(bool(self.gammas), "gammas", "must be non-empty")
        for value in self.gammas:
            require_finite(value, "gammas", positive=True)
        for section in ("dpo", "sft"):
            for key in ("steps", "batch_size"):
                require(getattr(getattr(self, section), key) >= 1, f"{section}.{key}", "must be >= 1")
            require_finite(getattr(self, section).lr, f"{section}.lr", positive=True)
        require(set(self.search) == {"width", "num_samples", "chunk_len"}, "search", "needs width, num_samples, "
                "chunk_len")  # fmt: skip
        check_mcts(self.mcts)
        require(bool(self.rejected) and set(self.rejected) <= {"short", "long"}, "rejected", "short and/or long")
        require(self.num_train_topics >= 0, "num_train_topics", "must be >= 0 (0 keeps every training topic)")
        for key in ("num_val_topics", "num_test_topics", "max_new_tokens", "threads", "resamples"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(self.num_val_topics + self.num_test_topics <= 20, "num_test_topics", "val + test topics <= 20")

    @property
    def world_seed(self) -> int:
        return self.data_seed

    @property
    def num_val(self) -> int:
        return 6 * self.num_val_topics

    @property
    def num_test(self) -> int:
        return 6 * self.num_test_topics

    def path(self, *parts: str) -> Path:
        return Path(self.out_dir).joinpath(*parts)

    def model(self, role: str) -> str:
        """weak_base and strong_base (Gemma) from the real world; weak_aligned (DPO) and sft_ceiling built here."""
        where = {"weak_base": Path(self.world) / "weak_base", "strong_base": Path(self.world) / "strong_gemma"}
        where |= {"weak_aligned": self.path("weak_dpo", "model"), "sft_ceiling": self.path("sft", "model")}
        return str(where[role])

    def wspo(self, seed: int, gamma: float) -> str:
        return str(self.path(f"seed-{seed}", "wspo", f"gamma-{gamma:g}", "final"))


def built_stage(folder: Path, command: str, identity: dict, files: tuple[str, ...], build) -> None:
    """Runs `build(tmp)` into a scratch folder and publishes `files` into `folder`, unless a finished run of the
    same identity is there and its files check (then nothing is done)."""
    with claim(folder, command, identity=identity, on_change="replace", artefacts=files) as run:
        if run.done:
            return
        run.reset(files)
        tmp = run.scratch()
        build(tmp)
        run.publish_tree(tmp, last=files[-1])
        run.finish(files)


def data_identity(config: ScienceRealConfig) -> dict:
    keys = ("data_seed", "num_val_topics", "num_test_topics", "l_min", "l_max", "rejected")
    identity = {key: getattr(config, key) for key in keys}
    if config.num_train_topics:  # recorded only when set (a reduced run)
        identity["num_train_topics"] = config.num_train_topics
    return identity


def prepare_data(config: ScienceRealConfig) -> None:
    data = make_data(config.data_seed, config.num_val_topics, config.num_test_topics, config.l_min, config.l_max,
                     config.num_train_topics, tuple(config.rejected))  # fmt: skip
    built_stage(config.path("data"), "science-real-data", data_identity(config), DATA_FILES,
                lambda tmp: write_data(tmp, data))  # fmt: skip


def align_weak(config: ScienceRealConfig) -> None:
    """weak_aligned/: SmolLM2-135M-Instruct after DPO on data/dpo.jsonl (merged LoRA), dpo.json its log."""
    from w2s.models import load_causal_lm, load_tokenizer
    from w2s.world.dpo import train_dpo
    from w2s.world.real import fingerprint

    def build(tmp: Path) -> None:
        tokenizer = load_tokenizer("weak_base", config.model("weak_base"))
        model = load_causal_lm("weak_base", config.model("weak_base"))
        log, merged = train_dpo(model, tokenizer, read_jsonl(config.path("data", "dpo.jsonl")), config.dpo,
                                config.data_seed)  # fmt: skip
        merged.save_pretrained(tmp / "model", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "model")
        atomic_write_json(tmp / "dpo.json", {"settings": dataclasses.asdict(config.dpo), "log": log})

    identity = {
        **data_identity(config),
        "dpo": dataclasses.asdict(config.dpo),
        "weak_base": fingerprint(Path(config.model("weak_base"))),
    }
    built_stage(config.path("weak_dpo"), "science-real-dpo", identity, ("model", "dpo.json"), build)


def sft_ceiling(config: ScienceRealConfig) -> None:
    """gemma_sft/: Gemma-3-270M base fully fine-tuned on the in-window cache rows (data/sft.jsonl)."""
    from w2s.models import load_causal_lm, load_tokenizer
    from w2s.world.real import fingerprint
    from w2s.world.sft import encode_pairs, train_sft

    def build(tmp: Path) -> None:
        tokenizer = load_tokenizer("strong_base", config.model("strong_base"))
        model = load_causal_lm("strong_base", config.model("strong_base"))
        rows = [dict(row, example_id=row["id"]) for row in read_jsonl(config.path("data", "sft.jsonl"))]
        settings = config.sft
        losses = train_sft(model, encode_pairs(tokenizer, rows, 256), tokenizer.pad_token_id, settings.steps,
                           settings.batch_size, settings.lr, config.data_seed, "Gemma SFT ceiling")  # fmt: skip
        model.save_pretrained(tmp / "model", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "model")
        atomic_write_json(tmp / "sft.json", {"settings": dataclasses.asdict(settings), "losses": losses})

    identity = {
        **data_identity(config),
        "sft": dataclasses.asdict(config.sft),
        "gemma": fingerprint(Path(config.model("strong_base"))),
    }
    built_stage(config.path("sft"), "science-real-sft", identity, ("model", "sft.json"), build)


def build_cache(config: ScienceRealConfig) -> None:
    """cache/: the weak pair's log-ratios on data/cache.jsonl, with Gemma as strong_ref (so, cross-tokenizer)."""
    from w2s.cache.config import CacheConfig
    from w2s.cache.run import run
    from w2s.source import DataSource

    if not finished_run(config.path("cache"), "cache"):
        rows = DataSource(str(config.path("data", "cache.jsonl")), id_field="id")
        models = {role: config.model(role) for role in ("weak_base", "weak_aligned")}
        run(CacheConfig(out_dir=str(config.path("cache")), data=rows, **models, strong_ref=config.model("strong_base"),
                        backend="transformers", format="parquet", max_len=256, rows_per_shard=32,
                        batch_tokens=2048))  # fmt: skip


def train_seed(config: ScienceRealConfig, seed: int) -> None:
    """seed-<s>/wspo/gamma-<g>/: one cross-tokenizer WSPO run of Gemma per gamma."""
    from w2s.train.recipe import run as train_wspo

    train = dataclasses.replace(
        config.train, out_dir=str(config.path(f"seed-{seed}", "wspo")), cache_dir=str(config.path("cache")),
        policy=config.model("strong_base"), gammas=list(config.gammas), seed=seed, precision="fp32",
    )  # fmt: skip
    if not all(finished_run(Path(config.wspo(seed, g)).parent, "train") for g in config.gammas):
        train_wspo(train)


class Capability:
    """The reference log-likelihood per byte of each prompt under a system's model, computed once per model and
    split (search and best-of-N sample the frozen Gemma base, so theirs is Gemma base's)."""

    def __init__(self, config: ScienceRealConfig) -> None:
        self.config, self.memo = config, {}

    def __call__(self, model_path: str, split: str) -> list[float]:
        from w2s.models import load_causal_lm, load_tokenizer

        key = (model_path, split)
        if key not in self.memo:
            rows = read_jsonl(self.config.path("data", f"{split}.jsonl"))
            model = load_causal_lm("capability", model_path).eval()
            self.memo[key] = reference_loglik(model, load_tokenizer("capability", model_path), rows)
        return self.memo[key]


def evaluate(config: ScienceRealConfig, seed: int, split: str, spec: SystemConfig, capability: Capability) -> dict:
    """One system on the val or test prompts: its report row, per prompt the length reward (in words), words,
    tokens and reference log-likelihood per byte; reused when already there."""
    out = config.path(f"seed-{seed}", split, spec.name.replace(" ", "_"))
    task = {"_component_": "w2s.eval.tasks.LengthTask", "prompts": {"path": str(config.path("data", f"{split}.jsonl")),
            "id_field": "id"}, "l_min": config.l_min, "l_max": config.l_max, "tolerance": config.tolerance,
            "unit": "words"}  # fmt: skip
    eval_config = EvalConfig(
        out_dir=str(out), task=task, systems=[spec], weak_base=config.model("weak_base"),
        weak_aligned=config.model("weak_aligned"), tokenizer=config.model("weak_base"), wspo_dir=str(out),
        gamma_sweep=False, num_examples=config.num_val if split == "val" else config.num_test, seed=seed,
        threads=config.threads, num_shown=2, max_new_tokens=config.max_new_tokens,
    )  # fmt: skip

    def extend(row: dict) -> None:
        scores = capability(spec.model, split)
        for example, value in zip(row["per_example"], scores, strict=True):
            example.update(tokens=example["mean_tokens"], ref_loglik=value)

    weak_width = json.loads((Path(config.model("weak_base")) / "config.json").read_text())["hidden_size"]
    return evaluate_system(eval_config, weak_width, extend)


def validation(config: ScienceRealConfig, seed: int, capability: Capability) -> dict[str, dict]:
    specs = [SystemConfig("strong_base", config.model("strong_base"))]
    specs += [SystemConfig(f"wspo gamma={g:g}", config.wspo(seed, g)) for g in config.gammas]
    return {spec.name: evaluate(config, seed, "val", spec, capability) for spec in specs}


def test_systems(config: ScienceRealConfig, seed: int, gamma: float, capability: Capability) -> dict[str, dict]:
    """Every system on the test prompts; best-of-N and MCTS matched to the strong tokens search sampled."""
    gemma = config.model("strong_base")
    specs = [SystemConfig(name, config.model(name)) for name in ("weak_base", "weak_aligned", "strong_base")]
    specs += [SystemConfig("wspo", config.wspo(seed, gamma)), SystemConfig("sft_ceiling", config.model("sft_ceiling"))]
    specs.append(SystemConfig("search", gemma, "cbs", dict(config.search)))
    rows = {spec.name: evaluate(config, seed, "test", spec, capability) for spec in specs}
    run_spec = lambda spec: evaluate(config, seed, "test", spec, capability)  # noqa: E731
    return rows | matched_systems(run_spec, gemma, rows, config.mcts)


def weak_pair_section(config: ScienceRealConfig) -> dict:
    """report.json's `weak_pair`: the DPO log's end and the per-token log-ratio diagnostics of the DPO-aligned
    pair, beside the real world's LoRA fine-tune (weak_aligned/) when the world has one."""
    from w2s.models import load_causal_lm, load_tokenizer

    rows = read_jsonl(config.path("data", "cache.jsonl"))
    tokenizer = load_tokenizer("weak_base", config.model("weak_base"))
    base = load_causal_lm("weak_base", config.model("weak_base")).eval()
    section = {"dpo": json.loads(config.path("weak_dpo", "dpo.json").read_text())["log"][-5:]}
    aligned = {"dpo": config.model("weak_aligned"), "lora_sft": str(Path(config.world) / "weak_aligned")}
    for name, path in aligned.items():
        if (Path(path) / "config.json").is_file():
            model = load_causal_lm("weak_aligned", path).eval()
            section[f"ratio_{name}"] = weak_pair_diagnostics(base, model, tokenizer, rows)
    return section


def eos_section(config: ScienceRealConfig, gamma: float, rows_per_kind: int = 8) -> dict:
    """report.json's `strong_eos`: Gemma's mean log-probability of ending (EOS) right after each kind of cache
    answer, before WSPO and after it (the chosen gamma, each seed), beside the weak pair's log-ratio there. It
    shows what WSPO taught the strong model about stopping, the attribute's lever."""
    from w2s.models import load_causal_lm, load_tokenizer
    from w2s.science.real_data import response_token_logps

    rows = read_jsonl(config.path("data", "cache.jsonl"))
    by_kind_rows = {kind: [row for row in rows if row["kind"] == kind][:rows_per_kind] for kind in KINDS}
    picked = [row for kind in KINDS for row in by_kind_rows[kind]]
    tokenizer = load_tokenizer("strong_base", config.model("strong_base"))
    models = {"strong_base": config.model("strong_base")}
    models |= {f"wspo seed {seed}": config.wspo(seed, gamma) for seed in config.seeds}
    section = {"gamma": gamma, "rows_per_kind": rows_per_kind}
    for name, path in models.items():
        model, by_kind = load_causal_lm(name, path).eval(), {}
        for row in picked:
            logps, size = response_token_logps(model, tokenizer, row["prompt"], row["response"])
            by_kind.setdefault(row["kind"], []).append(logps[size].item())
        section[name] = {kind: round(sum(v) / len(v), 3) for kind, v in by_kind.items()}
    return section


def alignment_section(config: ScienceRealConfig) -> dict:
    """report.json's `alignment`: the share of the cache responses' characters that land in chunks of more than
    one Gemma (strong) or SmolLM2 (weak) token, where WSPO compares chunk sums instead of single tokens."""
    from w2s.align import chunk_share
    from w2s.models import load_tokenizer

    texts = [row["response"] for row in read_jsonl(config.path("data", "cache.jsonl"))]
    strong = load_tokenizer("strong_base", config.model("strong_base"))
    result = chunk_share(strong, load_tokenizer("weak_base", config.model("weak_base")), texts)
    totals = result["totals"]
    common = [text for (side, text), _ in result["multi"].most_common() if side == "strong"][:8]
    return {
        "responses": len(texts),
        "characters": totals["strong"],
        "chunks": totals["chunks"],
        "share_chars_multi_strong": round(totals["strong_multi"] / totals["strong"], 4),
        "share_chars_multi_weak": round(totals["weak_multi"] / totals["weak"], 4),
        "commonest_multi_strong": common,
    }


def run(config: ScienceRealConfig) -> dict:
    """The whole run; returns the report (also written to out_dir/report.json)."""
    torch.set_num_threads(config.threads)
    for role in ("weak_base", "strong_base"):
        if not (Path(config.model(role)) / "config.json").is_file():
            raise UserError(f"world: {config.model(role)} has no model; build the real world first (make real-world)")
    with claim(config.out_dir, "science-real", lock=LOCK):
        return run_stages(config, Console())


def run_stages(config: ScienceRealConfig, console: Console) -> dict:
    from w2s.science.report import select, write_science_report

    started, timings = time.time(), {}
    capability = Capability(config)
    stages = [("data", prepare_data), ("weak DPO", align_weak), ("cache", build_cache), ("SFT ceiling", sft_ceiling)]
    stages += [(f"WSPO seed {seed}", lambda c, s=seed: train_seed(c, s)) for seed in config.seeds]
    for name, stage in (bar := tqdm(stages, desc="science-real: build")):
        bar.set_postfix_str(name)
        stage(config)
        timings[name] = round(time.time() - started, 1)
    val = {(s, "length"): validation(config, s, capability) for s in tqdm(config.seeds, desc="science-real: val")}
    timings["validation"] = round(time.time() - started, 1)
    choices = {"length": select(config, "length", val)}
    gamma = choices["length"]["gamma"]["chosen"]
    test = {(s, "length"): test_systems(config, s, gamma, capability)
            for s in tqdm(config.seeds, desc="science-real: test")}  # fmt: skip
    timings["test"] = round(time.time() - started, 1)
    cache = json.loads(config.path("cache", "manifest.json").read_text())
    extra = {"weak_pair": weak_pair_section(config), "timings_seconds": timings, "world": config.world,
             "alignment": alignment_section(config), "l_window_words": [config.l_min, config.l_max],
             "strong_eos": eos_section(config, gamma)}  # fmt: skip
    report = write_science_report(config, val, test, choices, {"length": cache["totals"]}, extra)
    console.print(f"science-real report: {config.path('report.md')} ({time.time() - started:.0f} s)")
    return report


def main(argv: list[str] | None = None) -> int:
    """`python -m w2s.science.real CONFIG [key=value ...]`."""
    return config_command("w2s science-real", ScienceRealConfig, run, argv)


if __name__ == "__main__":
    sys.exit(main())
