"""Stage 2, `w2s train`: WSPO on a DeepSpeed engine, streaming the logit cache beside the policy's forwards.

Reads top to bottom: `setup()` checks the cache against the policy, loads the models (the weak pair only in
`online` mode, the reference only when the cache lacks it) and the DeepSpeed engine, and restores a checkpoint
when one is there; `train()` is a plain loop of micro-batches and optimiser steps; `finish()` saves the final
Hugging Face model, the curves and a summary. One process on a CPU by default; `deepspeed`, `torchrun`,
`accelerate launch` or `scripts/slurm_train.sbatch` launch many processes and nodes with the same command.
DeepSpeed's settings, the policy's loading (into ZeRO-3 partitions) and metrics across ranks are in
`w2s.train.engine`.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import deepspeed
import torch
from tqdm import tqdm

from w2s.cache.store import Cache
from w2s.errors import ConfigError
from w2s.io import atomic_write_json
from w2s.logprobs import target_logprobs
from w2s.models import load_tokenizer, save_tokenizer
from w2s.provenance import model_fingerprint
from w2s.runs import RunFolder, claim
from w2s.schedule import cosine_lr
from w2s.train import checkpoints
from w2s.train.checks import check_cache, check_weak_models
from w2s.train.config import TrainConfig
from w2s.train.engine import (
    deepspeed_settings,
    frozen,
    init_distributed,
    load_policy,
    mean_over_ranks,
    model_dtype,
    read_json,
)
from w2s.train.guards import (
    check_finite,
    check_reference_batch,
    check_reference_fingerprint,
    check_terms,
    local_grad_norm,
)
from w2s.train.losses import describe_loss
from w2s.train.metrics import MetricsLog, rewind_metrics, summarise
from w2s.train.reader import CacheReader, Position, default_fields

STORAGE_TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16}
"""Torch dtypes of the low-precision storage dtypes, to round the policy's log-probs as the cache rounded its own."""


@dataclass
class Run:
    """What the loop needs, made by `setup()`."""

    config: TrainConfig
    out_dir: Path
    engine: object
    reader: CacheReader
    tokenizer: object
    provenance: dict
    total_steps: int
    reference: torch.nn.Module | None = None
    weak: dict = field(default_factory=dict)
    step: int = 0
    position: Position = field(default_factory=Position)
    manifest: dict = field(default_factory=dict)
    ref_source: str = "model"
    """Where the reference log-probs come from: 'cache', 'model' (a frozen copy) or 'adapters_off' (LoRA)."""
    last_checkpoint: str | None = None
    folder: RunFolder | None = None
    """The claimed output folder (rank 0; None on the other ranks), holding its lock until the run ends."""
    done: bool = False
    """This very run finished before (its done marker is there): nothing to do."""
    loss: object = None
    """The `train.loss` component, called on each micro-batch (`w2s.train.losses.LOSSES`)."""


def cosine_schedule(total_steps: int, warmup_ratio: float):
    """A LambdaLR factory for DeepSpeed: the project's one warm-up + cosine schedule, as a multiplier of lr."""
    warmup = max(1, int(total_steps * warmup_ratio))
    factor = functools.partial(_cosine_factor, total=total_steps, warmup=warmup)
    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _cosine_factor(step: int, total: int, warmup: int) -> float:
    return cosine_lr(step, total, 1.0, warmup)


NOT_PROVENANCE = ("out_dir", "gamma", "gammas", "sweep", "save_every", "log_every", "keep_checkpoints")
NOT_PROVENANCE += ("save_final_checkpoint", "verify_cache")
"""Settings that change what a run writes or checks, never its result: a rerun may change them and resume."""


def run_provenance(config: TrainConfig, manifest: dict) -> dict:
    """What makes a checkpoint: the cache's provenance and the settings that change the result."""
    settings = {k: v for k, v in asdict(config).items() if k not in NOT_PROVENANCE}
    return {"cache": manifest["provenance"], "cache_totals": manifest["totals"], "train": settings}


