"""Settings of the evaluation stage: the task, the systems to compare (declared, not built in), and the budgets.

Path defaults are templates: `{world}`, `{wspo}`, `{cache}` and `{run_root}` are replaced after loading (see
`w2s.settings`), so a config that moves the world moves every path that lives in it. A config built directly
in Python must pass concrete paths.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from w2s.config import require, require_finite, require_installed, require_seed
from w2s.search.components import SEARCHES
from w2s.source import DataSource, as_source, moved_keys

Engine = Literal["hf", "vllm"]
"""What samples the strong model: transformers (KV cache kept across chunks) or vLLM (prefix caching)."""

TEST_PROMPTS = "{world}/data/test.jsonl"
"""The tiny world's test split: the default prompts of `w2s eval` and `w2s generate`."""
DEFAULT_TASK = {
    "_component_": "w2s.world.task.SummaryTask",
    "path": TEST_PROMPTS,
    "l_min": 20,
    "l_max": 30,
}
"""The tiny world's test split, scored by its length reward and content score."""


@dataclass
class SystemConfig:
    """One row of the report: a model and the way it generates."""

    name: str
    """Row name in the report (unique)."""
    model: str
    """The strong model: a Hugging Face folder or hub id."""
    generator: str = "sample"
    """sample (plain sampling), cbs (chunk-level beam search guided by the weak pair), bon (best-of-N, same
    guide), eft (emulated fine-tuning: strong log-probs + beta * weak log-ratio, one shared vocabulary), or any
    search registered in `w2s.search.components.SEARCHES` (or a search class's dotted path)."""
    params: dict[str, Any] = field(default_factory=dict)
    """The generator's settings: cbs {width, num_samples, chunk_len}; bon {n}; eft {beta}; sample none."""
    engine: Engine = "hf"
    """hf (transformers) or vllm; eft needs hf (it mixes next-token distributions, which vLLM does not expose)."""
    optional: bool = False
    """Skip this system, with the reason in the report, when `model` has no config.json (e.g. WSPO before
    `w2s train`); otherwise a missing model is an error."""
    responses: str = ""
    """A responses.jsonl written by `w2s generate`/`w2s search`: score those responses (matched by prompt id)
    instead of generating; `model` then only names the tokenizer that decoded them."""

    where: InitVar[str] = ""
    """The config key refusals name (default `eval.systems[<name>]`); not a setting."""

    def __post_init__(self, where: str) -> None:
        self.check(where or f"eval.systems[{self.name}]")

    def check_budget(self, max_new_tokens: int, key: str) -> None:
        """Refuses (naming `key`) params that cannot search within `max_new_tokens`, such as a tree search budget
        too small for the root's expansion: a config-time refusal, before a folder is claimed."""
        search = SEARCHES.get(self.generator, key)
        params_problem = getattr(search, "params_problem", None)  # a search class of a user's may not have one
        problem = params_problem(self.params, max_new_tokens) if params_problem else ""
        require(not problem, key, f"{self.generator}: {problem}")

    def check(self, key: str) -> None:
        """Refuses a bad generator/params/engine combination (naming `key`); fills left-out params with
        the search's defaults and makes them int or float; a string option is checked, never filled in."""
        require(bool(self.name), key, "every system needs a name")
        search = SEARCHES.get(self.generator, f"{key}.generator")
        check_options(search, self.generator, self.params, key)
        self.params = {**search.defaults, **self.params}
        for name, kind in search.params.items():
            value = self.params[name]
            require(
                isinstance(value, (int, float)) and not isinstance(value, bool),
                f"{key}.params.{name}",
                f"must be a number, got {value!r}",
            )
            if kind is int:
                whole = isinstance(value, int) or float(value).is_integer()
                require(whole and value >= 1, f"{key}.params.{name}", f"must be an integer >= 1, got {value!r}")
                self.params[name] = int(value)
            else:
                require_finite(value, f"{key}.params.{name}")
                self.params[name] = float(value)
        require(
            not search.hf_only or self.engine == "hf",
            f"{key}.engine",
            f"{self.generator} needs engine hf: {search.hf_only}",
        )


