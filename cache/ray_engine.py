"""`w2s cache engine=ray`: one build's shards scored by a pool of Ray actors, on this machine or a cluster.

The driver (the process running `w2s cache`) does everything a single-process build does around the scoring:
it reads, validates and tokenises every row (`setup` without models), holds the worker's lock, keeps what the
ledger of a killed run recorded, records each finished shard in the ledger and writes the manifest last. The
actors (`ShardScorer`) each load the models once, then score shard after shard and write each through the same
atomic writer (`w2s.cache.build.write_shard`), so the store is byte-identical to one built in one process.

Faults: an actor whose process or node dies is restarted by Ray (`max_restarts`) and the shards it had in flight
are retried (`max_task_retries`), both `cache.ray_max_retries` times; a dead actor's half-written temporary is
removed before the manifest is written. A killed driver leaves its ledger: rerun the same command and the
recorded shards are kept. Ray is imported only here, and only for engine=ray.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from tqdm import tqdm

from w2s.cache.build import (
    finish,
    load_scorers,
    print_summary,
    publish_extras,
    rows_of_shard,
    score_shard,
    setup,
    write_shard,
)
from w2s.cache.config import CacheConfig
from w2s.cache.job import CacheJob
from w2s.cache.ledger import claim_folder, remove_stale_temporaries, resume_point, save_ledger
from w2s.cache.manifest import cache_layout
from w2s.cache.portable import published_files
from w2s.errors import ConfigError, UserError

INSTALL = "pip install 'w2s[ray]'"
IN_FLIGHT = 2
"""Shards queued on each actor, so that the next one is there the moment one is done."""

NO_POOL = {"actors": [], "restarts": 0}
"""The Ray report of a build that had nothing to score."""

OnShard = Callable[[int, int, int], None]
"""Called by the driver after each shard is recorded, with (shard index, actor slot, pid that scored it)."""


class RayJobFailed(UserError):
    """A shard failed on Ray past its retries (a node lost for good, an actor that cannot start); the ledger keeps
    the shards finished so far, and a rerun resumes."""


def import_ray():
    """The `ray` module; refuses, in one line, when Ray is not installed."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"cache.engine=ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


def cluster_address(config: CacheConfig) -> str | None:
    """The cluster to join: cache.ray_address, else RAY_ADDRESS, else None (a local Ray started for this run)."""
    return config.ray_address or os.environ.get("RAY_ADDRESS") or None


