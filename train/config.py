"""Settings of stage 2, the WSPO trainer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from w2s.config import ConfigError, require, require_finite, require_seed
from w2s.registry import COMPONENT

DEFAULT_LOSS = {COMPONENT: "w2s.train.losses.WSPO", "gamma": 0.1}
"""WSPO with the paper's gamma for the TL;DR and HH setups."""


@dataclass
class TrainConfig:
    """What to train, on which cache, and how."""

    out_dir: str = "{run_root}/wspo"
    """Output folder: checkpoints/, final/ (a Hugging Face model), metrics.jsonl, tensorboard/, curves.png."""
    cache_dir: str = "{cache}"
    """The logit cache to train on; by default the cache section's out_dir, so a config names that folder once."""
    cache_format: str = "parquet"
    """Which store of the cache to stream: parquet, zarr, or another registered format
    (`w2s.cache.formats.FORMATS`)."""
    policy: str = "{world}/strong_base"
    """The strong model to train (path or hub id); its frozen copy is the reference. Its tokenizer must be the
    cache's (in a cross-tokenizer cache, the strong one the cache stores ids of: `<cache>/strong_tokenizer`)."""
    mode: Literal["cached", "online"] = "cached"
    """'cached': weak ratios (and the reference, when cached) come from the cache; 'online': the weak pair runs in
    the training process, as in the authors' code (the baseline the cache is measured against; not with a
    cross-tokenizer cache, whose weak ratios are per chunk of strong tokens)."""
    use_cached_ref: bool = True
    """Read logp_strong_ref from the cache when it is there; false runs the frozen reference beside the policy."""
    accept_other_ref: bool = False
    """Train against the cached strong reference even when the policy is another model (refused otherwise)."""
    loss: dict = field(default_factory=lambda: dict(DEFAULT_LOSS))
    """The loss: `_component_` (a registered name such as `wspo` or `wspo_sequence`, or a class's dotted path,
    `w2s.train.losses.LOSSES`) and its parameters, e.g. `{_component_: w2s.train.losses.WSPO, gamma: 0.1}`. A
    mapping without `_component_` updates the parameters of the default loss (WSPO). Recorded in the run's
    provenance, where eval reads it."""
    sweep: dict = field(default_factory=dict)
    """A sweep over one loss parameter: `{gamma: [0.1, 0.3, 1.0]}` trains once per value on the same cache, into
    out_dir/<parameter>-<value>/ (the value overrides the loss's own)."""
    gamma: float | None = None
    """Shorthand for loss.gamma (the WSPO gamma, > 0: the strong log-ratio is pushed toward weak_log_ratio /
    gamma)."""
    gammas: list[float] = field(default_factory=list)
    """Shorthand for sweep: {gamma: [...]}: one run per gamma, into out_dir/gamma-<value>/."""
    lr: float = 1e-5
    """Peak learning rate (> 0; linear warm-up, then cosine to zero)."""
    warmup_ratio: float = 0.1
    """Share of the optimiser steps spent warming up, in [0, 1]."""
    epochs: int = 1
    """Passes over the cache (at least 1)."""
    max_steps: int = 0
    """Stop after this many optimiser steps (0: run all epochs)."""
    micro_batch_size: int = 8
    """Rows per process per forward pass."""
    grad_accum: int = 1
    """Micro-batches per optimiser step."""
    clip: float = 1.0
    """Gradient norm clipping (0 turns it off)."""
    weight_decay: float = 0.0
    """Adam weight decay (>= 0)."""
    seed: int = 0
    """Fixes the data order and any initialisation."""
    zero_stage: int = 0
    """ZeRO stage, 0 to 3: 1 partitions the optimizer states over the ranks, 2 also the gradients, 3 also the
    weights (the policy is then loaded straight into its partitions). Used when deepspeed_config is empty."""
    offload: Literal["none", "cpu"] = "none"
    """Where the optimizer states live: 'none' (on the device) or 'cpu' (ZeRO-Offload; needs zero_stage >= 1).
    Used when deepspeed_config is empty."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer in the backward instead of keeping its activations: at Qwen2-7B with 2 rows of
    1536 tokens, 17.6 GiB of activations per GPU become 1.2 GiB, for about one more forward per step."""
    deepspeed_config: str = ""
    """A DeepSpeed JSON to use instead of zero_stage and offload (relative to the working directory; a
    `configs/<name>` not found there is read from the copy shipped with w2s). Empty (the default): the settings are
    built from this section. Batch size, accumulation, clipping, lr and precision are always filled from here."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """'auto' (bf16 on a GPU with bf16, else fp32: on a CPU, bf16 training's loss left float32's noise, see
    docs/performance.md "bf16"), 'bf16' or 'fp32'."""
    lora: bool = False
    """Train LoRA adapters (peft) instead of all weights; the final model is saved merged."""
    lora_rank: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA alpha (at least 1): the adapters are scaled by lora_alpha / lora_rank."""
    save_every: int = 0
    """Checkpoint every N optimiser steps, the last step included when it is a multiple of N (0: never); a rerun of
    the same command resumes from the newest."""
    save_final_checkpoint: bool = False
    """Also save a DeepSpeed checkpoint (weights and optimizer state, ~16 bytes per parameter) when the run ends,
    to continue training it later; final/ (the model) is always written."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept on disk (each holds the optimizer state: about 16 bytes per parameter)."""
    log_every: int = 1
    """Print and log metrics every N optimiser steps."""
    check_rows: int = 16
    """Rows of the cache to re-tokenise with the policy's tokenizer at start, to show where the ids first differ
    when the tokenizers' fingerprints (vocabulary, special tokens, chat template) differ; the fingerprint itself
    is always compared, and a policy whose tokenizer differs is refused (0 skips only the re-tokenising)."""
    verify_cache: Literal["sizes", "sample", "full"] = "sample"
    """Start-up check of the cache: 'sizes' (manifest, every file's size, row ranges; files modified after the
    manifest are re-hashed), 'sample' (that, plus the sha256 and row ids of 2 random shards) or 'full' (every file
    of every format hashed, as `w2s verify` does). Whatever the level, every shard is hashed as it is read for
    training and its row ids are checked: a byte that differs from the manifest stops the run before that batch."""
    block_shards: int = 4
    """Cache shards shuffled together (and held in memory at once) by the reader."""

    def __post_init__(self) -> None:
        from w2s.cache.formats import get_format

        try:
            get_format(self.cache_format)  # a registered format, not a hand-kept list
        except ConfigError as err:
            raise ConfigError(f"train.cache_format: {err}") from None
        sweep_key = "train.gammas" if self.gammas else ""  # the key the user wrote, for refusals
        self._fold_shorthands()
        self.loss_component()  # an unknown loss, or parameters it does not take, are refused at load time
        require(len(self.sweep) <= 1, "train.sweep", f"sweeps one loss parameter, got {sorted(self.sweep)}")
        for name, values in self.sweep.items():
            key = sweep_key or f"train.sweep.{name}"
            require(isinstance(values, list) and bool(values), key, "must be a non-empty list of values")
            for value in values:
                self.loss_component({**self.loss, name: value}, key)
            folders = [sweep_folder(name, value) for value in values]  # each run's folder, as `w2s train` names it
            require(
                len(set(folders)) == len(folders),
                key,
                f"gives two runs one folder ({sorted({f for f in folders if folders.count(f) > 1})}): values must "
                "differ in their first 6 significant digits",
            )
        require_finite(self.lr, "train.lr", positive=True)
        require_finite(self.clip, "train.clip")
        require(self.clip >= 0, "train.clip", f"must be >= 0 (0 turns clipping off), got {self.clip!r}")
        require_finite(self.weight_decay, "train.weight_decay")
        require(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {self.weight_decay!r}")
        require_seed(self.seed, "train.seed")
        require_finite(self.warmup_ratio, "train.warmup_ratio")
        require(0 <= self.warmup_ratio <= 1, "train.warmup_ratio", f"must be in [0, 1], got {self.warmup_ratio!r}")
        for key in (
            "epochs",
            "micro_batch_size",
            "grad_accum",
            "log_every",
            "block_shards",
            "lora_rank",
            "lora_alpha",  # alpha 0 scales the adapters to nothing: training would change nothing
            "keep_checkpoints",
        ):
            require(getattr(self, key) >= 1, f"train.{key}", f"must be at least 1, got {getattr(self, key)}")
        require(0 <= self.zero_stage <= 3, "train.zero_stage", f"must be 0, 1, 2 or 3, got {self.zero_stage!r}")
        require(
            self.offload == "none" or self.zero_stage >= 1,
            "train.offload",
            "offloading the optimizer to the CPU needs ZeRO: set train.zero_stage to 1, 2 or 3",
        )
        require(
            not (self.lora and self.zero_stage == 3), "train.lora", "LoRA with ZeRO stage 3 is not supported: use 0-2"
        )
        require(
            not self.deepspeed_config or (self.zero_stage, self.offload) == (0, "none"),
            "train.deepspeed_config",
            f"{self.deepspeed_config} decides the ZeRO stage and offload: leave train.zero_stage and train.offload "
            "unset, or leave deepspeed_config empty",
        )
        for key in ("max_steps", "save_every", "check_rows"):
            require(getattr(self, key) >= 0, f"train.{key}", f"must be >= 0, got {getattr(self, key)}")

    def _fold_shorthands(self) -> None:
        """`gamma` and `gammas` are written into `loss` and `sweep` (then cleared), so the loss has one owner."""
        require(isinstance(self.loss, dict), "train.loss", "must be a mapping with _component_ and its parameters")
        if COMPONENT not in self.loss:  # a partial mapping (e.g. one override) updates the default loss
            self.loss = {**DEFAULT_LOSS, **self.loss}
        if self.gamma is not None:
            require_finite(self.gamma, "train.gamma", positive=True)
            self.loss = {**self.loss, "gamma": self.gamma}
            self.gamma = None
        if self.gammas:
            require(not self.sweep, "train.gammas", "set either train.gammas or train.sweep, not both")
            for index, gamma in enumerate(self.gammas):
                require_finite(gamma, f"train.gammas[{index}]", positive=True)
            self.sweep, self.gammas = {"gamma": list(self.gammas)}, []

    def loss_component(self, spec: dict | None = None, where: str = "train.loss"):
        """The loss this config names, built with its parameters (refused in one line if it cannot be)."""
        from w2s.train.losses import LOSSES

        try:
            return LOSSES.build(spec or self.loss, where)
        except ConfigError as err:
            raise ConfigError(str(err) if str(err).startswith("train.") else f"{where}: {err}") from None

    def runs(self) -> list[TrainConfig]:
        """One config per run: this one, or one per value of the sweep, in its own folder."""
        if not self.sweep:
            return [self]
        (name, values), settings = next(iter(self.sweep.items())), asdict(self)
        return [
            TrainConfig(**{**settings, "loss": {**self.loss, name: value}, "sweep": {},
                           "out_dir": str(Path(self.out_dir) / sweep_folder(name, value))})
            for value in values
        ]  # fmt: skip


def sweep_folder(name: str, value) -> str:
    """A sweep run's folder: `gamma-0.1` (numbers as `:g`: 6 significant digits)."""
    return f"{name}-{value:g}" if isinstance(value, int | float) and not isinstance(value, bool) else f"{name}-{value}"
