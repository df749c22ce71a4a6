"""`w2s eval`: every system on the same test prompts, scored with the task's two metrics, in one report.

Systems (see `EvalConfig.systems`): the three world models and the WSPO model sample plainly (batched
`generate`); `strong_base+search` is chunk-level beam search over the strong base guided by the weak pair
(weak_aligned / weak_base) and `strong_base+bon` is best-of-N with the same guide. Every system is scored with
`score_responses`, timed, and its sampled strong tokens are counted (EOS included), so that search and BoN can
be compared at equal cost. The WSPO gamma sweep (wspo_dir/gamma-*/final) adds one plain-sampling row per gamma.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean

import torch
from rich.console import Console
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from w2s.config import ConfigError
from w2s.eval.config import SYSTEMS, EvalConfig
from w2s.eval.generate import generate
from w2s.eval.metrics import content_score, length_reward
from w2s.eval.report import print_table, write_report
from w2s.eval.score import score_responses
from w2s.eval.search import WeakScorer, search_many
from w2s.world.build import read_jsonl
from w2s.world.corpus import document_facts

SEARCHES = ("strong_base+search", "strong_base+bon")


@dataclass
class System:
    """One row of the report: a name, how it generates ('sample', 'search' or 'bon') and its model folder."""

    name: str
    kind: str
    model: Path
    gamma: float | None = None


def read_gamma(run_dir: Path) -> float | None:
    """Gamma of a WSPO run: summary.json's "gamma" (run folder or final/), else the `gamma-<g>` folder name."""
    for summary in (run_dir / "summary.json", run_dir / "final" / "summary.json"):
        if summary.exists():
            gamma = json.loads(summary.read_text()).get("gamma")
            if gamma is not None:
                return float(gamma)
    match = re.fullmatch(r"gamma-(.+)", run_dir.name)
    try:
        return float(match.group(1)) if match else None
    except ValueError:
        return None


def gamma_runs(wspo_dir: Path) -> list[System]:
    """Every finished `wspo_dir/gamma-*/final` of a gamma sweep, by increasing gamma."""
    runs = []
    for run_dir in sorted(wspo_dir.glob("gamma-*")):
        gamma = read_gamma(run_dir)
        if gamma is not None and (run_dir / "final" / "config.json").exists():
            runs.append(System(f"wspo gamma={gamma:g}", "sample", run_dir / "final", gamma))
    return sorted(runs, key=lambda system: system.gamma)


def plan(config: EvalConfig) -> tuple[list[System], list[System], dict[str, str]]:
    """The systems to run, the gamma-sweep runs, and the systems skipped (name -> reason).

    Raises:
        ConfigError: for a system name that `w2s eval` does not know.
    """
    unknown = [name for name in config.systems if name not in SYSTEMS]
    if unknown:
        raise ConfigError(f"eval.systems: unknown system(s) {unknown}; known: {list(SYSTEMS)}")
    world, wspo = Path(config.world_dir), Path(config.wspo_dir)
    systems, skipped = [], {}
    for name in (name for name in SYSTEMS if name in config.systems):
        if name == "wspo" and not (wspo / "final" / "config.json").exists():
            skipped[name] = f"no WSPO model at {wspo / 'final'} (run `w2s train` first)"
            continue
        folder = wspo / "final" if name == "wspo" else world / ("strong_base" if name in SEARCHES else name)
        kind = {"strong_base+search": "search", "strong_base+bon": "bon"}.get(name, "sample")
        systems.append(System(name, kind, folder, read_gamma(wspo) if name == "wspo" else None))
    sweep = gamma_runs(wspo) if config.gamma_sweep else []
    return systems, sweep, skipped


class Models:
    """Loads each model folder (and its tokenizer) once; a folder without a tokenizer uses world_dir/tokenizer."""

    def __init__(self, world_dir: str) -> None:
        self.world_dir, self.loaded = Path(world_dir), {}

    def get(self, folder: Path) -> tuple[torch.nn.Module, object]:
        """The model (in eval mode) and tokenizer of `folder`."""
        key = str(folder)
        if key not in self.loaded:
            has_tokenizer = (folder / "tokenizer_config.json").exists()
            tokenizer = AutoTokenizer.from_pretrained(folder if has_tokenizer else self.world_dir / "tokenizer")
            self.loaded[key] = (AutoModelForCausalLM.from_pretrained(folder).eval(), tokenizer)
        return self.loaded[key]

    def scorer(self) -> WeakScorer:
        """The weak pair that guides search and BoN: weak_aligned over weak_base, with the aligned tokenizer."""
        tuned, tokenizer = self.get(self.world_dir / "weak_aligned")
        return WeakScorer(tuned, self.get(self.world_dir / "weak_base")[0], tokenizer)