def check_options(search: type, generator: str, params: dict[str, Any], key: str) -> None:
    """Refuses a param the search does not take and a string option outside its allowed values (naming `key`)."""
    expected, options = search.params, getattr(search, "options", {})
    unknown = sorted(set(params) - set(expected) - set(options))
    takes = sorted({*expected, *options})
    require(not unknown, f"{key}.params", f"{generator} takes {takes}; unknown {unknown}")
    for name in sorted(set(options) & set(params)):
        allowed = options[name]
        require(params[name] in allowed, f"{key}.params.{name}", f"one of {list(allowed)}, got {params[name]!r}")


def require_engine(engine: str, key: str) -> None:
    """Refuses engine vllm where vLLM is not installed, naming the extra that installs it."""
    if engine == "vllm":
        require_installed("vllm", key, "gpu")


def default_systems() -> list[SystemConfig]:
    """The tiny world's comparison, in report order: the world's models, WSPO, then search and best-of-N.

    Best-of-N's N is set so that it samples about as many strong tokens as the search (both means are
    reported): on the tiny world W=2, K=4, L=8 draws about 204 tokens a prompt, N=9 responses about 23 each.
    """
    strong = "{world}/strong_base"
    return [
        SystemConfig("weak_base", "{world}/weak_base"),
        SystemConfig("weak_aligned", "{world}/weak_aligned"),
        SystemConfig("strong_base", strong),
        SystemConfig("wspo", "{wspo}/final", optional=True),
        SystemConfig("strong_base+search", strong, "cbs", {"width": 2, "num_samples": 4, "chunk_len": 8}),
        SystemConfig("strong_base+bon", strong, "bon", {"n": 9}),
    ]


VLLM_DTYPES = ("auto", "float32", "float", "bfloat16", "float16", "half")
"""The dtypes vLLM's engine takes."""


@dataclass
class VllmOptions:
    """How a vLLM engine is started for systems with `engine: vllm` (see `w2s.vllm_engine`)."""

    max_len: int = 0
    """Longest sequence (prompt + response) the engine holds; 0 is the model's own context length."""
    dtype: str = "float32"
    """Weights and activations dtype: auto, float32, bfloat16 or float16 (float and half are vLLM's aliases)."""
    tensor_parallel_size: int = 1
    """GPUs one engine spans."""
    gpu_memory_utilization: float = 0.4
    """Share of GPU memory the engine reserves (ignored by the CPU build)."""

    def __post_init__(self) -> None:
        require(self.dtype in VLLM_DTYPES, "vllm.*.dtype", f"must be one of {list(VLLM_DTYPES)}, got {self.dtype!r}")
        require(self.max_len >= 0, "vllm.*.max_len", f"must be >= 0 (0: the model's own), got {self.max_len}")
        require(
            self.tensor_parallel_size >= 1,
            "vllm.*.tensor_parallel_size",
            f"must be >= 1, got {self.tensor_parallel_size}",
        )
        require_finite(self.gpu_memory_utilization, "vllm.*.gpu_memory_utilization", positive=True)
        require(
            self.gpu_memory_utilization <= 1,
            "vllm.*.gpu_memory_utilization",
            f"must be in (0, 1], got {self.gpu_memory_utilization}",
        )