def setup(config: TrainConfig) -> Run:
    """Checks inputs, loads models and engine, and resumes from the last checkpoint of the same run."""
    if config.deepspeed_config:
        read_json(config.deepspeed_config)  # a missing or broken JSON is refused before anything starts
    init_distributed()
    rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    settings = deepspeed_settings(config, world_size)
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer("policy", config.policy)
    cache = Cache.open(config.cache_dir)  # the one read of manifest.json
    cross = bool(cache.provenance.get("cross_tokenizer"))  # the cache holds strong ids and per-chunk weak ratios
    if cross and config.mode == "online":
        raise ConfigError(
            f"train.mode=online is not supported with the cross-tokenizer cache {config.cache_dir} (the weak pair "
            "would have to score the policy's tokens, which are not its own): use train.mode=cached"
        )
    check_cache(cache, tokenizer, config.policy, config.check_rows, config.verify_cache)
    manifest = cache.manifest
    cached_ref = reference_source(config, manifest) == "cache"
    fields = default_fields(cached_ref, cross_tokenizer=True) if cross else default_fields(cached_ref)
    fields = fields if config.mode == "cached" else ()
    reader = CacheReader(
        cache, config.cache_format, config.seed, rank, world_size, config.micro_batch_size, config.block_shards, fields
    )
    per_epoch = reader.steps_per_epoch() // config.grad_accum
    if per_epoch == 0:
        raise ConfigError(
            f"{config.cache_dir}: {reader.rows} rows are fewer than one optimiser step needs "
            f"({reader.global_batch * config.grad_accum})"
        )
    total_steps = min(config.max_steps or per_epoch * config.epochs, per_epoch * config.epochs)
    folder = claim_folder(config, run_provenance(config, manifest))  # inputs checked; nothing loaded yet
    model = load_policy(config, settings)
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=settings,
        lr_scheduler=cosine_schedule(total_steps, config.warmup_ratio),
    )
    skip_lone_allreduce(engine, world_size)
    run = Run(config, Path(config.out_dir), engine, reader, tokenizer, run_provenance(config, manifest), total_steps)
    run.loss = config.loss_component()
    run.folder = folder
    attach_reference_and_weak(run, manifest)
    resume(run)
    return run


def skip_lone_allreduce(engine, world_size: int) -> None:
    """With one process and ZeRO stage 0, turns off DeepSpeed's gradient all-reduce after backward: it would
    flatten every gradient, all-reduce it over gloo with nobody and divide by 1 (215-478 ms a step at 135M).
    ZeRO stages 1-3 move gradients into their partitions in that same call, so they keep it; so does any run of
    more than one process."""
    if world_size == 1 and engine.zero_optimization_stage() == 0:
        engine.enable_backward_allreduce = False


def reference_source(config: TrainConfig, manifest: dict) -> str:
    """Where reference log-probs come from: 'cache', 'adapters_off' (LoRA) or 'model' (a frozen copy)."""
    if config.mode == "cached" and config.use_cached_ref and "strong_ref" in manifest["provenance"]["models"]:
        return "cache"
    return "adapters_off" if config.lora else "model"


def attach_reference_and_weak(run: Run, manifest: dict) -> None:
    """Picks the reference (cached log-probs, LoRA with adapters off, or a frozen copy) and, online, the weak pair."""
    config, device = run.config, run.engine.device
    run.manifest = manifest
    models = manifest["provenance"]["models"]
    run.ref_source = reference_source(config, manifest)
    if run.ref_source == "model":
        run.reference = frozen("reference", config.policy, device, model_dtype(config.precision))
    if config.mode == "online":
        check_weak_models(manifest, config.cache_dir)  # the paths the manifest records must hold the same weights
        run.weak = {role: frozen(role, models[role]["name_or_path"], device) for role in ("weak_base", "weak_aligned")}


def claim_folder(config: TrainConfig, provenance: dict) -> RunFolder | None:
    """Rank 0 claims the output folder (`w2s.runs`): ours or new, outside the cache and the policy, one writer."""
    if not is_main():
        return None
    inputs = {"cache": config.cache_dir, "policy": config.policy}
    return claim(config.out_dir, "train", identity=provenance, inputs=inputs)


def resume(run: Run) -> None:
    """Rank 0 decides where the run starts and tells the others: done (every published file checks), the newest
    checkpoint of this run, or a fresh start that clears every artefact of an earlier attempt."""
    decision = [None, None]
    if is_main():
        checkpoints.remove_stale_temporaries(run.out_dir)
        folder = run.folder
        if folder.finished and folder.problems:  # damaged since it was published: redo it, never report it done
            print(f"w2s train: {folder.problems[0]}; redoing the run's end", file=sys.stderr)
            folder.reset([])
        latest = checkpoints.latest_checkpoint(run.out_dir)
        decision = [folder.marker.get("steps") if folder.done else None, latest]
        if not folder.done and latest is None:
            folder.reset(checkpoints.ARTEFACTS)  # a fresh start: nothing of a killed attempt is reported as ours
            atomic_write_json(run.out_dir / "provenance.json", run.provenance)
    if torch.distributed.get_world_size() > 1:
        torch.distributed.broadcast_object_list(decision, src=0)
    done_steps, latest = decision
    if done_steps is not None:
        run.step, run.done = done_steps, True
        return
    if latest is not None:
        tag, state = latest
        run.engine.load_checkpoint(str(run.out_dir / checkpoints.CHECKPOINTS), tag=tag)
        run.step, run.position = state["step"], Position(state["epoch"], state["consumed"])
        run.last_checkpoint = str(run.out_dir / checkpoints.CHECKPOINTS / tag)
        if is_main():
            rewind_metrics(run.out_dir, run.step)


