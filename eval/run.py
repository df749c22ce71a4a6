"""`w2s eval`: every declared system on the same task's prompts, scored by the task, in one report.

The task (`EvalConfig.task`, built from its `_component_` path) owns the prompts, references and metrics; the
systems (`EvalConfig.systems`) own how responses are generated (`w2s.eval.systems`). Every system is scored by
the task, timed (model loading excluded), and its sampled strong tokens are counted (EOS and every candidate
included), so that search and best-of-N can be compared at equal cost. A training sweep
(every wspo_dir/*/final, e.g. gamma-0.1/) adds one plain-sampling row per run, its loss read from its provenance.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from statistics import mean

import torch
from rich.console import Console
from tqdm import tqdm

from w2s.errors import ConfigError
from w2s.eval.config import EvalConfig
from w2s.eval.report import REPORT_FILES, Layout, print_table, write_report
from w2s.eval.systems import Models, Planned, plan, prepare, responses_of
from w2s.runs import RunFolder, claim
from w2s.task import Example, Response, Task, load_task


def shown(config: EvalConfig, responses: list[Response], examples: list[Example], scores: list[dict]) -> list[dict]:
    """The first `num_shown` responses with their length and the task's per-example scores."""
    return [
        {"example_id": example.example_id, "response": response.text, "tokens": len(response.token_ids), **score}
        for response, example, score in list(zip(responses, examples, scores))[: config.num_shown]
    ]


def evaluate(config: EvalConfig, task: Task, system: Planned, models: Models, examples: list[Example]) -> dict:
    """Generates for, scores and times one system; returns its report row."""
    spec = system.spec
    job = prepare(models, spec)  # loading is not timed
    started = time.perf_counter()
    prompts, example_ids = [example.prompt for example in examples], [example.example_id for example in examples]
    ids, sampled = responses_of(models, spec, job, prompts, example_ids, getattr(task, "prompts_fingerprint", None))
    tokenizer = models.tokenizer(spec.model)
    responses = [Response(tokenizer.decode(row, skip_special_tokens=True), row) for row in ids]
    row = {"kind": spec.generator, "engine": spec.engine, "model": spec.model, "gamma": system.gamma}
    if system.loss is not None:
        row["loss"] = system.loss
    per_example = task.score_examples(responses, examples)  # scored once: the means, samples and intervals reuse it
    row.update(task.score(responses, examples, per_example))
    row["sampled_tokens"] = mean(sampled)
    row["seconds"] = round(time.perf_counter() - started, 2)
    if spec.params:
        row["search"] = dict(spec.params)
    row["samples"] = shown(config, responses, examples, per_example)
    row["per_example"] = per_example  # for bootstrap intervals
    return row


def budget(systems: dict[str, dict]) -> dict | None:
    """Mean strong tokens sampled per prompt by the first search (cbs) and the first best-of-N, and their ratio
    (None unless both ran)."""
    search = next((row for row in systems.values() if row["kind"] == "cbs"), None)
    bon = next((row for row in systems.values() if row["kind"] == "bon"), None)
    if search is None or bon is None:
        return None
    searched, best = search["sampled_tokens"], bon["sampled_tokens"]
    return {
        "search_sampled_tokens": searched,
        "bon_sampled_tokens": best,
        "bon_over_search": best / searched if searched else None,
    }


def run(config: EvalConfig, task: Task | None = None) -> dict:
    """`w2s eval`: runs every selected system on the task, writes report.json, report.md and the plots, prints
    the table.

    Args:
        config: the evaluation settings (concrete paths).
        task: the task to evaluate on; None builds the one `config.task` declares.

    Returns:
        The report (what report.json holds).
    """
    config.selected()  # an engine that is not installed is refused before the folder is claimed
    with claim_report(config) as folder:
        report, layout = evaluate_all(config, task)
        write_report(report, Path(config.out_dir), layout)
        folder.finish([name for name in REPORT_FILES if (Path(config.out_dir) / name).is_file()])
    print_table(report, Console(), layout)
    return report


def claim_report(config: EvalConfig) -> RunFolder:
    """The report folder (`w2s.runs`): new, empty or an eval's own, outside every model and the sweep; a report is
    always made afresh, so its files of an earlier eval are cleared first (and only those)."""
    models = {f"{spec.name} model": spec.model for spec in config.systems}
    models.update(weak_base=config.weak_base, weak_aligned=config.weak_aligned)
    if config.gamma_sweep:
        models["wspo_dir"] = config.wspo_dir
    models.update({f"{spec.name} responses": spec.responses for spec in config.systems if spec.responses})
    identity = eval_identity(config)
    folder = claim(
        config.out_dir, "eval", identity=identity, inputs=models, on_change="replace", artefacts=REPORT_FILES
    )
    folder.reset(REPORT_FILES)
    return folder


def eval_identity(config: EvalConfig) -> dict:
    """What an eval report is made from: its settings (as JSON), the task's prompt set spelled as before the shared
    data-source section (`prompts: <path>` beside its fields), so that a finished eval still counts as the same."""
    settings = json.loads(json.dumps(asdict(config), default=str))
    task, source = settings["task"], settings["task"].get("prompts")
    if isinstance(source, dict):  # one-to-one: a task's top-level split/..._field keys are refused as moved
        flat = {key: value for key, value in task.items() if key != "prompts"}
        flat.update({key: value for key, value in source.items() if key != "path"})
        settings["task"] = flat | {"prompts": source.get("path")}
    return settings


def evaluate_all(config: EvalConfig, task: Task | None) -> tuple[dict, Layout]:
    """Every planned system on the task: the report and its layout."""
    console, started = Console(), time.perf_counter()
    task = task if task is not None else load_task(config.task)
    systems, sweep, skipped = plan(config)
    if not systems and not sweep:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items()) or "eval.systems is empty"
        raise ConfigError(f"w2s eval has nothing to evaluate ({reasons})")
    for name, reason in skipped.items():
        console.print(f"[yellow]skipping {name}[/yellow]: {reason}")
    examples, models, threads = task.examples()[: config.num_examples], Models(config), torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        rows = {
            s.spec.name: evaluate(config, task, s, models, examples) for s in tqdm(systems + sweep, desc="eval systems")
        }
    finally:
        torch.set_num_threads(threads)
    report = {
        "settings": asdict(config),
        "num_examples": len(examples),
        "systems": {s.spec.name: rows[s.spec.name] for s in systems},
        "gamma_sweep": [dict(rows[s.spec.name], name=s.spec.name, parameter=s.parameter) for s in sweep],
        "skipped": skipped,
        "budget": budget({s.spec.name: rows[s.spec.name] for s in systems}),
        "examples_shown": [
            {"example_id": ex.example_id, "prompt": ex.prompt, "reference": ex.reference}
            for ex in examples[: config.num_shown]
        ],
        "seconds": round(time.perf_counter() - started, 1),
    }
    return report, Layout.of(task.metrics, task.describe())
