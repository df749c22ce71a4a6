"""Issue 23, item 3: does the summed weak score favour longer responses, and does that explain why search loses to
the strong base on the length task?

    python -m w2s.science.length configs/science.yaml out_dir=runs/science-length [samples=8] [num_test=60]

On the tiny world of `make science` (one world, its weak pairs; no WSPO needed), for every seed and task:
1. the strong base samples `samples` full responses per test prompt (one round of W=samples, K=1, L=budget: the
   candidates of best-of-N), each scored by the weak pair (the sum), its weak length and the task's reward;
2. the within-prompt correlation of the summed score with the weak length (what a search ranks on: candidates of
   one prompt), with its rate (nats per weak token), and the same for the reward; a two-level bootstrap (seeds,
   then prompts) gives the 95% intervals;
3. best-of-`samples` offline on those candidates under every rank (`w2s.search.cbs.RANKS`): the length and reward
   of what each rank picks, against a random candidate;
4. chunk-level beam search at the science settings under each rank, and the strong base, on the test prompts
   (`w2s eval`, reused when finished): reward and tokens of each rank against the strong base and against the sum.
Writes out_dir/length_report.json and length_report.md (`benchmarks/doc_tables.py length` puts the tables in docs).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from w2s.config import require
from w2s.eval.config import SystemConfig
from w2s.eval.stats import LEVEL, bootstrap, paired_difference, resample_means
from w2s.io import atomic_write_json, atomic_write_text, read_jsonl
from w2s.science.report import per_seed, reward_key
from w2s.science.tiny import TASKS, Cell, ScienceConfig, config_command, evaluate
from w2s.search.ranking import RANKS
from w2s.task import Response, load_task
from w2s.tokens import encode_text
from w2s.world.build import build_world


@dataclass
class LengthConfig(ScienceConfig):
    """The science config (its world, seeds, tasks, search and num_test) plus the candidates drawn per prompt."""

    samples: int = 8
    """Full strong-base responses sampled per test prompt (the best-of-N candidates the correlation is taken on)."""
    ranks: list[str] = field(default_factory=lambda: list(RANKS))
    """Ranks measured (`w2s.search.ranking.RANKS`); sum, the paper's, is always one of them."""
    real_run: str = ""
    """A finished `make science-real` folder to summarise beside (its rows keep no candidates, so what it can say
    is how many responses reached the token cap and how the weak pairs' sums lean with length); empty: none."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.samples >= 2, "samples", f"a correlation needs >= 2 candidates per prompt, got {self.samples}")
        require("sum" in self.ranks and set(self.ranks) <= set(RANKS), "ranks", f"sum and any of {list(RANKS)}")


def task_of(cell: Cell):
    """The cell's task on its test split."""
    world = cell.config.world
    path = str(cell.world / "data" / "test.jsonl")
    return load_task({"_component_": TASKS[cell.task], "path": path, "l_min": world.l_min, "l_max": world.l_max})