@dataclass
class GenerationSettings:
    """How every response is drawn: the weak pair that guides, the budget and the sampling settings. Shared by
    `w2s eval` (section eval) and `w2s generate`/`w2s search` (section generate)."""

    section: ClassVar[str] = "eval"
    weak_base: str = "{world}/weak_base"
    """The weak model before alignment: the guide's denominator (cbs, bon, eft)."""
    weak_aligned: str = "{world}/weak_aligned"
    """The weak model after alignment: the guide's numerator; its tokenizer (and chat template) scores the
    decoded text, so it may differ from the strong model's."""
    tokenizer: str = "{world}/tokenizer"
    """Tokenizer for any local model folder that holds none."""
    max_new_tokens: int = 64
    """Token budget of every response."""
    temperature: float = 0.7
    """Sampling temperature of every system (0 is greedy)."""
    top_k: int = 50
    """Top-k sampling filter (0 keeps all tokens)."""
    top_p: float = 1.0
    """Nucleus sampling filter (1.0 keeps all tokens)."""
    seed: int = 0
    """Seeds plain generation; search, best-of-N and EFT use seed + i for prompt i."""
    batch_size: int = 64
    """Prompts per batch of plain generation (engine hf)."""
    weak_batch_tokens: int | Literal["auto"] = "auto"
    """Token budget of one forward pass of the weak pair as it scores responses (cbs, bon): responses x the
    longest one's new tokens. auto: 8192 on every device (one prompt's candidates are of nearly equal length, so
    large batches add no padding: docs/performance.md, "Defaults per device")."""
    threads: int = 1
    """torch CPU threads while generating; tiny models run fastest on one on a shared machine."""
    vllm: VllmOptions = field(default_factory=VllmOptions)
    """Engine settings of systems with engine vllm."""

    def __post_init__(self) -> None:
        if isinstance(self.vllm, dict):  # built in Python (e.g. `search(..., vllm={"max_len": 512})`)
            self.vllm = VllmOptions(**self.vllm)
        for key in ("max_new_tokens", "batch_size", "threads"):
            require(getattr(self, key) >= 1, f"{self.section}.{key}", f"must be >= 1, got {getattr(self, key)}")
        require(
            self.weak_batch_tokens == "auto" or self.weak_batch_tokens >= 1,
            f"{self.section}.weak_batch_tokens",
            f"must be auto or at least 1, got {self.weak_batch_tokens}",
        )
        require_finite(self.temperature, f"{self.section}.temperature")
        require(
            self.temperature >= 0, f"{self.section}.temperature", f"must be >= 0 (0 is greedy), got {self.temperature}"
        )
        require(self.top_k >= 0, f"{self.section}.top_k", f"must be >= 0 (0 keeps all tokens), got {self.top_k}")
        require_finite(self.top_p, f"{self.section}.top_p", positive=True)
        require(self.top_p <= 1, f"{self.section}.top_p", f"must be in (0, 1], got {self.top_p}")
        require_seed(self.seed, f"{self.section}.seed")


