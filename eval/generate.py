"""`w2s generate` and `w2s search`: one system (plain sampling, chunk-level beam search, best-of-N or EFT) on one
prompt set, written as it goes and resumable.

Reads top to bottom: `setup()` resolves the system, reads the prompt set and claims the output folder (a folder
of another run is refused, naming what differs); `run()` loads the models once, then walks the prompts part by
part (`save_every` prompts), skipping parts a killed run already published; `finish()` writes responses.jsonl,
AlpacaEval's model_outputs.json and a summary (`w2s.eval.responses` owns the files). Prompt i is always drawn with
seed + i, so a resumed run writes what an uninterrupted one would.

The strong model may use any tokenizer: the weak pair scores decoded text with its own tokenizer and chat
template (`w2s.search.scorer`). EFT mixes next-token distributions and so needs one shared vocabulary.

Python API: `search(prompts, model=..., weak_base=..., weak_aligned=...)` returns records without files.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from statistics import mean

import torch
from rich.console import Console
from tqdm import tqdm

from w2s.errors import ConfigError
from w2s.eval import responses as files
from w2s.eval.config import GenerateConfig, SystemConfig
from w2s.eval.prompts import load_prompts
from w2s.eval.systems import Job, Models, generate_for, prepare
from w2s.io import atomic_write_json
from w2s.models import ModelError, check_model_path, load_tokenizer
from w2s.provenance import code_version, model_fingerprint, tokenizer_fingerprint
from w2s.runs import RunFolder, claim
from w2s.search.components import SEARCHES
from w2s.task import Example

SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "batch_size")
"""Settings that change which tokens are drawn: part of a run's identity."""


@dataclass
class Generation:
    """What the loop needs, made by `setup()`."""

    config: GenerateConfig
    spec: SystemConfig
    examples: list[Example]
    out_dir: Path
    identity: dict
    folder: RunFolder | None = None
    """The claimed output folder (`w2s.runs`), locked until the run ends; None in the Python API (no files)."""


PROMPT_KEYS = ("split", "prompt_field", "messages_field", "id_field")
"""The prompt set's fields that fix which prompts a run answers (its path is recorded as `prompts`)."""


def run_identity(config: GenerateConfig, spec: SystemConfig, prompts_fingerprint: str) -> dict:
    """Everything that fixes the responses: the system, the models' weights, the sampling settings, the prompts."""
    roles = {"strong": spec.model}
    if SEARCHES.get(spec.generator).guided:
        roles.update(weak_base=config.weak_base, weak_aligned=config.weak_aligned)
    source = config.prompts  # the keys of the flat layout it replaced, so that earlier runs still resume
    prompts = {"prompts": source.path, **{key: getattr(source, key) for key in PROMPT_KEYS}}
    return {
        "system": {key: value for key, value in asdict(spec).items() if key not in ("optional", "responses")},
        "models": {role: fingerprint(role, path) for role, path in roles.items()},
        "sampling": {key: getattr(config, key) for key in SAMPLING_KEYS},
        "prompts": {**prompts, "save_every": config.save_every, "fingerprint": prompts_fingerprint},
        # the tokenizer that turned the strong model's tokens into the recorded text (`w2s eval` re-decodes them)
        "tokenizer": tokenizer_fingerprint(load_tokenizer("strong", decoding_tokenizer(config, spec.model))),
    }


def decoding_tokenizer(config: GenerateConfig, model: str) -> str:
    """Where the tokenizer that decodes `model`'s tokens lives (as `Models.tokenizer` picks it)."""
    folder = Path(model)
    return model if not folder.is_dir() or (folder / "tokenizer_config.json").exists() else config.tokenizer


def fingerprint(role: str, path: str) -> dict:
    """The weights fingerprint of the `role` model; ModelError naming the role when there is no such model."""
    check_model_path(role, path)
    try:
        return model_fingerprint(path)
    except Exception as err:  # the hub client raises many types (offline, unknown repo, bad id): one cause
        raise ModelError(f"the {role} model {path}: not found ({' '.join(str(err).split())[:200]})") from err


def model_label(model: str) -> str:
    """A model's short name: its folder (or hub repo) name, or the folder above a trained run's `final/`."""
    path = Path(model.rstrip("/"))
    return path.parent.name if path.name == "final" and path.parent.name else path.name


def true_name(config: GenerateConfig, spec: SystemConfig) -> str:
    """The generator name AlpacaEval shows: `<model>+<system>`, or the configured name when it names both.

    Raises:
        ConfigError: `generate.name` names another model or system (a config's name reused for another run).
    """
    label, generator = model_label(spec.model), spec.generator
    if not config.name:
        return f"{label}+{generator}"
    wanted = [label] + ([generator] if generator != "sample" else [])
    missing = [word for word in wanted if word.lower() not in config.name.lower()]
    if missing:
        raise ConfigError(
            f"generate.name={config.name!r} does not name this run's {' and '.join(missing)} (model {spec.model}, "
            f"system {generator}): model_outputs.json must say what made it; leave generate.name empty to write "
            f"{label}+{generator!r}, or give a name that includes {' and '.join(map(repr, missing))}"
        )
    return config.name


def setup(config: GenerateConfig, default_generator: str = "sample") -> Generation:
    """Resolves the system, reads the prompts and claims the output folder; nothing is written before the inputs
    pass their checks."""
    spec = config.system(default_generator)
    spec = replace(spec, name=true_name(config, spec))
    examples, fingerprint = load_prompts(config.prompts, config.limit)
    identity = run_identity(config, spec, fingerprint)
    out_dir = Path(config.out_dir).absolute()
    inputs = {"prompts": config.prompts.path, "model": spec.model, "weak_base": config.weak_base}
    inputs.update(weak_aligned=config.weak_aligned, tokenizer=config.tokenizer)
    folder = claim(out_dir, "generate", identity=identity, inputs=inputs)
    atomic_write_json(out_dir / files.RUN, {"identity": identity, "code_version": code_version()})
    return Generation(config, spec, examples, out_dir, identity, folder)