def prove_reference(run: Run) -> None:
    """Before the first update, proves that the cached reference is the policy (unless told to accept another)."""
    if run.step > 0 or run.ref_source != "cache" or run.config.accept_other_ref:
        return
    check_reference_fingerprint(run.config.policy, model_fingerprint(run.config.policy), run.manifest)
    batch, _ = next(run.reader.micro_batches(run.position))
    batch = {k: v.to(run.engine.device) for k, v in batch.items()}
    with torch.no_grad():
        policy = sequence_logps(run.engine.module, batch)
    storage = run.reader.cache.layout.dtype
    if storage in STORAGE_TORCH:  # the cache rounded its reference to storage: round the policy the same way
        policy = policy.to(STORAGE_TORCH[storage]).float()
    check_reference_batch(
        policy,
        batch["logp_strong_ref"],
        batch["mask"],
        run.manifest["provenance"]["model_dtype"],
        run.config.policy,
        run.manifest["provenance"]["models"]["strong_ref"]["name_or_path"],
        precision=(run.config.precision, str(model_dtype(run.config.precision)).removeprefix("torch.")),
    )


def sequence_logps(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Per-target-token log-probs of a model on a batch, `[batch, seq - 1]`, on response tokens (0 elsewhere).

    Only response positions (`mask`) reach the output layer, chunk by chunk (`w2s.logprobs`): the loss never
    holds `[batch, seq, vocab]` logits, in the forward or the backward.
    """
    return target_logprobs(model, batch["input_ids"], batch["attention_mask"], scored=batch["mask"] > 0)


def batch_terms(run: Run, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Policy log-probs (with grad), reference log-probs and weak ratios for one micro-batch."""
    policy = sequence_logps(run.engine, batch)
    with torch.no_grad():
        if run.ref_source == "cache":
            ref = batch["logp_strong_ref"]
        elif run.ref_source == "adapters_off":  # LoRA's reference is the base model: the same weights, adapters off
            with run.engine.module.disable_adapter():
                ref = sequence_logps(run.engine.module, batch)
        else:
            ref = sequence_logps(run.reference, batch)
        if run.weak:
            weak = sequence_logps(run.weak["weak_aligned"], batch) - sequence_logps(run.weak["weak_base"], batch)
        else:
            weak = batch["weak_log_ratio"]
    return policy, ref.float(), weak.float()


def term_sources(run: Run, policy, ref, weak) -> dict[str, tuple[torch.Tensor, str]]:
    """Each WSPO term with where it came from, for the refusal of a non-finite one."""
    config = run.config
    ref_from = f"the reference model at {config.policy}"
    if run.ref_source == "cache":
        ref_from = f"the cache {config.cache_dir} (logp_strong_ref)"
    weak_from = f"the cache {config.cache_dir} (weak_log_ratio)"
    if run.weak:
        weak_from = "the weak pair at " + ", ".join(model.name_or_path for model in run.weak.values())
    return {
        "policy": (policy.detach(), f"the policy at {config.policy}"),
        "reference": (ref, ref_from),
        "weak log-ratio": (weak, weak_from),
    }


def micro_batches(run: Run):
    """Micro-batches from the saved position on, across epochs, each with the position after it."""
    position = run.position
    while position.epoch < run.config.epochs:
        yield from run.reader.micro_batches(position)
        position = Position(position.epoch + 1, 0)


def optimiser_step(run: Run, stream) -> dict:
    """grad_accum micro-batches and one optimiser step; stops the run on a non-finite loss or gradient."""
    config, sums, read_seconds, before = run.config, {}, 0.0, None
    for _ in range(config.grad_accum):
        tick = time.perf_counter()
        batch, run.position = next(stream)
        batch = {k: v.to(run.engine.device) for k, v in batch.items()}
        read_seconds += time.perf_counter() - tick
        policy, ref, weak = batch_terms(run, batch)
        check_terms(run.step + 1, term_sources(run, policy, ref, weak), run.last_checkpoint)
        loss, metrics = run.loss(policy, ref, {**batch, "weak_log_ratio": weak})  # the train.loss component
        check_finite(run.step + 1, loss.item(), None, run.last_checkpoint)  # before backward: nothing applied yet
        run.engine.backward(loss)
        if run.engine.is_gradient_accumulation_boundary():
            before = local_grad_norm(run.engine)  # ZeRO 0 keeps p.grad until the step clears it
        run.engine.step()
        for key, value in {"loss": loss.item(), **metrics}.items():
            sums[key] = sums.get(key, 0.0) + value / config.grad_accum
    after = run.engine.get_global_grad_norm()  # measured by DeepSpeed when it clips
    check_finite(run.step + 1, sums["loss"], after if after is not None else before, run.last_checkpoint)
    sums["read_seconds"] = read_seconds
    return mean_over_ranks(sums)  # every rank's step, not rank 0's alone


def train(run: Run) -> MetricsLog:
    """The loop: one optimiser step at a time, metrics every step, checkpoints every N; returns the metrics."""
    config, log = run.config, MetricsLog(run.out_dir, enabled=is_main())
    stream = micro_batches(run)
    bar = tqdm(total=run.total_steps, initial=run.step, desc=describe_loss(config.loss), unit="step")
    while run.step < run.total_steps:
        started = time.perf_counter()
        sums = optimiser_step(run, stream)
        run.step += 1
        sums.update(
            step=run.step,
            lr=run.engine.get_lr()[0],
            epoch=run.position.epoch,
            consumed=run.position.consumed,
            step_seconds=time.perf_counter() - started,
        )
        log.write(sums, log_now=run.step % config.log_every == 0)
        bar.update(1)
        bar.set_postfix(loss=f"{sums['loss']:.4f}")
        if config.save_every and run.step % config.save_every == 0:
            save_checkpoint(run)
    bar.close()
    return log


def save_checkpoint(run: Run) -> None:
    state = {"step": run.step, "epoch": run.position.epoch, "consumed": run.position.consumed}
    checkpoints.save_checkpoint(run.engine, run.out_dir, state, run.config.keep_checkpoints, is_main())
    run.last_checkpoint = f"{run.out_dir / checkpoints.CHECKPOINTS / f'step-{run.step}'}"


def write_final(run: Run, folder: Path, gathered: dict | None) -> None:
    """The trained model as a Hugging Face folder (LoRA adapters merged), its tokenizer and provenance."""
    model = run.engine.module.merge_and_unload() if run.config.lora else run.engine.module
    model.save_pretrained(folder, state_dict=gathered)
    save_tokenizer(run.tokenizer, folder)  # a full disk is one OSError line, whatever the tokenizer library raises
    atomic_write_json(folder / "w2s_provenance.json", run.provenance)


def finish(run: Run) -> dict:
    """`final/` (whole or absent), curves and a summary, then the done marker, last; a final DeepSpeed checkpoint
    (optimizer state included) only when `save_final_checkpoint` asks for one and the schedule did not just save."""
    saved_now = run.config.save_every and run.step % run.config.save_every == 0
    if run.config.save_final_checkpoint and not saved_now:
        save_checkpoint(run)
    # every rank takes part in gathering ZeRO-3 weights; only rank 0 writes
    gathered = run.engine._zero3_consolidated_16bit_state_dict() if run.engine.zero_optimization_stage() == 3 else None
    if not is_main():
        return {}
    checkpoints.publish_final(run.out_dir, lambda folder: write_final(run, folder, gathered))
    summary = summarise(run.out_dir, run.config.loss)
    checkpoints.mark_done(run.out_dir, run.provenance, run.step)
    run.folder.marker["steps"] = run.step
    run.folder.finish(checkpoints.PUBLISHED)  # last: the sha256 of every published file, checked by a rerun
    return summary


def is_main() -> bool:
    return torch.distributed.get_rank() == 0


def is_main_process() -> bool:
    """Rank 0 before torch.distributed is set up (launchers set RANK)."""
    return int(os.environ.get("RANK", "0")) == 0


def run_one(config: TrainConfig) -> dict:
    run = setup(config)
    try:
        if run.done:
            return {"out_dir": str(run.out_dir), "steps": run.step, "already_done": True}
        prove_reference(run)
        train(run)
        return finish(run)
    finally:
        if run.folder is not None:
            run.folder.release()


def run(config: TrainConfig) -> list[dict]:
    """`w2s train`: one run, or one per value of `sweep` (a loss parameter), each in its own folder, all on the
    same cache."""
    if not config.sweep:
        return [run_one(config)]
    if is_main_process():  # the sweep's folder is claimed too: its <parameter>-<value>/ runs go only into ours
        claim(config.out_dir, "train", identity={"sweep": True}, lock=None)
    return [run_one(one) for one in config.runs()]