@torch.no_grad()
def candidates(cell: Cell) -> list[list[dict]]:
    """Per test prompt, `samples` strong-base responses: weak sum, weak length, strong tokens, finished, reward
    (saved in the cell's length/candidates.jsonl and reused when complete)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from w2s.search.cbs import chunk_beam_search
    from w2s.search.samplers import HFSampler
    from w2s.search.scorer import WeakScorer

    path, config = cell.root / "length" / "candidates.jsonl", cell.config
    if path.exists():
        rows = read_jsonl(path)
        if len(rows) == config.num_test and all(len(row["candidates"]) == config.samples for row in rows):
            return [row["candidates"] for row in rows]
    load = lambda role: AutoModelForCausalLM.from_pretrained(cell.model(role)).eval()  # noqa: E731
    tokenizer = AutoTokenizer.from_pretrained(cell.world / "tokenizer")
    sampler, scorer = (
        HFSampler(load("strong_base"), tokenizer),
        WeakScorer(load("weak_aligned"), load("weak_base"), tokenizer),
    )
    task, budget, key = task_of(cell), 64, reward_key(cell.task)  # 64: `w2s eval`'s max_new_tokens
    rows = []
    for index, example in enumerate(tqdm(task.examples()[: config.num_test], desc=f"candidates {cell.task}")):
        found = chunk_beam_search(sampler, scorer, example.prompt, config.samples, 1, budget, budget, cell.seed + index)
        row = []
        for h in found.beam:
            reward = task.score_example(Response(h.text, h.token_ids), example)[key]
            weak_len = len(encode_text(tokenizer, h.text)) + int(h.finished)
            row.append({"score": h.score, "weak_len": weak_len, "tokens": len(h.token_ids), "finished": h.finished,
                        "reward": reward})  # fmt: skip
        rows.append({"example_id": example.example_id, "candidates": row})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    return [row["candidates"] for row in rows]


def within_prompt_correlation(per_seed_rows: list[list[list[dict]]], x: str, y: str, resamples: int) -> dict:
    """Pearson correlation of x and y over candidates, each centred on its prompt's mean (the variation a ranking
    sees), with the slope of y on x; 95% two-level bootstrap intervals (seeds, then prompts)."""
    sums = {"xy": [], "xx": [], "yy": []}  # [seeds][prompts] centred cross-products
    for seed_rows in per_seed_rows:
        for name in sums:
            sums[name].append([])
        for prompt in seed_rows:
            xs, ys = (np.array([c[k] for c in prompt], dtype=np.float64) for k in (x, y))
            xs, ys = xs - xs.mean(), ys - ys.mean()
            for name, value in (("xy", xs @ ys), ("xx", xs @ xs), ("yy", ys @ ys)):
                sums[name][-1].append(float(value))
    grids = {name: np.asarray(rows) for name, rows in sums.items()}
    means = {name: resample_means(grid, resamples) for name, grid in grids.items()}  # same indices for all three
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = means["xy"] / np.sqrt(means["xx"] * means["yy"])
        slope = means["xy"] / means["xx"]
    point = {name: grid.mean() for name, grid in grids.items()}
    if point["xx"] == 0 or point["yy"] == 0:  # one of the two never varies within a prompt: no correlation
        return {"correlation": None, "slope": None}
    tail = (1 - LEVEL) / 2 * 100
    out = {}
    for label, draws, value in (("correlation", corr, point["xy"] / np.sqrt(point["xx"] * point["yy"])),
                                ("slope", slope, point["xy"] / point["xx"])):  # fmt: skip
        low, high = np.nanpercentile(draws, [tail, 100 - tail])  # a resample without variation has none: left out
        out[label] = {"mean": float(value), "low": float(low), "high": float(high)}
    return out


def offline_pick(per_seed_rows: list[list[list[dict]]], rank: str, key: str) -> list[list[float]]:
    """[seeds][prompts] value of `key` of the candidate `rank` puts first, minus the prompt's candidate mean."""
    from w2s.search.cbs import Hypothesis
    from w2s.search.ranking import rank_keys

    out = []
    for seed_rows in per_seed_rows:
        out.append([])
        for prompt in seed_rows:
            hyps = [Hypothesis([], "", c["finished"], c["score"], weak_len=c["weak_len"]) for c in prompt]
            keys = rank_keys(hyps, rank)
            best = max(range(len(prompt)), key=lambda i: keys[i])  # first of ties, as prune keeps them
            out[-1].append(prompt[best][key] - float(np.mean([c[key] for c in prompt])))
    return out


def search_systems(cell: Cell) -> dict[str, dict]:
    """The strong base and chunk-level beam search under every rank on the cell's test prompts (report rows)."""
    strong, search = cell.model("strong_base"), dict(cell.config.search)
    specs = [SystemConfig("strong_base", strong), SystemConfig("search", strong, "cbs", search)]  # tiny's names
    specs += [
        SystemConfig(f"search_{r}", strong, "cbs", {**search, "rank": r}) for r in cell.config.ranks if r != "sum"
    ]
    return {spec.name: evaluate(cell, "test", spec) for spec in specs}


def rank_name(rank: str) -> str:
    return "search" if rank == "sum" else f"search_{rank}"


