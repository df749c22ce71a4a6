"""The declared systems, made runnable: which to run (and which to skip), their models, and how each generates.

A system is a model plus a generator (`EvalConfig.systems`). Plain sampling on transformers goes through the
batched `w2s.sampling.generate`; every other (generator, engine) pair goes through the `Sampler` protocol with
the search written once in `w2s.search` and looked up in its registry (`w2s.search.components.SEARCHES`), never
branched on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoConfig

from w2s.config import ConfigError
from w2s.errors import CacheMismatch, DataError
from w2s.eval.config import EvalConfig, GenerationSettings, SystemConfig
from w2s.eval.responses import RUN, read_responses, responses_file
from w2s.models import load_causal_lm, load_model_config, load_tokenizer
from w2s.provenance import tokenizer_fingerprint
from w2s.sampling import encode_prompt, generate
from w2s.search.components import SEARCHES
from w2s.search.samplers import HFSampler, Sampler, Sampling
from w2s.search.scorer import WeakScorer


@dataclass
class Planned:
    """A system to run: its declaration and, for a trained model, the loss it was trained with (its provenance)."""

    spec: SystemConfig
    loss: dict | None = None
    """`train.loss` of the model's w2s_provenance.json: `_component_` and its parameters (None for other models)."""
    parameter: str = "gamma"
    """The loss parameter a sweep varies (the x axis of its plot)."""

    @property
    def gamma(self) -> float | None:
        """WSPO's gamma (None for a model trained with a loss that has none, or not trained by w2s)."""
        value = (self.loss or {}).get("gamma")
        return None if value is None else float(value)


def read_loss(model_dir: str | Path) -> dict | None:
    """The loss a model was trained with: `train.loss` of its w2s_provenance.json (None for other models)."""
    provenance = Path(model_dir) / "w2s_provenance.json"
    if not provenance.is_file():
        return None
    loss = json.loads(provenance.read_text()).get("train", {}).get("loss")
    return loss if isinstance(loss, dict) else None


def swept_parameter(losses: list[dict]) -> str:
    """The one loss parameter whose value differs between a sweep's runs ('gamma' when none or several do)."""
    keys = {key for loss in losses for key in loss if key != "_component_"}
    varied = [key for key in sorted(keys) if len({repr(loss.get(key)) for loss in losses}) > 1]
    return varied[0] if len(varied) == 1 else "gamma"


def sweep_runs(wspo_dir: Path) -> tuple[list[Planned], dict[str, str]]:
    """Every finished run of a sweep (each `wspo_dir/*/final`, whatever its folder is called), by increasing value
    of the swept loss parameter, which is read from each model's provenance, and the runs skipped."""
    found, skipped = [], {}
    for run_dir in sorted(path for path in wspo_dir.glob("*") if path.is_dir()):
        final = run_dir / "final"
        if not (final / "config.json").exists():
            continue  # not a run, or not finished yet
        loss = read_loss(final)
        if loss is None:
            skipped[f"wspo {run_dir.name}"] = f"no train.loss in {final / 'w2s_provenance.json'}"
            continue
        found.append((final, loss))
    parameter = swept_parameter([loss for _, loss in found])
    runs = []
    for final, loss in found:
        value = loss.get(parameter)
        if not isinstance(value, int | float):
            skipped[f"wspo {final.parent.name}"] = (
                f"its loss has no numeric {parameter} ({final / 'w2s_provenance.json'})"
            )
            continue
        runs.append(Planned(SystemConfig(f"wspo {parameter}={value:g}", str(final)), loss, parameter))
    return sorted(runs, key=lambda run: run.loss[parameter]), skipped


def plan(config: EvalConfig) -> tuple[list[Planned], list[Planned], dict[str, str]]:
    """The systems to run (those `run` selects), the sweep's runs, and the systems skipped (name -> reason)."""
    systems, skipped = [], {}
    for spec in config.selected():
        if spec.optional and not (Path(spec.model) / "config.json").exists():
            skipped[spec.name] = f"no model at {spec.model} (an optional system: train or build it first)"
            continue
        systems.append(Planned(spec, read_loss(spec.model)))
    sweep, sweep_skipped = sweep_runs(Path(config.wspo_dir)) if config.gamma_sweep else ([], {})
    return systems, sweep, {**skipped, **sweep_skipped}


@dataclass
class Guide:
    """The weak pair that guides cbs, bon and eft."""

    tuned: torch.nn.Module
    untuned: torch.nn.Module
    tokenizer: object
    batch_tokens: int | str = "auto"
    scorer: WeakScorer = field(init=False)

    def __post_init__(self) -> None:
        self.scorer = WeakScorer(self.tuned, self.untuned, self.tokenizer, batch_tokens=self.batch_tokens)


