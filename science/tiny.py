"""`make science`: the papers' central claims on the tiny world, over several seeds, with 95% intervals.

For every seed (its own world, caches, WSPO runs and sampling) and every task (length: WSPO's XSUM experiment;
tone: the W2S search paper's controlled-sentiment experiment), the driver
1. builds the world (`w2s.world.build`), the task's logit cache, and one WSPO run per gamma of the sweep;
2. on the **validation** split: the strong base, every WSPO gamma and every EFT beta (selection data);
3. picks one gamma and one beta per task from the validation runs pooled over seeds (`select`): the highest
   reward among the settings that keep clause accuracy within `capability_margin` of the strong base;
4. on the **test** split: weak base, weak aligned, strong base, WSPO (chosen gamma), the SFT ceiling, search
   (CBS), best-of-N at N = W*K (the paper's matching) and at the strong tokens search sampled, tree search (MCTS,
   `w2s.search.mcts`) with at most those strong tokens, and EFT (chosen beta), counting strong tokens sampled
   and weak tokens run per prompt.
Every stage is resumable: a finished world, cache, WSPO run or evaluation is reused. `w2s.science.report`
turns the per-prompt scores into report.json (intervals, claims), report.md and science.png.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from rich.console import Console
from tqdm import tqdm

from w2s.cache.config import CacheConfig
from w2s.cache.run import run as build_cache
from w2s.config import load_config, require, require_finite
from w2s.errors import run_as_command
from w2s.eval.config import EvalConfig, SystemConfig
from w2s.eval.run import eval_identity
from w2s.eval.run import run as run_eval
from w2s.io import atomic_write_json
from w2s.runs import LOCK, claim, finished_run, identity_key, read_marker
from w2s.source import DataSource
from w2s.task import load_task
from w2s.train.config import TrainConfig
from w2s.train.recipe import run as train_wspo
from w2s.world.build import TASK_MODELS, build_world
from w2s.world.build import config_hash as world_config_hash
from w2s.world.config import WorldConfig
from w2s.world.task import TINY_TASKS

TASKS = TINY_TASKS
"""Task name -> its Task class in the world (its weak aligned model and SFT ceiling: `TASK_MODELS`)."""


MCTS_KNOBS = {"num_children": 3, "chunk_len": 4, "c": 1.5, "w": 0.2, "finalists": 10}
"""The tree search's knobs but its budget (the authors' summarisation setting, `w2s.search.mcts.PAPER_DEFAULTS`);
the budget is matched to CBS per seed (`matched_systems`)."""


def _train_defaults() -> TrainConfig:
    return TrainConfig(lr=5e-4, epochs=2, micro_batch_size=8, grad_accum=2, log_every=50, check_rows=4)


@dataclass
class ScienceConfig:
    """What `make science` runs: seeds, tasks, the gamma sweep, baselines and budgets."""

    layout: ClassVar[str] = "tiny"
    """The report's systems, metrics and claims (`w2s.science.report.TINY`)."""

    out_dir: str = "runs/science"
    """Everything goes here: [seed-<s>/]world, [seed-<s>/]<task>/cache, seed-<s>/<task>/{wspo,val,test},
    report.json, report.md, science.png."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Each seed builds its own world, caches, trains and samples (at least 3 for the report's intervals)."""
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    """Tasks to run: length, tone."""
    world: WorldConfig = field(default_factory=WorldConfig)
    """The world (out_dir is set here; with `world_per_seed`, its seed too)."""
    world_per_seed: bool = True
    """Build one world per seed (the intervals then cover the world's build too); false builds one world (with
    `world.seed`) and its caches once, and the seeds vary WSPO's data order and initial state and the sampling."""
    world_dir: str = ""
    """A finished world of these `world` settings (another science run's `<out_dir>/world`) to use instead of
    building one here, so that two runs differing in one setting (e.g. `cache_dtype`) share one world; it is only
    read. Needs world_per_seed false."""
    cache_dtype: str = "float32"
    """The weak pair's dtype while the caches are scored (`cache.model_dtype`: float32, bfloat16, auto)."""
    train: TrainConfig = field(default_factory=_train_defaults)
    """WSPO settings (out_dir, cache_dir, policy, gammas and seed are set per seed and task)."""
    gammas: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0])
    """The WSPO gamma sweep; the gamma used on test is selected on validation."""
    eft_betas: list[float] = field(default_factory=lambda: [1.0, 3.0])
    """EFT weights tried on validation; the one used on test is selected the same way as gamma."""
    search: dict[str, int] = field(default_factory=lambda: {"width": 2, "num_samples": 4, "chunk_len": 8})
    """Chunk-level beam search W, K, L (best-of-N at the paper's matching draws N = W*K)."""
    mcts: dict[str, float] = field(default_factory=lambda: dict(MCTS_KNOBS))
    """Tree search knobs (num_children, chunk_len, c, w, finalists; its budget is the strong tokens CBS sampled per
    prompt); {} leaves the tree search out."""
    num_val: int = 100
    """Validation prompts per seed (selection)."""
    num_test: int = 200
    """Test prompts per seed."""
    capability_margin: float = 0.05
    """Selection and the 'capability kept' claims allow this much less clause accuracy than the strong base."""
    threads: int = 1
    """torch threads for the caches, WSPO and evaluation (the world uses `world.threads`)."""
    resamples: int = 4000
    """Bootstrap resamples per interval."""

    def __post_init__(self) -> None:
        require(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "seeds", "distinct, at least 1")
        require(bool(self.tasks) and set(self.tasks) <= set(TASKS), "tasks", f"a non-empty subset of {list(TASKS)}")
        require(bool(self.gammas) and bool(self.eft_betas), "gammas", "gammas and eft_betas must be non-empty")
        for value in self.gammas + self.eft_betas:
            require_finite(value, "gammas/eft_betas", positive=True)
        require(
            set(self.search) == {"width", "num_samples", "chunk_len"}, "search", "needs width, num_samples, chunk_len"
        )
        check_mcts(self.mcts)
        for key in ("num_val", "num_test", "threads", "resamples"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(self.num_test <= self.world.num_test and self.num_val <= self.world.num_val, "num_test", "<= world's")
        require(not (self.world_dir and self.world_per_seed), "world_dir", "needs world_per_seed: false")
        dtypes = ("float32", "bfloat16", "auto")
        require(self.cache_dtype in dtypes, "cache_dtype", f"one of {list(dtypes)}, got {self.cache_dtype!r}")


def check_mcts(knobs: dict) -> None:
    """Refuses tree search knobs MCTS does not take (its budget is matched to CBS, never set here)."""
    allowed = set(MCTS_KNOBS)
    require(set(knobs) <= allowed, "mcts", f"takes {sorted(allowed)} (the budget is CBS's), got {sorted(knobs)}")
    if knobs:  # checked as any system's params are: numbers of the right kind
        SystemConfig("mcts", "-", "mcts", {**knobs, "budget": 1}, where="mcts")


@dataclass(frozen=True)
class Cell:
    """One (seed, task) of the run and where its files go."""

    config: ScienceConfig
    seed: int
    task: str

    @property
    def world(self) -> Path:
        """The world: one per seed (`world_per_seed`), else one for every seed (built with `world.seed`)."""
        if self.config.world_dir:
            return Path(self.config.world_dir)
        shared = Path(self.config.out_dir) / "world"
        return Path(self.config.out_dir) / f"seed-{self.seed}" / "world" if self.config.world_per_seed else shared

    @property
    def cache(self) -> Path:
        """The task's cache: one per world, in this run's folder."""
        per_seed = Path(self.config.out_dir) / f"seed-{self.seed}"
        return (per_seed if self.config.world_per_seed else Path(self.config.out_dir)) / self.task / "cache"

    @property
    def root(self) -> Path:
        return Path(self.config.out_dir) / f"seed-{self.seed}" / self.task

    def model(self, role: str) -> str:
        """A world model: weak_base, strong_base, or this task's weak_aligned / strong_sft."""
        return str(self.world / TASK_MODELS[self.task].get(role, role))

    def wspo(self, gamma: float) -> str:
        return str(self.root / "wspo" / f"gamma-{gamma:g}" / "final")


def prepare(cell: Cell) -> None:
    """World (shared by the seed's tasks), the task's cache (weak pair + strong reference) and the gamma sweep."""
    config = cell.config
    world_seed = cell.seed if config.world_per_seed else config.world.seed
    world = dataclasses.replace(config.world, seed=world_seed, out_dir=str(cell.world))
    if config.world_dir:
        check_shared_world(world)
    else:
        build_world(world)
    cache = CacheConfig(
        out_dir=str(cell.cache),
        data=DataSource(str(cell.world / "data" / "cache.jsonl")),
        weak_base=cell.model("weak_base"),
        weak_aligned=cell.model("weak_aligned"),
        strong_ref=cell.model("strong_base"),
        backend="transformers",
        format="parquet",
        model_dtype=config.cache_dtype,
    )
    if not finished_run(cell.cache, "cache"):
        build_cache(cache)
    train = dataclasses.replace(
        config.train,
        out_dir=str(cell.root / "wspo"),
        cache_dir=cache.out_dir,
        policy=cell.model("strong_base"),
        gammas=list(config.gammas),
        seed=cell.seed,
    )
    if not all(finished_run(Path(cell.wspo(g)).parent, "train") for g in config.gammas):
        train_wspo(train)


def check_shared_world(world: WorldConfig) -> None:
    """Refuses a `world_dir` that is not a finished world of these settings (it is never built or changed here)."""
    done = finished_run(world.out_dir, "world")
    require(done, "world_dir", f"{world.out_dir} holds no finished world (build it first, e.g. with make science)")
    require(
        read_marker(Path(world.out_dir))["identity"] == world_config_hash(world),
        "world_dir",
        f"{world.out_dir} holds a world of other settings than this config's `world` section",
    )


class WeakTokens:
    """Counts the token positions the weak pair runs (prompt and padding included) while a system generates: a
    global forward pre-hook on every embedding of the weak width (the strong model is wider)."""

    def __init__(self, width: int) -> None:
        self.width, self.count, self.handle = width, 0, None

    def hook(self, module: torch.nn.Module, args: tuple) -> None:
        if isinstance(module, torch.nn.Embedding) and module.embedding_dim == self.width and args:
            self.count += args[0].numel()

    def __enter__(self) -> WeakTokens:
        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(self.hook)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def evaluate(cell: Cell, split: str, spec: SystemConfig) -> dict:
    """One system on the cell's val or test prompts: its report row (per-prompt scores included) and weak tokens
    per prompt and per weak model; reused when already there."""
    out = cell.root / split / spec.name.replace(" ", "_")
    config, size = cell.config, cell.config.num_val if split == "val" else cell.config.num_test
    task_spec = {"_component_": TASKS[cell.task], "path": str(cell.world / "data" / f"{split}.jsonl")}
    task_spec.update({"l_min": config.world.l_min, "l_max": config.world.l_max})
    eval_config = EvalConfig(
        out_dir=str(out), task=task_spec, systems=[spec], weak_base=cell.model("weak_base"),
        weak_aligned=cell.model("weak_aligned"), tokenizer=str(cell.world / "tokenizer"), wspo_dir=str(out),
        gamma_sweep=False, num_examples=size, seed=cell.seed, threads=config.threads, num_shown=2,
    )  # fmt: skip
    return evaluate_system(eval_config, config.world.weak.hidden_size)


def evaluate_system(eval_config: EvalConfig, weak_width: int, extend=None) -> dict:
    """Runs `w2s eval` on the config's one system and returns its report row with the weak tokens it ran per prompt
    and per weak model (`weak_width`: the weak models' embedding width); the row is saved beside the eval folder
    and reused when the same eval finished and its files check.

    Args:
        extend: called with the row before it is saved, to add per-example scores the task does not compute.
    """
    out, spec = Path(eval_config.out_dir), eval_config.systems[0]
    saved, key = out.with_name(f"{out.name}.row.json"), identity_key(eval_identity(eval_config))
    if saved.exists() and finished_run(out, "eval"):  # reused only for the same eval, finished and checked
        row = json.loads(saved.read_text())
        if row.get("eval_identity") == key:
            return row
    with WeakTokens(weak_width) as weak:
        report = run_eval(eval_config, load_task(eval_config.task))
    row = dict(report["systems"][spec.name], name=spec.name)
    guided = spec.generator != "sample"
    row["weak_tokens"] = weak.count / 2 / report["num_examples"] if guided else 0.0  # per model of the pair
    row["eval_identity"] = key
    if extend is not None:
        extend(row)
    atomic_write_json(saved, row)
    return row


def validation(cell: Cell) -> dict[str, dict]:
    """The selection runs of one cell on the val split: strong base, each WSPO gamma, each EFT beta."""
    strong = cell.model("strong_base")
    specs = [SystemConfig("strong_base", strong)]
    specs += [SystemConfig(f"wspo gamma={g:g}", cell.wspo(g)) for g in cell.config.gammas]
    specs += [SystemConfig(f"eft beta={b:g}", strong, "eft", {"beta": b}) for b in cell.config.eft_betas]
    return {spec.name: evaluate(cell, "val", spec) for spec in specs}


def test_systems(cell: Cell, gamma: float, beta: float) -> dict[str, dict]:
    """Every system of the comparison on the test split; best-of-N matched to the strong tokens search sampled."""
    config, strong = cell.config, cell.model("strong_base")
    search = config.search
    specs = [
        SystemConfig("weak_base", cell.model("weak_base")),
        SystemConfig("weak_aligned", cell.model("weak_aligned")),
        SystemConfig("strong_base", strong),
        SystemConfig("wspo", cell.wspo(gamma)),
        SystemConfig("sft_ceiling", cell.model("strong_sft")),
        SystemConfig("search", strong, "cbs", dict(search)),
        SystemConfig("bon_wk", strong, "bon", {"n": search["width"] * search["num_samples"]}),
        SystemConfig("eft", strong, "eft", {"beta": beta}),
    ]
    rows = {spec.name: evaluate(cell, "test", spec) for spec in specs}
    return rows | matched_systems(lambda spec: evaluate(cell, "test", spec), strong, rows, config.mcts)


def matched_specs(strong: str, rows: dict, mcts: dict) -> list[SystemConfig]:
    """Best-of-N and (with `mcts` knobs) the tree search at the strong tokens search (CBS) sampled per prompt: N
    rounded to the responses those tokens buy, MCTS's budget floored so it never samples more than CBS.

    Args:
        rows: report rows; needs "search" and "strong_base" (the plain sample's tokens per response).
    """
    spent = rows["search"]["sampled_tokens"]
    matched = max(1, round(spent / rows["strong_base"]["sampled_tokens"]))
    specs = [SystemConfig("bon_matched", strong, "bon", {"n": matched})]
    if mcts:
        knobs = {**MCTS_KNOBS, **mcts}
        budget = max(int(spent), int(knobs["num_children"] * knobs["chunk_len"]))  # at least the root's expansion
        specs.append(SystemConfig("mcts", strong, "mcts", {**knobs, "budget": budget}))
    return specs


def matched_systems(evaluate_spec, strong: str, rows: dict, mcts: dict) -> dict[str, dict]:
    """The rows of `matched_specs`, each run by `evaluate_spec` (a `SystemConfig` -> its report row)."""
    return {spec.name: evaluate_spec(spec) for spec in matched_specs(strong, rows, mcts)}


def run(config: ScienceConfig) -> dict:
    """The whole science run; returns the report (also written to out_dir/report.json)."""
    console = Console()
    torch.set_num_threads(config.threads)  # tiny models on a shared machine: threads spin waiting for each other
    with claim(config.out_dir, "science", lock=LOCK):  # one science run per folder; each stage claims its own
        return run_cells(config, console)


def run_cells(config: ScienceConfig, console: Console) -> dict:
    """Worlds, caches and sweeps, then validation, then the test comparison, then the report."""
    from w2s.science.report import select, write_science_report

    cells = [Cell(config, seed, task) for seed in config.seeds for task in config.tasks]
    for cell in tqdm(cells, desc="science: worlds, caches, WSPO sweeps"):
        prepare(cell)
    val = {(c.seed, c.task): validation(c) for c in tqdm(cells, desc="science: validation")}
    choices = {task: select(config, task, val) for task in config.tasks}
    test = {
        (c.seed, c.task): test_systems(c, choices[c.task]["gamma"]["chosen"], choices[c.task]["beta"]["chosen"])
        for c in tqdm(cells, desc="science: test")
    }
    caches = {task: json.loads((Cell(config, config.seeds[0], task).cache / "manifest.json").read_text())["totals"]
              for task in config.tasks}  # fmt: skip
    report = write_science_report(config, val, test, choices, caches)
    console.print(f"science report: {Path(config.out_dir) / 'report.md'}")
    return report


def config_command(name: str, config_class, runner, argv: list[str] | None) -> int:
    """`python -m <driver> CONFIG [key=value ...]`: loads `config_class` and calls `runner` on it as command `name`."""
    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args and "=" not in args[0] else None

    def command() -> int:
        runner(load_config(config_class, path, [a for a in args if "=" in a]))
        return 0

    return run_as_command(name, command)


def main(argv: list[str] | None = None) -> int:
    """`python -m w2s.science.tiny CONFIG [key=value ...]`."""
    return config_command("w2s science", ScienceConfig, run, argv)


if __name__ == "__main__":
    sys.exit(main())