def records_of(gen: Generation, models: Models, job: Job | None, first: int, examples: list[Example]) -> list[dict]:
    """Generates one part: the records of `examples`, the run's prompts first..first+len-1."""
    started = time.perf_counter()
    generated = generate_for(models, gen.spec, job, [example.prompt for example in examples], first)
    seconds = (time.perf_counter() - started) / max(1, len(examples))
    tokenizer = models.tokenizer(gen.spec.model)
    return [
        {
            "id": example.example_id,
            "prompt": example.prompt,
            "output": tokenizer.decode(g.token_ids, skip_special_tokens=True),
            "token_ids": g.token_ids,
            "strong_tokens": g.strong_tokens,
            "weak_tokens": g.weak_tokens,
            "weak_score": g.weak_score,
            "finished": g.finished,
            "generator": gen.spec.name,
            "seconds": round(seconds, 4),
        }
        for example, g in zip(examples, generated)
    ]


def run(config: GenerateConfig, default_generator: str = "sample") -> dict:
    """`w2s generate` (`default_generator` sample) or `w2s search` (cbs): every prompt's response, in parts, then
    the published files and a one-screen summary. Returns the summary."""
    started, gen = time.perf_counter(), setup(config, default_generator)
    with gen.folder:
        summary = json.loads((gen.out_dir / files.SUMMARY).read_text()) if gen.folder.done else {}
        if summary.get("prompts") == len(gen.examples):  # this very run finished, its published files check
            Console().print(f"[green]{gen.spec.name}[/green]: already done in {gen.out_dir} (files checked)")
            return summary
        if gen.folder.problems:
            print(f"w2s generate: {gen.folder.problems[0]}; publishing again from the finished parts", file=sys.stderr)
        if not gen.folder.resumed:
            gen.folder.reset(files.ARTEFACTS)
        elif gen.folder.finished:  # another `limit` over the same prompts: the finished parts are kept
            gen.folder.reset([])
        return generate_all(gen, config, started)


def generate_all(gen: Generation, config: GenerateConfig, started: float) -> dict:
    """Every part not yet finished, then the published files."""
    step, total = config.save_every, len(gen.examples)
    parts = [(first, gen.examples[first : first + step]) for first in range(0, total, step)]
    done = {first: files.read_part(gen.out_dir, first // step, [e.example_id for e in chunk]) for first, chunk in parts}
    todo = [(first, chunk) for first, chunk in parts if done[first] is None]
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        models = Models(config)
        job = prepare(models, gen.spec) if todo else None
        bar = tqdm(total=total, initial=total - sum(len(chunk) for _, chunk in todo), desc=gen.spec.name, unit="prompt")
        for first, chunk in todo:
            done[first] = records_of(gen, models, job, first, chunk)
            files.write_part(gen.out_dir, first // step, done[first])
            bar.update(len(chunk))
        bar.close()
    finally:
        torch.set_num_threads(threads)
    records = [record for first, _ in parts for record in done[first]]
    return finish(gen, records, resumed=len(parts) - len(todo), seconds=time.perf_counter() - started)


def finish(gen: Generation, records: list[dict], resumed: int, seconds: float) -> dict:
    """Publishes the files and prints the summary."""
    summary = {
        "system": gen.identity["system"],
        "prompts": len(records),
        "parts_resumed": resumed,
        "mean_response_tokens": mean(len(r["token_ids"]) for r in records),
        "mean_strong_tokens": mean(r["strong_tokens"] for r in records),
        "mean_weak_tokens": mean(r["weak_tokens"] for r in records),
        "finished_share": mean(bool(r["finished"]) for r in records),
        "seconds": round(seconds, 2),
    }
    files.publish(gen.out_dir, records, summary)
    gen.folder.finish(files.PUBLISHED)  # last: the sha256 of every published file, checked by a rerun
    Console().print(
        f"[green]{gen.spec.name}[/green]: {summary['prompts']} responses in {gen.out_dir} "
        f"({resumed} part(s) kept from an earlier run) in {seconds:.1f} s; per prompt: "
        f"{summary['mean_response_tokens']:.1f} response tokens, {summary['mean_strong_tokens']:.1f} strong tokens "
        f"sampled, {summary['mean_weak_tokens']:.1f} weak tokens scored; {summary['finished_share']:.0%} ended with "
        f"EOS. AlpacaEval file: {gen.out_dir / files.ALPACA_EVAL}"
    )
    return summary


def search(
    prompts: list[str | list[dict]],
    model: str,
    weak_base: str,
    weak_aligned: str,
    generator: str = "cbs",
    params: dict | None = None,
    **settings,
) -> list[dict]:
    """Python API: steers `model` with the weak pair on in-memory prompts; returns one record per prompt (as in
    responses.jsonl: output, token_ids, strong_tokens, weak_tokens, weak_score, finished), writing nothing.

    `settings` are any `generate` keys (max_new_tokens, temperature, seed, engine, tokenizer, vllm, ...).
    """
    config = GenerateConfig(
        model=model,
        weak_base=weak_base,
        weak_aligned=weak_aligned,
        generator=generator,
        params=params or {},
        **settings,
    )
    spec = config.system()
    examples = [Example(prompt, f"prompt-{index}") for index, prompt in enumerate(prompts)]
    gen = Generation(config, spec, examples, Path(config.out_dir), {})
    models = Models(config)
    return records_of(gen, models, prepare(models, spec), 0, examples)