@dataclass
class EvalConfig(GenerationSettings):
    """What `w2s eval` compares, on which task, with which budgets."""

    out_dir: str = "{run_root}/eval"
    """Output folder: report.json, report.md, comparison.png, reward_vs_gamma.png (gamma sweep only), config.yaml."""
    task: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_TASK))
    """The task: `_component_` (dotted path of a w2s.task.Task class) and its arguments. A mapping
    without `_component_` updates the arguments of the default task (the tiny world's test split)."""
    systems: list[SystemConfig] = field(default_factory=default_systems)
    """The systems to compare, in report order: each {name, model, generator, params, engine, optional,
    responses}."""
    run: list[str] = field(default_factory=list)
    """Names of the declared systems to run (in declared order); empty runs them all."""
    wspo_dir: str = "{wspo}"
    """Training output: every wspo_dir/*/final of a sweep (e.g. gamma-0.1/final) feeds the reward-vs-gamma plot (the
    loss and its parameters read from final/w2s_provenance.json, never from folder names)."""
    gamma_sweep: bool = True
    """Also evaluate every wspo_dir/*/final (plain sampling) and plot the task's metrics against the swept loss
    parameter (gamma for a WSPO sweep)."""
    num_examples: int = 200
    """Test prompts evaluated (the task's first ones)."""
    num_shown: int = 3
    """Sample outputs per system saved in report.json (the first test prompts)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if "_component_" not in self.task:  # a partial mapping (e.g. one override) updates the default task
            self.task = {**DEFAULT_TASK, **self.task}
        require(  # the name itself is looked up in w2s.task.TASKS when the task is built (before any model loads)
            isinstance(self.task["_component_"], str) and bool(self.task["_component_"]),
            "eval.task._component_",
            "must be a registered task name (length, reward_model, tiny_summary, tiny_tone) or a dotted path such as "
            "w2s.world.task.SummaryTask",
        )
        names = [system.name for system in self.systems]
        require(len(set(names)) == len(names), "eval.systems", f"system names must be unique, got {names}")
        unknown = [name for name in self.run if name not in names]
        require(not unknown, "eval.run", f"unknown system(s) {unknown}; declared: {names}")
        require(self.num_examples >= 1, "eval.num_examples", f"must be >= 1, got {self.num_examples}")
        require(self.num_shown >= 0, "eval.num_shown", f"must be >= 0, got {self.num_shown}")
        for system in self.systems:
            system.check_budget(self.max_new_tokens, f"eval.systems[{system.name}].params")

    def selected(self) -> list[SystemConfig]:
        """The systems `run` names (all when it is empty), in declared order; refuses, before anything runs, one
        whose engine is not installed here (a config may declare vLLM systems that this machine never runs)."""
        chosen = [system for system in self.systems if not self.run or system.name in self.run]
        for system in chosen:
            require_engine(system.engine, f"eval.systems[{system.name}].engine=vllm")
        return chosen


@dataclass
class GenerateConfig(GenerationSettings):
    """What `w2s generate` (and `w2s search`) runs: one system on one prompt set, into a responses folder."""

    section: ClassVar[str] = "generate"
    out_dir: str = "{run_root}/generate"
    """Output folder: parts/ (written as it goes), responses.jsonl, model_outputs.json (AlpacaEval), run.json."""
    moved: ClassVar[dict[str, str]] = moved_keys("prompts")
    """Keys of the layout before the shared data-source section, refused naming their new place."""

    prompts: DataSource = field(default_factory=lambda: DataSource(TEST_PROMPTS))
    """The prompt set (`w2s.source.DataSource`): path (a local jsonl/json/parquet/arrow file or folder, or a hub
    dataset name; AlpacaEval's hub split is 'eval'), split and fields; a plain string is the path."""
    limit: int = 0
    """Only the first N prompts (0: all)."""
    model: str = "{world}/strong_base"
    """The strong model (a folder or hub id); any tokenizer: the weak pair re-tokenises its text."""
    generator: str = ""
    """sample, cbs (chunk-level beam search), bon (best-of-N) or eft; empty: cbs under `w2s search`, sample
    under `w2s generate`."""
    params: dict[str, Any] = field(default_factory=dict)
    """The generator's settings (cbs {width, num_samples, chunk_len}, bon {n}, eft {beta}); left-out ones take
    the defaults (cbs 2, 2, 30; bon 4; eft 1.0)."""
    engine: Engine = "hf"
    """hf (transformers) or vllm (prefix caching, tensor parallel; see generate.vllm)."""
    name: str = ""
    """The `generator` name written into model_outputs.json (AlpacaEval); empty: <model folder>+<generator>."""
    save_every: int = 16
    """Prompts per part file: the unit a killed run resumes from."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.prompts = as_source(self.prompts, "generate.prompts", DataSource(TEST_PROMPTS))  # or a path, in Python
        require(self.save_every >= 1, "generate.save_every", f"must be >= 1, got {self.save_every}")
        require(self.limit >= 0, "generate.limit", f"must be >= 0 (0: all), got {self.limit}")
        if self.generator:
            self._spec(self.generator)  # refuses bad params now, before anything loads

    def system(self, default_generator: str = "sample") -> SystemConfig:
        """The system this run generates with (params checked and completed); refuses an engine that is not
        installed here, before the run writes anything (loading a config that names one is not refused)."""
        require_engine(self.engine, "generate.engine=vllm")
        return self._spec(self.generator or default_generator)

    def _spec(self, generator: str) -> SystemConfig:
        name = self.name or f"{Path(self.model.rstrip('/')).name}+{generator}"
        system = SystemConfig(name, self.model, generator, dict(self.params), self.engine, where="generate")
        system.check_budget(self.max_new_tokens, "generate.params")
        return system