def task_section(config: LengthConfig, task: str, cands: dict, test: dict) -> dict:
    """One task's numbers: the correlations on the candidates, the offline picks, the searches' differences."""
    cells = sorted(cell for cell in cands if cell[1] == task)
    rows, n = [cands[cell] for cell in cells], config.resamples
    section = {
        "score_vs_length": within_prompt_correlation(rows, "weak_len", "score", n),
        "reward_vs_length": within_prompt_correlation(rows, "weak_len", "reward", n),
        "rate_per_weak_token": bootstrap(
            [[sum(c["score"] for c in p) / max(1, sum(c["weak_len"] for c in p)) for p in seed] for seed in rows], n
        ).as_dict(),
        "finished_share": bootstrap(
            [[np.mean([c["finished"] for c in p]) for p in seed] for seed in rows], n
        ).as_dict(),
        "candidate_tokens": bootstrap(
            [[np.mean([c["tokens"] for c in p]) for p in seed] for seed in rows], n
        ).as_dict(),
        "offline": {},
        "search": {},
    }
    for rank in config.ranks:
        picked = {key: bootstrap(offline_pick(rows, rank, key), n).as_dict() for key in ("tokens", "reward")}
        section["offline"][rank] = picked
    base = {m: per_seed(test, task, "strong_base", m) for m in ("reward", "tokens")}
    sums = {m: per_seed(test, task, "search", m) for m in ("reward", "tokens")}
    for rank in config.ranks:
        name = rank_name(rank)
        mine = {m: per_seed(test, task, name, m) for m in ("reward", "tokens")}
        section["search"][rank] = {
            "reward": bootstrap(mine["reward"], n).as_dict(),
            "tokens": bootstrap(mine["tokens"], n).as_dict(),
            "reward_vs_base": paired_difference(mine["reward"], base["reward"], num_resamples=n).as_dict(),
            "tokens_vs_base": paired_difference(mine["tokens"], base["tokens"], num_resamples=n).as_dict(),
            "reward_vs_sum": paired_difference(mine["reward"], sums["reward"], num_resamples=n).as_dict(),
        }
    section["strong_base"] = {m: bootstrap(base[m], n).as_dict() for m in ("reward", "tokens")}
    return section


def real_pair(folder: Path) -> dict:
    """From a finished science-real run: per Gemma system, the test responses at the longest length any reached (the
    token cap),
    and the search's weak pair's (DPO) and the LoRA fine-tune's summed log-ratio on reference answers by kind."""
    report, lengths = json.loads((folder / "report.json").read_text()), {}
    for name in ("strong_base", "search", "bon_matched"):  # Gemma's responses: one tokenizer, one cap
        rows = [json.loads(path.read_text()) for path in sorted(folder.glob(f"seed-*/test/{name}.row.json"))]
        lengths[name] = [example["tokens"] for row in rows for example in row["per_example"]]
    cap = max(max(values) for values in lengths.values())  # the run's max_new_tokens (every base response is there)
    capped = {
        name: {"at_cap": sum(n >= cap for n in v), "responses": len(v), "cap": cap} for name, v in lengths.items()
    }
    pair = report["weak_pair"]
    ratios = {
        name: {k: pair[f"ratio_{name}"][k] for k in ("sum_by_kind", "off_eos_mean")} for name in ("dpo", "lora_sft")
    }
    search = next(c for c in report["tasks"]["length"]["claims"] if c["claim"].startswith("search > Gemma base"))
    return {"folder": str(folder), "capped": capped, "ratios": ratios, "search_vs_base": search["difference"]}


def fmt(interval: dict | None, digits: int = 3) -> str:
    """'+0.812 [+0.790, +0.833]'; 'none (no variation)' for a correlation that does not exist."""
    if interval is None:
        return "none (no variation)"
    return f"{interval['mean']:+.{digits}f} [{interval['low']:+.{digits}f}, {interval['high']:+.{digits}f}]"


def sign_of(interval: dict | None) -> str:
    """'above 0', 'below 0', 'straddles 0' or 'exactly 0': where the 95% interval lies."""
    if interval is None:
        return "undefined"
    if interval["low"] == interval["high"] == 0:
        return "exactly 0"
    return "above 0" if interval["low"] > 0 else "below 0" if interval["high"] < 0 else "straddles 0"


