"""Settings of stage 1, the logit cache."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from w2s.cache.formats import formats_for
from w2s.config import ConfigError, require, require_installed
from w2s.schemas.cache import StorageDtype, Store
from w2s.source import DataSource, as_source, moved_keys

ModelDtype = Literal["auto", "float32", "bfloat16", "float16"]
Engine = Literal["local", "ray"]
ROWS = "{world}/data/cache.jsonl"
"""The default rows to score: the tiny world's cache split."""
DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")
"""The torch devices the transformers backend runs on (besides auto)."""


@dataclass
class CacheConfig:
    """Which data and models to score, how, and where the store goes."""

    moved: ClassVar[dict[str, str]] = moved_keys("data", "dataset")
    """Keys of the layout before the shared data-source section, refused naming their new place."""

    out_dir: str = "{run_root}/cache"
    """Cache folder (any local path; shards, manifest.json, ledger). Training reads it from here too."""

    data: DataSource = field(default_factory=lambda: DataSource(ROWS))
    """The rows to score (`w2s.source.DataSource`): path, split and the prompt/response/messages/id fields; a
    plain string is the path."""
    use_chat_template: bool = True
    """Render prompts through the tokenizer's chat template."""
    weak_base: str = "{world}/weak_base"
    """Weak model before alignment (path or hub id)."""
    weak_aligned: str = "{world}/weak_aligned"
    """Weak model after alignment (path or hub id)."""
    strong_ref: str = ""
    """Optional strong reference to cache as well (logp_strong_ref), so training can hold only the policy. Its
    tokenizer is the strong model's: when it is not the weak pair's, the cache is cross-tokenizer (see
    strong_tokenizer)."""
    strong_tokenizer: str = ""
    """The strong model's tokenizer (a model folder or hub id) when strong_ref is not cached; empty: the weak
    pair's (with strong_ref, its tokenizer is used and this must be empty or the same). A tokenizer other than the
    weak pair's makes a cross-tokenizer cache: every row is also tokenised the strong model's way, and the weak
    log-ratios are summed over the chunks where both tokenizations agree (`w2s.align`, `w2s.schemas.cache`)."""
    backend: str = "auto"
    """'transformers', 'vllm', 'auto' (vllm when importable and a GPU is present), or another registered backend
    (`w2s.cache.backends.BACKENDS`) or a scorer class's dotted path."""
    model_dtype: ModelDtype = "float32"
    """Compute dtype of the models: float32, bfloat16, float16, or auto (bfloat16 on a GPU with bf16 and on a CPU
    with AMX or AVX512-BF16, else float32: `w2s.device`). The dtype used is recorded in the provenance; a build is
    resumed only in the same dtype. float32 stays the default: see docs/performance.md, "bf16"."""
    storage_dtype: StorageDtype = "float32"
    """How per-token values are stored: float32 (default), float16, or bfloat16 (compact store only)."""
    store: Store = "full"
    """'full': every field, for inspection with plain pyarrow/pandas/duckdb; 'compact': only what training reads
    (weak_log_ratio, logp_strong_ref when cached, ids, prompt lengths), best with storage_dtype float16/bfloat16."""
    format: str = "both"
    """Stores to write from the one pass: a registered format (parquet, zarr, ...) or both (parquet and zarr)."""
    max_len: int = 256
    """Most tokens of prompt + response + EOS."""
    truncation: bool = False
    """Cut over-long responses to fit max_len (recorded in the manifest) instead of refusing them."""
    rows_per_shard: int = 256
    """Rows per shard; the unit of resume and of work split between workers."""
    batch_tokens: int | Literal["auto"] = "auto"
    """Token budget of one forward batch (rows are sorted by length within a shard to limit padding); with vLLM,
    of one engine step (max_num_batched_tokens, at least max_len + 1), which bounds the GPU memory reserved for
    prompt_logprobs. auto: 8192 on a GPU; on a CPU, 8192 for a tiny model down to 1024 from SmolLM2-135M up,
    where large padded batches are slower (`w2s.device`, docs/performance.md "Defaults per device"). The manifest
    records the value used."""
    side_by_side: bool | Literal["auto"] = "auto"
    """transformers backend on a CPU: score the models at once, each on its share of the torch threads, instead
    of in turn with all of them (the same values; faster, since one sequence's small ops do not split well over
    threads). auto: on a CPU with at least 2 threads; never on a GPU (`w2s.device.side_by_side_threads`)."""
    num_shards: int = 1
    """Number of workers the build is split between (one per GPU or node)."""
    shard_index: int = 0
    """This worker's index in [0, num_shards)."""
    tensor_parallel_size: int = 1
    """vLLM tensor parallel size."""
    device: str = "auto"
    """transformers backend device: auto (cuda when present), cpu, cuda, cuda:1, ..."""
    engine: Engine = "local"
    """Who scores the shards: 'local' (this process) or 'ray' (a pool of Ray actors, one model load each, on the
    cluster at ray_address; needs `pip install w2s[ray]`). The store is byte-identical either way."""
    ray_address: str = ""
    """engine=ray: the cluster to join ('auto', 'ray://head:10001', host:port); empty: the RAY_ADDRESS variable,
    else a local Ray started for this run."""
    ray_actors: int = 0
    """engine=ray: scoring actors (each loads the models once); 0: as many as the cluster's CPUs (or GPUs) hold,
    at most one per shard."""
    ray_max_retries: int = 3
    """engine=ray: restarts of a dead actor, and retries of its shards in flight (worker or node lost)."""

    def __post_init__(self) -> None:
        self.data = as_source(self.data, "cache.data", DataSource(ROWS))  # Python callers may pass a path
        require(
            self.store == "compact" or self.storage_dtype != "bfloat16",
            "cache.storage_dtype",
            "bfloat16 is stored as uint16 bit patterns, which plain readers show as integers: use it with "
            "cache.store=compact (the full store keeps float columns)",
        )
        for key in ("rows_per_shard", "num_shards", "tensor_parallel_size"):
            require(getattr(self, key) >= 1, f"cache.{key}", f"must be at least 1, got {getattr(self, key)}")
        require(
            self.batch_tokens == "auto" or self.batch_tokens >= 1,
            "cache.batch_tokens",
            f"must be auto or at least 1, got {self.batch_tokens}",
        )
        side = self.side_by_side
        require(side in (True, False, "auto"), "cache.side_by_side", f"true, false or auto, got {side!r}")
        for key in ("ray_actors", "ray_max_retries"):
            require(getattr(self, key) >= 0, f"cache.{key}", f"must be at least 0, got {getattr(self, key)}")
        require("://" not in self.out_dir, "cache.out_dir", "a build writes a local (or mounted) folder, not a URL")
        require(self.max_len >= 2, "cache.max_len", f"must be at least 2 (prompt and response), got {self.max_len}")
        try:
            formats_for(self.format)  # an unregistered format is refused at load time, naming the known ones
        except ConfigError as err:
            raise ConfigError(f"cache.format: {err}") from None
        if self.backend != "auto":  # refused at load time too, naming the registered ones
            from w2s.cache.backends import BACKENDS

            BACKENDS.get(self.backend, "cache.backend")
        require(
            self.device == "auto" or DEVICE.fullmatch(self.device) is not None,
            "cache.device",
            f"must be auto, cpu, cuda, cuda:<index> or mps, got {self.device!r}",
        )
        self.resolve_auto()
        require(
            0 <= self.shard_index < self.num_shards,
            "cache.shard_index",
            f"{self.shard_index} is outside [0, num_shards={self.num_shards})",
        )

    def resolve_auto(self) -> None:
        """Replaces `auto` in model_dtype by what it means on this machine (`w2s.device`), once, when the settings
        are made: the build records it in the provenance, and a resume compares it (a ledger written in another
        dtype is refused, not mixed). The device stays auto: each scorer places itself."""
        from w2s.device import resolve_model_dtype

        self.model_dtype = resolve_model_dtype(self.model_dtype, self.device)  # type: ignore[assignment]

    def scoring_batch_tokens(self) -> int:
        """batch_tokens, with auto resolved for this device and the largest of the models scored (their configs
        are read; paths must be final, placeholders replaced). The scorers and the manifest both use this."""
        from w2s.device import resolve_batch_tokens

        paths = [path for path in (self.weak_base, self.weak_aligned, self.strong_ref) if path]
        return resolve_batch_tokens(self.batch_tokens, self.device, paths)

    def check_installed(self) -> None:
        """Refuses, before any input is read, an engine this machine lacks: Ray for engine=ray, vLLM for
        backend=vllm scored in this process (with Ray, the actors' machines need vLLM, not the driver's). Not at
        load time: a config may name engines for a stage this machine does not run."""
        if self.engine == "ray":
            require_installed("ray", "cache.engine=ray", "ray")
        elif self.backend == "vllm":
            require_installed("vllm", "cache.backend=vllm", "gpu")