class Models:
    """Loads every model, tokenizer, vLLM engine and the weak pair once, however many systems share them."""

    def __init__(self, config: GenerationSettings) -> None:
        self.config, self.weak = config, None
        self.models, self.tokenizers, self.engines = {}, {}, {}  # by path
        self.sampling = Sampling(config.temperature, config.top_k, config.top_p)

    def tokenizer(self, path: str):
        """The tokenizer of the model at `path`; a local folder without one uses `config.tokenizer`."""
        if path not in self.tokenizers:
            folder = Path(path)
            has_tokenizer = not folder.is_dir() or (folder / "tokenizer_config.json").exists()
            self.tokenizers[path] = load_tokenizer("eval", path if has_tokenizer else self.config.tokenizer)
        return self.tokenizers[path]

    def get(self, path: str) -> tuple[torch.nn.Module, object]:
        """The transformers model (in eval mode) and tokenizer at `path`."""
        if path not in self.models:
            self.models[path] = load_causal_lm("eval", path).eval()
        return self.models[path], self.tokenizer(path)

    def guide(self) -> Guide:
        """The weak pair: weak_aligned over weak_base, scoring with the aligned model's tokenizer."""
        if self.weak is None:
            tuned, tokenizer = self.get(self.config.weak_aligned)
            self.weak = Guide(tuned, self.get(self.config.weak_base)[0], tokenizer, self.config.weak_batch_tokens)
        return self.weak

    def sampler(self, spec: SystemConfig) -> Sampler:
        """The strong sampler of a system: transformers (KV rows kept) or a vLLM engine (prefix caching)."""
        if spec.engine == "hf":
            return HFSampler(*self.get(spec.model), self.sampling)
        from w2s.search.vllm_sampler import VllmSampler, make_llm  # vLLM only where a system asks for it

        if spec.model not in self.engines:
            options = self.config.vllm
            max_len = options.max_len or AutoConfig.from_pretrained(spec.model).max_position_embeddings
            self.engines[spec.model] = make_llm(
                spec.model, max_len, options.dtype, options.tensor_parallel_size, options.gpu_memory_utilization
            )
        return VllmSampler(self.engines[spec.model], self.tokenizer(spec.model), self.sampling)


@dataclass
class Job:
    """What one system's search needs for every prompt."""

    sampler: Sampler
    params: dict
    max_new_tokens: int
    guide: Guide | None = None


def prepare(models: Models, spec: SystemConfig) -> Job | None:
    """Loads what a system needs before it is timed; None for batched plain sampling (transformers) and for
    recorded responses (only the tokenizer is loaded)."""
    if spec.responses:
        models.tokenizer(spec.model)
        return None
    if spec.engine == "hf":
        models.get(spec.model)
        if spec.generator == "sample":
            return None
    search = SEARCHES.get(spec.generator)
    guide = models.guide() if search.guided else None
    job = Job(models.sampler(spec), spec.params, models.config.max_new_tokens, guide)
    try:
        search().check(job)
    except ValueError as err:
        raise ConfigError(f"{spec.name}: {err}") from err
    return job


def sampled_tokens(response: list[int], max_new_tokens: int) -> int:
    """Tokens a plain sample drew: the response, plus its EOS when it stopped before the budget."""
    return len(response) + (len(response) < max_new_tokens)


@dataclass
class Generated:
    """One response and what it cost."""

    token_ids: list[int]
    """The strong model's tokens, cut at (and excluding) EOS."""
    strong_tokens: int
    """Strong tokens sampled for it, EOS and every discarded candidate included."""
    weak_tokens: int = 0
    """Weak tokens the guide scored for it (each by both weak models); 0 for unguided systems."""
    weak_score: float | None = None
    """The guide's score of the response (cbs, bon, eft); None for unguided systems."""
    finished: bool | None = None
    """Whether it ended with EOS rather than at the budget (None where the generator does not say)."""


def check_positions(models: Models, spec: SystemConfig, prompts: list, first_index: int = 0) -> None:
    """Refuses a prompt whose tokens plus the token budget exceed the strong model's positions, which it would
    otherwise answer from garbled positions; names the prompt (its index in the run), the model and the fix."""
    text = load_model_config("eval", spec.model)  # the config only: a vLLM system's weights stay unloaded here
    text = text.get_text_config() if hasattr(text, "get_text_config") else text
    positions, tokenizer = getattr(text, "max_position_embeddings", None), models.tokenizer(spec.model)
    budget = models.config.max_new_tokens
    for index, prompt in enumerate(prompts) if positions else ():
        size = len(encode_prompt(tokenizer, prompt))
        if size + budget > positions:
            raise DataError(
                f"prompt {first_index + index} (0-based): {size} tokens + max_new_tokens {budget} exceed the "
                f"{spec.name} model's {positions} positions ({spec.model}); shorten the prompt or lower max_new_tokens"
            )


