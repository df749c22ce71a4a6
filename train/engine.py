"""The trainer's DeepSpeed side: process group, DeepSpeed settings, loading the policy, metrics across ranks.

- `deepspeed_settings()` builds the DeepSpeed config from the train section (`zero_stage`, `offload`) when no
  JSON is named, so `w2s train` runs from any directory; a named JSON is read relative to the working
  directory, then, for a `configs/...` name, from the copy shipped inside the package.
- `load_policy()` loads the policy straight into ZeRO-3 partitions (transformers' `HfDeepSpeedConfig` is alive
  during `from_pretrained`, so every layer is built under `deepspeed.zero.Init` and each rank keeps its shard
  only: no whole fp32 copy per rank), in bfloat16 when the run is bf16.
- `mean_over_ranks()` averages the logged metrics over every rank before rank 0 writes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path

import deepspeed
import torch

from w2s.config import shipped_or_given
from w2s.errors import ConfigError
from w2s.models import load_causal_lm
from w2s.train.config import TrainConfig

ADAM = {"torch_adam": True, "adam_w_mode": True, "betas": [0.9, 0.95], "eps": 1e-8}
"""torch's Adam (nothing to compile) with the shipped JSONs' settings; an offloaded optimizer uses DeepSpeed's
CPU Adam instead (compiled once, far faster on the CPU)."""


def init_distributed() -> None:
    """One plain `python` process gets a world of one; launchers (deepspeed, torchrun, accelerate) set these."""
    if "WORLD_SIZE" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


def use_bf16(precision: str) -> bool:
    if precision == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return precision == "bf16"


def model_dtype(precision: str) -> torch.dtype:
    """The dtype the models are loaded in: bfloat16 for a bf16 run (no fp32 copy is ever made), else float32."""
    return torch.bfloat16 if use_bf16(precision) else torch.float32


def resolve_json(name: str) -> Path:
    """A DeepSpeed JSON named in `train.deepspeed_config`: relative to the working directory, else (for
    `configs/<file>`) the copy shipped with w2s; refused in one line naming the path when neither exists."""
    path = shipped_or_given(name)
    if path.is_file():
        return path
    raise ConfigError(
        f"train.deepspeed_config: {name}: no such file (from {Path.cwd()}); name an existing JSON, or leave it "
        "empty to build the DeepSpeed settings from train.zero_stage and train.offload"
    )


def read_json(name: str) -> dict:
    path = resolve_json(name)
    try:
        settings = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"train.deepspeed_config: {path}: not a JSON file ({err})") from err
    if not isinstance(settings, dict):
        raise ConfigError(f"train.deepspeed_config: {path}: must hold a JSON object, got {type(settings).__name__}")
    return settings


def built_settings(config: TrainConfig) -> dict:
    """The DeepSpeed settings the train section stands for when it names no JSON."""
    zero: dict = {"stage": config.zero_stage}
    optimizer = dict(ADAM)
    if config.offload == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        optimizer["torch_adam"] = False
    if config.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "zero_optimization": zero,
        "optimizer": {"type": "Adam", "params": optimizer},
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }


def deepspeed_settings(config: TrainConfig, world_size: int) -> dict:
    """The DeepSpeed config (the named JSON, or built from the section) with batch, accumulation, clipping, lr
    and precision filled from the train section."""
    settings = read_json(config.deepspeed_config) if config.deepspeed_config else built_settings(config)
    settings.update(
        train_micro_batch_size_per_gpu=config.micro_batch_size,
        gradient_accumulation_steps=config.grad_accum,
        train_batch_size=config.micro_batch_size * config.grad_accum * world_size,
        gradient_clipping=config.clip,
    )
    settings.setdefault("optimizer", {"type": "Adam", "params": dict(ADAM)})
    settings["optimizer"].setdefault("params", {}).update(lr=config.lr, weight_decay=config.weight_decay)
    settings["bf16"] = {"enabled": use_bf16(config.precision)}
    return settings


def zero_stage(settings: dict) -> int:
    return int(settings.get("zero_optimization", {}).get("stage", 0))


@contextlib.contextmanager
def zero3_init(settings: dict):
    """While open, `from_pretrained` builds models under `deepspeed.zero.Init` when `settings` ask for ZeRO-3:
    each weight is partitioned as its layer is made and the checkpoint is loaded shard by shard, so no rank ever
    holds the whole model. transformers finds the settings through a weak reference, so the object is held here
    and released on exit (frozen models loaded later stay whole and local)."""
    if zero_stage(settings) != 3:
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    alive = HfDeepSpeedConfig(settings)
    try:
        yield alive
    finally:
        unset_hf_deepspeed_config()


def load_policy(config: TrainConfig, settings: dict) -> torch.nn.Module:
    """The policy in the run's dtype, partitioned at load under ZeRO-3, with gradient checkpointing and LoRA
    adapters when asked."""
    if config.lora and zero_stage(settings) == 3:
        raise ConfigError("train.lora with ZeRO stage 3 is not supported: use stage 0 to 2 for LoRA")
    with zero3_init(settings):
        model = load_causal_lm("policy", config.policy, dtype=model_dtype(config.precision))
    if config.gradient_checkpointing:
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.lora:
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
        model = get_peft_model(
            model, LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules=targets)
        )
    return model


def frozen(role: str, path: str, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A frozen model (reference or weak), whole on this rank, in eval mode."""
    model = load_causal_lm(role, path, dtype=dtype).to(device).eval()
    model.requires_grad_(False)
    return model


def mean_over_ranks(metrics: dict[str, float]) -> dict[str, float]:
    """Every metric averaged over the ranks (one all-reduce of one float64 vector); each rank gets the means.

    Each rank's loss is the mean over its own rows and every rank reads as many rows, so the mean of the ranks'
    losses is the loss of the global batch. Ratio means and the correlation are averaged per rank the same way;
    `tokens` is the mean count of a rank's micro-batch.
    """
    world_size = torch.distributed.get_world_size()
    if world_size == 1:
        return metrics
    keys = sorted(metrics)
    nccl = torch.distributed.get_backend() == "nccl"  # NCCL reduces GPU tensors only
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(values)  # sum
    return dict(zip(keys, (values / world_size).cpu().tolist()))