def connect(config: CacheConfig) -> bool:
    """Joins (or starts) the Ray cluster unless this process is already connected; True when it joined here."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    address = cluster_address(config)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="warning")
    except (ConnectionError, ValueError, RuntimeError) as err:
        why = " ".join(str(err).split())[:300]
        raise ConfigError(f"cache.ray_address={address}: cannot join a Ray cluster there: {why}") from None
    return True


def actor_resources(config: CacheConfig, backend: str, cluster: dict[str, float], threads: int = 1) -> dict:
    """What one scoring actor asks Ray for: `tensor_parallel_size` GPUs for vLLM, or one GPU for the transformers
    backend when the cluster has GPUs, with one CPU; on no GPU (device=cpu, or a cluster without GPUs), the
    `threads` CPUs its torch threads use.

    Raises:
        ConfigError: the backend or device needs more GPUs than the cluster has.
    """
    present = cluster.get("GPU", 0)
    if backend == "vllm":
        gpus = config.tensor_parallel_size
    elif config.device == "cpu":
        gpus = 0
    else:
        gpus = 1 if present >= 1 or config.device.startswith("cuda") else 0
    if gpus > present:
        raise ConfigError(
            f"cache.engine=ray: backend {backend} on device {config.device} needs {gpus} GPU(s) per actor, "
            f"and the Ray cluster has {present:g}"
        )
    return {"num_cpus": 1 if gpus else threads, "num_gpus": gpus}


def pool_size(config: CacheConfig, resources: dict[str, float], cluster: dict[str, float], shards: int) -> int:
    """Actors to start: cache.ray_actors (0: as many as fit), never more than the cluster's CPUs (and GPUs) hold at
    once (an actor that cannot be placed would hold its shards forever), nor more than the shards."""
    fits = int(cluster.get("CPU", 1) // max(resources["num_cpus"], 1))
    if resources["num_gpus"]:
        fits = min(fits, int(cluster.get("GPU", 0) // resources["num_gpus"]))
    return max(1, min(config.ray_actors or fits, fits, shards))


_PROCESS = {"model_loads": 0, "shards": 0}
"""What this process did as an actor (an actor's process serves that actor alone)."""


class ShardScorer:
    """A Ray actor's work: loads the models once, at its start, then scores and writes shard after shard.

    It runs torch on the driver's thread count: a CPU matmul's sums depend on how many threads split them, and
    with the same count the actor's values are, bit for bit, those a single-process build would store."""

    def __init__(self, config: CacheConfig, provenance: dict, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.job = CacheJob(config, Path(config.out_dir), [], provenance, [], cache_layout(config, provenance))
        self.error: UserError | None = None
        try:
            self.job.scorers = load_scorers(config, provenance["backend"])
            _PROCESS["model_loads"] += 1
        except UserError as err:  # e.g. a model folder this node cannot see: refused with the first shard
            self.error = err

    def score(self, index: int, rows: list) -> tuple[dict, int]:
        """Scores shard `index` (its rows), writes it atomically; returns its manifest entry and this pid."""
        if self.error is not None:
            raise self.error
        entry = write_shard(self.job, index, score_shard(self.job, rows))
        _PROCESS["shards"] += 1
        return entry, os.getpid()

    def stats(self) -> dict:
        """This actor's pid, how many times its process loaded the models, and how many shards it scored."""
        return {"pid": os.getpid(), **_PROCESS}


def start_pool(job: CacheJob, size: int, resources: dict[str, float], threads: int) -> list:
    """`size` ShardScorer actors, restarted (and their shards in flight retried) up to ray_max_retries times."""
    ray = import_ray()
    retries = job.config.ray_max_retries
    actor = ray.remote(ShardScorer).options(**resources, max_restarts=retries, max_task_retries=retries)
    return [actor.remote(job.config, job.provenance, threads) for _ in range(size)]


def _result(ray, ref, index: int):
    """A finished shard's (entry, pid); a refusal raised on an actor comes back as the same one line."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, UserError):
            raise err.cause from None
        raise
    except ray.exceptions.RayError as err:  # the actor died past its restarts, or its node is gone
        why = " ".join(str(err).split())[:200]
        raise RayJobFailed(f"shard {index} failed on Ray past its retries ({why}); rerun to resume") from None


def score_on_pool(job: CacheJob, pool: list, todo: list[int], done: dict, on_shard: OnShard | None = None) -> dict:
    """Scores the shards `todo` on `pool`, recording each in `done` and the ledger as it comes back, under one
    progress bar; returns the pids each actor slot scored with (more than one: it was restarted)."""
    ray = import_ray()
    queue, pending = list(todo), {}
    pids: dict[int, set[int]] = {slot: set() for slot in range(len(pool))}

    def submit(slot: int) -> None:
        if queue:
            index = queue.pop(0)
            pending[pool[slot].score.remote(index, rows_of_shard(job, index))] = (slot, index)

    for _ in range(IN_FLIGHT):
        for slot in range(len(pool)):
            submit(slot)
    kept = len(job.my_shards) - len(todo)
    with tqdm(total=len(job.my_shards), initial=kept, desc="cache shards (ray)", unit="shard") as bar:
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            slot, index = pending.pop(ready)
            done[index], pid = _result(ray, ready, index)
            save_ledger(job, done)
            bar.update(1)
            pids[slot].add(pid)
            submit(slot)
            if on_shard is not None:
                on_shard(index, slot, pid)
    return pids


def build_on_ray(job: CacheJob, on_shard: OnShard | None = None) -> dict:
    """`w2s.cache.build.build_cache` with the scoring on Ray (the caller has joined a cluster: `connect`).

    Returns:
        The manifest, with `seconds`, `scored_now`, `checked`, `redone` as `build_cache` gives them, and `ray`:
        each actor's final stats (pid, model loads, shards scored) and the restarts seen.
    """
    with claim_folder(job) as folder:
        started = time.time()
        remove_stale_temporaries(job)
        resume = resume_point(job)
        if resume.finished is not None:
            publish_extras(job)
            nothing = {"seconds": 0.0, "scored_now": 0, "checked": resume.checked, "redone": []}
            return {**resume.finished, **nothing, "ray": NO_POOL}
        done = resume.done
        todo = [c for c in job.my_shards if c not in done]
        report = _score(job, todo, done, on_shard) if todo else NO_POOL
        remove_stale_temporaries(job)  # what an actor killed mid-shard had begun to write
        body = finish(job, done)
        if job.config.num_shards == 1:
            folder.finish(published_files(job.out_dir))
    elapsed = time.time() - started
    extra = {"seconds": elapsed, "scored_now": len(todo), "checked": resume.checked, "redone": resume.redone}
    return {**body, **extra, "ray": report}


def _score(job: CacheJob, todo: list[int], done: dict, on_shard: OnShard | None) -> dict:
    """Starts the pool, scores `todo`, and stops the pool; returns the actors' stats and the restarts seen."""
    import torch

    ray = import_ray()
    cluster, threads = ray.cluster_resources(), torch.get_num_threads()  # the driver's: see ShardScorer
    resources = actor_resources(job.config, job.provenance["backend"], cluster, threads)
    pool = start_pool(job, pool_size(job.config, resources, cluster, len(todo)), resources, threads)
    try:
        pids = score_on_pool(job, pool, todo, done, on_shard)
        actors = ray.get([actor.stats.remote() for actor in pool])
    finally:
        for actor in pool:
            ray.kill(actor)
    return {"actors": actors, "restarts": sum(max(0, len(seen) - 1) for seen in pids.values()), "resources": resources}


def run_on_ray(config: CacheConfig, on_shard: OnShard | None = None) -> dict:
    """`w2s cache engine=ray`: setup on the driver, the shards on Ray, and a one-screen summary."""
    job = setup(config, load_models=False)
    joined_here = connect(config)
    try:
        body = build_on_ray(job, on_shard)
    finally:
        if joined_here:
            import_ray().shutdown()
    report = body["ray"]
    print_summary(job, body, engine=f" on {len(report['actors'])} Ray actors" if report["actors"] else "")
    if report["actors"]:
        loads = sum(a["model_loads"] for a in report["actors"])
        shards = ", ".join(str(a["shards"]) for a in report["actors"])
        Console().print(
            f"ray: {len(report['actors'])} actors, each asking {report['resources']}; models loaded {loads} times in "
            f"all, shards scored per actor: {shards}; {report['restarts']} actor restart(s) survived"
        )
    return body