def generate_for(
    models: Models, spec: SystemConfig, job: Job | None, prompts: list, first_index: int = 0
) -> list[Generated]:
    """One response per prompt. Prompt i of the run (`first_index + i`) is searched with seed + first_index + i;
    a batch of plain samples is seeded with seed + first_index, so a run split into parts draws the same tokens
    whichever parts a resumed run redoes."""
    config = models.config
    check_positions(models, spec, prompts, first_index)
    if job is None:
        model, tokenizer = models.get(spec.model)
        seed, budget = config.seed + first_index, config.max_new_tokens
        responses = generate(
            model, tokenizer, prompts, budget, config.temperature, config.top_k, config.top_p, seed, config.batch_size
        )
        return [Generated(ids, sampled_tokens(ids, budget), finished=len(ids) < budget) for ids in responses]
    search_class = SEARCHES.get(spec.generator)
    search, guided = search_class().run, search_class.guided
    results = [
        search(job, prompt, config.seed + first_index + index)
        for index, prompt in enumerate(tqdm(prompts, desc=spec.name, leave=False))
    ]
    return [
        Generated(r.token_ids, r.num_sampled, r.weak_tokens, r.score if guided else None, r.finished) for r in results
    ]


def recorded_responses(
    spec: SystemConfig,
    example_ids: list[str],
    prompts: list | None = None,
    prompts_fingerprint: str | None = None,
    tokenizer=None,
) -> list[Generated]:
    """The responses a `w2s generate` run wrote to `spec.responses`, in `example_ids` order, checked to answer
    these very prompts (`check_recorded`).

    Raises:
        DataError: an unreadable file, an id with no response there, or responses to another prompt set, naming
            the file or folder.
        CacheMismatch: token ids that `tokenizer` (which eval decodes them with) did not make.
    """
    path = responses_file(Path(spec.responses))
    records = {str(record["id"]): record for record in read_responses(path)}
    missing = [example_id for example_id in example_ids if example_id not in records]
    if missing:
        raise DataError(f"{path}: no response for {len(missing)} prompt id(s), first {missing[0]!r}")
    chosen = [records[example_id] for example_id in example_ids]
    check_recorded(path, chosen, prompts, prompts_fingerprint, tokenizer)
    return [
        Generated(r["token_ids"], r["strong_tokens"], r["weak_tokens"], r.get("weak_score"), r.get("finished"))
        for r in chosen
    ]


def recorded_identity(path: Path) -> dict:
    """The identity in the run.json beside a responses file ({} when there is none: a file from elsewhere)."""
    run_file = path.parent / RUN
    if not run_file.is_file():
        return {}
    try:
        identity = json.loads(run_file.read_text()).get("identity", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise DataError(f"{run_file}: unreadable ({err})") from err
    return identity if isinstance(identity, dict) else {}


def check_recorded(path: Path, records: list[dict], prompts: list | None, fingerprint: str | None, tokenizer) -> None:
    """Refuses recorded responses that answer another prompt set than the task's (ids alone can match across
    sets: the run.json's prompts fingerprint must be the task's, and each record's prompt the task's prompt), or
    whose token ids were made by another tokenizer than the one eval decodes them with."""
    identity = recorded_identity(path)
    recorded = (identity.get("prompts") or {}).get("fingerprint")
    if fingerprint and recorded and recorded != fingerprint:
        raise DataError(
            f"{path.parent}: these responses answer another prompt set (its run.json records prompts fingerprint "
            f"{recorded}, the task's prompts are {fingerprint}); generate them for the task's prompts"
        )
    for record, prompt in zip(records, prompts or []):
        if record["prompt"] != prompt:
            raise DataError(
                f"{path}: the response to id {record['id']!r} answers another prompt than the task's "
                f"({str(record['prompt'])[:60]!r} vs {str(prompt)[:60]!r}); generate them for the task's prompts"
            )
    made_by = identity.get("tokenizer") or ((identity.get("models") or {}).get("strong") or {}).get("tokenizer")
    if tokenizer is not None and isinstance(made_by, str) and made_by != tokenizer_fingerprint(tokenizer):
        raise CacheMismatch(
            f"{path.parent}: its token ids were made by a tokenizer (fingerprint {made_by[:12]}...) other than "
            f"the one eval decodes them with ({tokenizer.name_or_path}, {tokenizer_fingerprint(tokenizer)[:12]}...); "
            "give the system the generating model (or eval.tokenizer its tokenizer)"
        )


def responses_of(
    models: Models,
    spec: SystemConfig,
    job: Job | None,
    prompts: list,
    example_ids: list[str] | None = None,
    prompts_fingerprint: str | None = None,
) -> tuple[list[list[int]], list[int]]:
    """One response per prompt (token ids) and the strong tokens sampled for each (EOS and candidates included);
    a system with `responses` reads them from that file (by `example_ids`) instead of generating, and refuses
    them unless they answer these prompts (`prompts_fingerprint`: the task's prompt set, when it has one)."""
    if spec.responses:
        tokenizer = models.tokenizer(spec.model)
        ids = list(example_ids or [])
        generated = recorded_responses(spec, ids, prompts, prompts_fingerprint, tokenizer)
    else:
        generated = generate_for(models, spec, job, prompts)
    return [g.token_ids for g in generated], [g.strong_tokens for g in generated]