def sampled_tokens(response: list[int], max_new_tokens: int) -> int:
    """Tokens a plain sample drew: the response, plus its EOS when it stopped before the budget."""
    return len(response) + (len(response) < max_new_tokens)


def responses_of(
    config: EvalConfig, system: System, models: Models, prompts: list[str]
) -> tuple[list[list[int]], list[int]]:
    """Generates one response per prompt; returns the token ids and the strong tokens sampled for each."""
    model, tokenizer = models.get(system.model)
    sampling = dict(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p)
    if system.kind == "sample":
        responses = generate(model, tokenizer, prompts, config.max_new_tokens, seed=config.seed,
                             batch_size=config.batch_size, **sampling)
        return responses, [sampled_tokens(ids, config.max_new_tokens) for ids in responses]
    if system.kind == "search":
        shape = dict(width=config.width, num_samples=config.num_samples, chunk_len=config.chunk_len)
    else:
        shape = dict(width=1, num_samples=config.bon_n, chunk_len=config.max_new_tokens)
    results = search_many(prompts, model, tokenizer, models.scorer(), seed=config.seed, desc=system.name,
                          max_new_tokens=config.max_new_tokens, **shape, **sampling)
    return [r.token_ids for r in results], [r.num_sampled for r in results]


def shown(config: EvalConfig, tokenizer, responses: list[list[int]], examples: list[dict]) -> list[dict]:
    """The first `num_shown` responses, decoded, with their length and per-example scores."""
    rows = []
    for ids, example in list(zip(responses, examples))[: config.num_shown]:
        text = tokenizer.decode(ids, skip_special_tokens=True)
        rows.append({"example_id": example.get("example_id"), "response": text, "tokens": len(ids),
                     "length_reward": length_reward(len(ids), config.l_min, config.l_max),
                     "content": content_score(text, document_facts(example))})
    return rows


def evaluate(config: EvalConfig, system: System, models: Models, examples: list[dict]) -> dict:
    """Generates for, scores and times one system; returns its report row."""
    models.get(system.model)  # loading is not timed
    if system.kind != "sample":
        models.scorer()
    started = time.perf_counter()
    responses, sampled = responses_of(config, system, models, [ex["prompt"] for ex in examples])
    tokenizer = models.get(system.model)[1]
    row = {"kind": system.kind, "model": str(system.model), "gamma": system.gamma}
    row.update(score_responses(tokenizer, responses, examples, config.l_min, config.l_max))
    row["sampled_tokens"] = mean(sampled)
    row["seconds"] = round(time.perf_counter() - started, 2)
    if system.kind == "search":
        row["search"] = {"width": config.width, "num_samples": config.num_samples, "chunk_len": config.chunk_len}
    elif system.kind == "bon":
        row["search"] = {"n": config.bon_n}
    row["samples"] = shown(config, tokenizer, responses, examples)
    return row


def budget(systems: dict[str, dict]) -> dict | None:
    """Mean strong tokens sampled per prompt by search and by BoN, and their ratio (None unless both ran)."""
    if not all(name in systems for name in SEARCHES):
        return None
    search, bon = (systems[name]["sampled_tokens"] for name in SEARCHES)
    ratio = bon / search if search else None
    return {"search_sampled_tokens": search, "bon_sampled_tokens": bon, "bon_over_search": ratio}


def load_examples(config: EvalConfig) -> list[dict]:
    """The first `num_examples` test examples of the world."""
    path = Path(config.world_dir) / "data" / "test.jsonl"
    if not path.exists():
        raise ConfigError(f"eval.world_dir: no test data at {path} (run `w2s world` first)")
    return read_jsonl(path)[: config.num_examples]


def run(config: EvalConfig) -> dict:
    """`w2s eval`: runs every system, writes report.json, report.md and the plots, prints the table.

    Returns:
        The report (what report.json holds).
    """
    console, started = Console(), time.perf_counter()
    systems, sweep, skipped = plan(config)
    for name, reason in skipped.items():
        console.print(f"[yellow]skipping {name}[/yellow]: {reason}")
    examples, models, threads = load_examples(config), Models(config.world_dir), torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        rows = {s.name: evaluate(config, s, models, examples) for s in tqdm(systems + sweep, desc="eval systems")}
    finally:
        torch.set_num_threads(threads)
    report = {
        "settings": asdict(config),
        "num_examples": len(examples),
        "systems": {s.name: rows[s.name] for s in systems},
        "gamma_sweep": [dict(rows[s.name], name=s.name) for s in sweep],
        "skipped": skipped,
        "budget": budget(rows),
        "examples_shown": [{"example_id": ex.get("example_id"), "prompt": ex["prompt"], "reference": ex.get("response")}
                           for ex in examples[: config.num_shown]],
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_report(report, Path(config.out_dir))
    print_table(report, console)
    return report