def markdown(report: dict) -> str:
    """The report's tables and findings as markdown, from report.json alone (docs copy this text)."""
    tasks, lines = report["tasks"], []
    head = (
        f"Tiny world, seeds {report['seeds']}, {report['num_test']} test prompts each, {report['samples']} "
        f"strong-base candidates per prompt; search {report['search']}; means with 95% intervals."
    )
    lines += [head, "", "Within one prompt's candidates (what a search ranks), against the weak length:", ""]
    lines += [
        "| task | corr(sum, length) | nats per weak token of length | corr(reward, length) | finished |",
        "|---|---|---|---|---|",
    ]
    for task, t in tasks.items():
        score, reward = t["score_vs_length"], t["reward_vs_length"]["correlation"]
        lines.append(
            f"| {task} | {fmt(score['correlation'])} | {fmt(score['slope'])} | {fmt(reward)} "
            f"| {t['finished_share']['mean']:.2f} |"
        )
    lines += ["", "Best-of-N offline on the same candidates: what each rank picks, minus the candidates' mean:", ""]
    lines += ["| task | rank | tokens | reward |", "|---|---|---|---|"]
    for task, t in tasks.items():
        for rank in report["ranks"]:
            pick = t["offline"][rank]
            lines.append(f"| {task} | {rank} | {fmt(pick['tokens'], 1)} | {fmt(pick['reward'])} |")
    lines += ["", "Chunk-level beam search under each rank (reward, tokens; differences paired by prompt):", ""]
    lines += [
        "| task | system | reward | tokens | reward - strong base | tokens - strong base | reward - sum |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, t in tasks.items():
        base = t["strong_base"]
        lines.append(f"| {task} | strong base | {fmt(base['reward'])} | {fmt(base['tokens'], 1)} | | | |")
        for rank in report["ranks"]:
            s = t["search"][rank]
            versus_sum = "" if rank == "sum" else fmt(s["reward_vs_sum"])
            lines.append(
                f"| {task} | search, {rank} | {fmt(s['reward'])} | {fmt(s['tokens'], 1)} | "
                f"{fmt(s['reward_vs_base'])} | {fmt(s['tokens_vs_base'], 1)} | {versus_sum} |"
            )
    return "\n".join(lines + ["", *findings(report), *real_lines(report.get("real"))]) + "\n"


def real_lines(real: dict | None) -> list[str]:
    """The real pair's paragraph: responses at the cap, and which way the weak pairs' sums lean with length."""
    if real is None:
        return []
    capped = "; ".join(f"{name} {c['at_cap']} of {c['responses']}" for name, c in real["capped"].items())
    sums = {name: ", ".join(f"{k} {v:+.1f}" for k, v in r["sum_by_kind"].items()) for name, r in real["ratios"].items()}
    rates = {name: f"{r['off_eos_mean']:+.2f}" for name, r in real["ratios"].items()}
    return [
        "",
        f"Real pair (`{Path(real['folder']).name}`, Gemma-3-270M steered by SmolLM2-135M): test responses at the "
        f"{real['capped']['strong_base']['cap']:g}-token cap: {capped}. Search's weak pair (DPO) sums, on the "
        f"reference answers by kind: {sums['dpo']} (off-EOS mean {rates['dpo']} nats per token); the LoRA fine-tune "
        f"of the real world (not used by search): {sums['lora_sft']} ({rates['lora_sft']} per token). Search - Gemma "
        f"base: {fmt(real['search_vs_base'])}.",
    ]


def findings(report: dict) -> list[str]:
    """One generated sentence per question of the issue, saying where each interval lies."""
    out = []
    for task, t in report["tasks"].items():
        corr, pick = t["score_vs_length"]["correlation"], t["offline"]["sum"]["tokens"]
        out.append(
            f"- {task}: the summed score's correlation with length is {sign_of(corr)} ({fmt(corr)}); the sum's "
            f"best-of-{report['samples']} pick is {fmt(pick, 1)} tokens from the candidates' mean ({sign_of(pick)})."
        )
        for rank in report["ranks"]:
            s = t["search"][rank]
            out.append(
                f"- {task}, search by {rank}: reward - strong base {sign_of(s['reward_vs_base'])} "
                f"({fmt(s['reward_vs_base'])})"
                + ("" if rank == "sum" else f"; reward - sum {sign_of(s['reward_vs_sum'])} ({fmt(s['reward_vs_sum'])})")
                + "."
            )
    return out


def run(config: LengthConfig) -> dict:
    """The whole analysis; returns the report (also out_dir/length_report.json and .md)."""
    import dataclasses

    torch.set_num_threads(config.threads)
    build_world(dataclasses.replace(config.world, out_dir=str(Path(config.out_dir) / "world")))
    cells = [Cell(config, seed, task) for seed in config.seeds for task in config.tasks]
    cands = {(c.seed, c.task): candidates(c) for c in cells}
    test = {(c.seed, c.task): search_systems(c) for c in tqdm(cells, desc="length: searches")}
    report = {
        "seeds": list(config.seeds),
        "num_test": config.num_test,
        "samples": config.samples,
        "search": dict(config.search),
        "ranks": list(config.ranks),
        "tasks": {task: task_section(config, task, cands, test) for task in config.tasks},
        "real": real_pair(Path(config.real_run)) if config.real_run else None,
    }
    out = Path(config.out_dir)
    atomic_write_json(out / "length_report.json", report)
    atomic_write_text(out / "length_report.md", "# The summed score and length\n\n" + markdown(report))
    print(f"length report: {out / 'length_report.md'}")
    return report


def main(argv: list[str] | None = None) -> int:
    """`python -m w2s.science.length CONFIG [key=value ...]`."""
    return config_command("w2s science length", LengthConfig, run, argv)


if __name__ == "__main__":
    sys.exit(main())
