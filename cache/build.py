"""Stage 1, `w2s cache`: scores a dataset's responses under the weak pair and writes the sharded store.

Reads top to bottom: `setup()` validates and tokenises every row and loads the scorers; `build_cache()` then
loops over this worker's shards, skipping those the ledger shows finished, and writes the manifest last.

Resume, the check of a finished cache on a rerun, and the lock that keeps two runs of one worker apart live in
`w2s.cache.ledger`. Shards are deterministic (rows sorted by length within a shard, fixed batches), so a resumed
or repaired store is byte-identical to an uninterrupted one.

Nothing is written, and the output folder is not even created, until every row is validated and every model
loaded: a refused run leaves no trace.

Scale-out: shard c (rows [c*R, (c+1)*R)) belongs to worker c % num_shards. With one worker the manifest is
written at once; with several, each writes a part manifest and `w2s cache merge` joins them.

Cross-tokenizer: the weak pair shares one tokenizer; when the strong model's (strong_ref's, else
`cache.strong_tokenizer`) has another fingerprint, every row is also tokenised the strong way and aligned
(`w2s.data.strong_side`), and `score_shard` stores the weak pair's chunk sums in strong-token space (the
layout: `w2s.schemas.cache`). With the same fingerprint nothing differs from a build without a strong tokenizer.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from tqdm import tqdm

from w2s.align import chunk_sums
from w2s.cache.backends import Scorer, TransformersScorer, make_scorer, run_side_by_side
from w2s.cache.config import CacheConfig
from w2s.cache.formats import formats_for
from w2s.cache.job import CacheJob, model_paths
from w2s.cache.ledger import (
    claim_folder,
    ledger_path,
    manifest_name,
    remove_stale_temporaries,
    resume_point,
    save_ledger,
)
from w2s.cache.manifest import MANIFEST, cache_layout, file_entry, manifest_body, shard_entry
from w2s.cache.portable import STRONG_TOKENIZER_DIR, TOKENIZER_DIR, absolute_paths, save_tokenizer_copy
from w2s.data import Row, StrongSide, encode_rows, load_rows, locate
from w2s.device import side_by_side_threads
from w2s.errors import CacheMismatch, ConfigError, DataError
from w2s.io import atomic_write_json, sha256_file
from w2s.models import ModelError, load_model_config, load_tokenizer
from w2s.provenance import WEIGHT_SUFFIXES, code_version, model_fingerprints, tokenizer_fingerprint
from w2s.schemas.cache import STRONG_CHUNK_FIELD, ShardData, shard_name
from w2s.vllm_engine import resolve_backend


def load_shared_tokenizer(paths: dict[str, str]):
    """The weak pair's shared tokenizer and its fingerprint; refuses models whose tokenizers differ, naming them.
    Folders whose every file but the weights is byte for byte the same load one tokenizer, fingerprinted once:
    loading reads nothing else, so it would build the same one again (about 0.6 s for SmolLM2's)."""
    sources = {role: tokenizer_source(path) for role, path in paths.items()}
    tokenizers: dict = {}
    for role, path in paths.items():
        twin = next((other for other in tokenizers if sources[other] and sources[other] == sources[role]), None)
        tokenizers[role] = tokenizers[twin] if twin else load_tokenizer(role, path)
    prints: dict[str, str] = {}
    for role, tokenizer in tokenizers.items():
        twin = next((other for other in prints if tokenizers[other] is tokenizer), None)
        prints[role] = prints[twin] if twin else tokenizer_fingerprint(tokenizer)
    first = next(iter(prints))
    differ = [role for role in prints if prints[role] != prints[first]]
    if differ:
        names = ", ".join(f"{role} ({paths[role]})" for role in differ)
        raise CacheMismatch(
            f"the tokenizer of {names} differs from that of {first} ({paths[first]}): the weak pair's token-level "
            "log-ratios need one shared tokenizer"
        )
    return tokenizers[first], prints[first]


def tokenizer_source(path: str) -> str | None:
    """sha256 of every file of a local model folder but its weights (what loading its tokenizer can read: the
    tokenizer files, chat template, config); None for a hub id."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    files = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix not in WEIGHT_SUFFIXES)
    return hashlib.sha256("".join(f"{f.relative_to(folder)}:{sha256_file(f)};" for f in files).encode()).hexdigest()


def load_strong_tokenizer(config: CacheConfig):
    """The strong model's tokenizer and its fingerprint: strong_ref's when it is cached, else
    `cache.strong_tokenizer`'s; (None, None) when neither is set.

    Raises:
        ConfigError: strong_tokenizer set beside a strong_ref whose tokenizer differs from it.
    """
    sources = [(role, getattr(config, role)) for role in ("strong_ref", "strong_tokenizer") if getattr(config, role)]
    loaded = [(role, path, load_tokenizer(role, path)) for role, path in sources]
    prints = [tokenizer_fingerprint(tokenizer) for *_, tokenizer in loaded]
    if len(set(prints)) > 1:
        raise ConfigError(
            f"cache.strong_tokenizer={config.strong_tokenizer} differs from the tokenizer of strong_ref "
            f"({config.strong_ref}): leave strong_tokenizer empty when strong_ref is cached"
        )
    return (loaded[0][2], prints[0]) if loaded else (None, None)


def make_provenance(
    config: CacheConfig,
    tokenizer,
    tokenizer_sha: str,
    dataset_fingerprint: str,
    rows: list[Row],
    strong_tokenizer_sha: str | None = None,
) -> dict:
    """What made this cache: models, tokenizer(s), dataset, settings and code. `strong_tokenizer_sha`: the strong
    tokenizer's fingerprint in a cross-tokenizer cache (recorded, with `cross_tokenizer`, only there)."""
    paths = model_paths(config)
    cross = {"strong_tokenizer_sha256": strong_tokenizer_sha, "cross_tokenizer": True} if strong_tokenizer_sha else {}
    return {
        "models": model_fingerprints(paths),
        "tokenizer_sha256": tokenizer_sha,
        **cross,
        "chat_template": getattr(tokenizer, "chat_template", None) if config.use_chat_template else None,
        "dataset": {
            "source": config.data.path,
            "split": config.data.split,
            "fingerprint": dataset_fingerprint,
            "fields": config.data.field_names(),
            "rows": len(rows),
        },
        "backend": resolve_backend(config.backend),
        "model_dtype": config.model_dtype,
        "storage_dtype": config.storage_dtype,
        # recorded only when compact, so that a full cache's provenance (and a rerun's check of it) is unchanged
        **({"store": config.store} if config.store != "full" else {}),
        "format": config.format,
        "max_len": config.max_len,
        "truncation": config.truncation,
        "truncated_rows": sum(row.truncated for row in rows),
        "rows_per_shard": config.rows_per_shard,
        "num_shards": config.num_shards,
        "code_version": code_version(),
    }


def check_models_fit(config: CacheConfig, rows: list[Row], dataset, models: dict) -> None:
    """Refuses what would score nonsense without an error: a weak pair that is one model (every log-ratio 0), and
    a row longer than a model's positions (transformers would score past them without a word).

    Raises:
        ConfigError: the weak pair's weights are the same.
        DataError: naming the longest row's file and line, the model's role and its positions.
    """
    prints = {role: models[role]["weights_sha256"] for role in ("weak_base", "weak_aligned")}
    if prints["weak_base"] == prints["weak_aligned"]:
        raise ConfigError(
            f"cache.weak_aligned ({config.weak_aligned}) has the same weights as cache.weak_base ({config.weak_base}): "
            "every weak log-ratio would be 0; name the aligned model"
        )
    for role, path in model_paths(config).items():
        positions = getattr(load_model_config(role, path), "max_position_embeddings", None)
        side = (lambda row: row.strong.input_ids) if role == "strong_ref" and rows and rows[0].strong else None
        lengths = [len(side(row) if side else row.input_ids) for row in rows]
        if positions and lengths and max(lengths) > positions:
            longest = rows[lengths.index(max(lengths))]
            file, line = locate(dataset, config.data.path, longest.row_id)
            raise DataError(
                f"{file}: row {line}: {max(lengths)} tokens, more than the {role} model's {positions} positions "
                f"({path}); set cache.max_len={positions} with cache.truncation=true, or drop the row"
            )


def check_config(config: CacheConfig) -> None:
    """Refuses settings no build can use (an unknown format names the registered ones)."""
    config.check_installed()  # vLLM or Ray missing: refused before the rows are read
    formats_for(config.format)
    if not 0 <= config.shard_index < config.num_shards:
        raise ConfigError(f"cache.shard_index={config.shard_index} is outside [0, num_shards={config.num_shards})")
    if config.rows_per_shard < 1:
        raise ConfigError("cache.rows_per_shard must be at least 1")


def setup(config: CacheConfig, load_models: bool = True) -> CacheJob:
    """Validates the settings, reads and tokenises every row, fingerprints the inputs and loads the scorers.
    Local paths are made absolute first (`w2s.cache.portable`), so the manifest records where things are.

    Raises:
        DataError, CacheMismatch, ConfigError, ModelError: before anything is written.
    """
    check_config(config)
    config = absolute_paths(config)
    weak = {role: path for role, path in model_paths(config).items() if role != "strong_ref"}
    tokenizer, tokenizer_sha = load_shared_tokenizer(weak)
    strong, strong_sha = load_strong_tokenizer(config)
    strong = strong if strong_sha not in (None, tokenizer_sha) else None  # the same tokenizer: as if none was set
    if strong is not None and config.truncation:
        raise ConfigError(
            f"cache.truncation=true is not supported when the strong tokenizer "
            f"({config.strong_ref or config.strong_tokenizer}) differs from the weak pair's: set truncation=false "
            "(and max_len high enough)"
        )
    dataset, fingerprint = load_rows(config.data.path, config.data.split)
    fields, settings = config.data.field_names(), (config.max_len, config.truncation, config.use_chat_template)
    rows = encode_rows(dataset, config.data.path, tokenizer, fields, *settings, strong)
    cross_sha = strong_sha if strong is not None else None
    provenance = make_provenance(config, tokenizer, tokenizer_sha, fingerprint, rows, cross_sha)
    check_models_fit(config, rows, dataset, provenance["models"])
    num_shards_total = -(-len(rows) // config.rows_per_shard)
    my_shards = [c for c in range(num_shards_total) if c % config.num_shards == config.shard_index]
    job = CacheJob(config, Path(config.out_dir), rows, provenance, my_shards, cache_layout(config, provenance))
    job.tokenizer, job.strong_tokenizer = tokenizer, strong
    if load_models:
        job.scorers = load_scorers(config, provenance["backend"])
    return job


def load_scorers(config: CacheConfig, backend: str) -> dict[str, Scorer]:
    """One scorer per model role, on `backend` (loads the models: once per process, or per Ray actor)."""
    paths = model_paths(config)
    return {role: make_scorer(config, role, path, len(paths), backend) for role, path in paths.items()}


def strong_space(values: np.ndarray, side: StrongSide) -> np.ndarray:
    """A weak per-token field of one row, `[weak response tokens]`, in strong-token space, `[strong response
    tokens]`: each chunk's sum (`w2s.align.chunk_sums`) at the chunk's last strong token, 0.0 at its others."""
    chunk_of = np.asarray(side.chunk_of)
    last = np.append(chunk_of[1:] != chunk_of[:-1], True)  # [strong response tokens]: a chunk ends here
    placed = np.zeros(len(chunk_of), np.float32)
    placed[last] = chunk_sums(values, side.weak_chunk, side.num_chunks)[chunk_of[last]]
    return placed


def score_roles(job: CacheJob, weak_rows: list, strong_rows: list) -> dict[str, list[np.ndarray]]:
    """Each scorer's response log-probs: the weak pair on the weak ids, the strong reference on the strong ids;
    side by side on a CPU (`CacheConfig.side_by_side`), else in turn."""

    def score(role: str) -> list[np.ndarray]:
        rows = strong_rows if role == "strong_ref" else weak_rows
        return job.scorers[role].response_logprobs([row.input_ids for row in rows], [row.prompt_len for row in rows])

    devices = {getattr(scorer, "device", "") for scorer in job.scorers.values()}
    local = all(isinstance(scorer, TransformersScorer) for scorer in job.scorers.values())
    device = devices.pop() if len(devices) == 1 and local else ""
    threads = side_by_side_threads(job.config.side_by_side, device, len(job.scorers), torch.get_num_threads())
    if not threads:
        return {role: score(role) for role in job.scorers}
    return run_side_by_side(score, list(job.scorers), threads)


def check_finite(job: CacheJob, shard_rows: list[Row], logps: dict[str, list[np.ndarray]]) -> None:
    """Refuses a shard in which a model gave a non-finite log-prob (NaN weights, a float16 overflow, a token the
    model gives probability 0): such a value would be published, verified and trained on as if it were a target."""
    for role, per_row in logps.items():
        for row, values in zip(shard_rows, per_row):
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                raise ModelError(
                    f"the {role} model at {model_paths(job.config)[role]} gave a non-finite log-prob "
                    f"({values[bad[0]]}) at response token {bad[0]} of row {row.row_id} (example_id "
                    f"{row.example_id!r}) and at {bad.size - 1} more of its tokens; nothing of this shard was written: "
                    "check the model's weights (a model scored in float16 or bfloat16: try cache.model_dtype=float32)"
                )


def score_shard(job: CacheJob, shard_rows: list[Row]) -> ShardData:
    """Runs every scorer over one shard's rows and assembles the columnar shard (float32 arithmetic). The weak
    pair scores each row's weak ids; the strong reference, and what is stored, are the strong ids (the same ids
    unless the cache is cross-tokenizer: then the weak fields are moved to strong-token space, `strong_space`)."""
    strong = [row.strong or row for row in shard_rows]  # what is stored: a StrongSide, or the row itself
    sequences = [row.input_ids for row in strong]
    logps = score_roles(job, shard_rows, strong)
    check_finite(job, shard_rows, logps)
    base, aligned = logps["weak_base"], logps["weak_aligned"]
    ratios = [a - b for a, b in zip(aligned, base)]  # float32 - float32: stored ratio is exact before any down-cast
    weak_fields = {"logp_weak_base": base, "logp_weak_aligned": aligned, "weak_log_ratio": ratios}
    if job.layout.cross_tokenizer:
        weak_fields = {
            name: [strong_space(v, s) for v, s in zip(values, strong)] for name, values in weak_fields.items()
        }
        weak_fields[STRONG_CHUNK_FIELD] = [np.asarray(row.chunk_of, np.int32) for row in strong]
    token_values = {name: np.concatenate(per_row) for name, per_row in weak_fields.items()}
    if "strong_ref" in logps:
        token_values["logp_strong_ref"] = np.concatenate(logps["strong_ref"])
    response_len = np.array([len(r) for r in weak_fields["weak_log_ratio"]], dtype=np.int32)
    prompt_lens = [row.prompt_len for row in strong]
    return ShardData(
        row_id=np.array([row.row_id for row in shard_rows], dtype=np.int64),
        example_id=[row.example_id for row in shard_rows],
        input_ids=np.concatenate([np.asarray(s, dtype=np.int32) for s in sequences]),
        input_offsets=np.concatenate([[0], np.cumsum([len(s) for s in sequences])]).astype(np.int64),
        prompt_len=np.array(prompt_lens, dtype=np.int32),
        response_len=response_len,
        weak_seq_reward=np.array([r.sum(dtype=np.float32) for r in ratios], dtype=np.float32),
        token_values=token_values,
        offsets=np.concatenate([[0], np.cumsum(response_len)]).astype(np.int64),
    )


def write_shard(job: CacheJob, index: int, shard: ShardData) -> dict:
    """Writes one shard in each configured format (through the registry); returns its manifest entry."""
    files = {}
    for fmt in formats_for(job.config.format):
        path = job.out_dir / shard_name(index, fmt.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt.write(shard, path, job.layout)
        files[fmt.name] = file_entry(path)
    return shard_entry(
        index,
        row_start=int(shard.row_id[0]),
        rows=shard.num_rows,
        tokens=int(shard.input_offsets[-1]),
        response_tokens=shard.num_tokens,
        files=files,
    )


def rows_of_shard(job: CacheJob, index: int) -> list[Row]:
    """Shard c holds rows [c * R, (c + 1) * R) of the dataset."""
    return job.rows[index * job.config.rows_per_shard : (index + 1) * job.config.rows_per_shard]


def build_cache(job: CacheJob) -> dict:
    """Scores and writes this worker's shards, resuming where a killed run stopped and redoing the shards of a
    finished cache that no longer check; writes the manifest last.

    Returns:
        The manifest, with `seconds`, `scored_now` (shards scored by this run), `checked` (shards of a finished
        cache found here and checked) and `redone` (their indices that were missing or corrupt).

    Raises:
        FolderRefused: the folder is not a cache of these inputs (refused before anything is written), or another
            run of this worker is writing there (`FolderBusy`).
        CacheMismatch: a ledger or manifest there that w2s cannot read.
    """
    with claim_folder(job) as folder:
        body = _build_locked(job)
        if job.config.num_shards == 1:  # with several workers, `w2s cache merge` publishes the manifest
            folder.finish(
                [MANIFEST, TOKENIZER_DIR, *([STRONG_TOKENIZER_DIR] if job.strong_tokenizer is not None else [])]
            )
        return body


def _build_locked(job: CacheJob) -> dict:
    """`build_cache` once this worker's lock is held: nothing else writes this worker's files meanwhile."""
    started = time.time()
    remove_stale_temporaries(job)  # under the lock: any temporary of this worker's shards is a dead run's
    resume = resume_point(job)
    if resume.finished is not None:
        publish_extras(job)
        return {**resume.finished, "seconds": 0.0, "scored_now": 0, "checked": resume.checked, "redone": []}
    done = resume.done
    todo = [c for c in job.my_shards if c not in done]
    bar = tqdm(
        total=sum(len(rows_of_shard(job, c)) for c in job.my_shards),
        initial=sum(done[c]["rows"] for c in done if c in job.my_shards),
        desc="cache rows",
        unit="row",
    )
    for index in todo:
        shard_rows = rows_of_shard(job, index)
        done[index] = write_shard(job, index, score_shard(job, shard_rows))
        save_ledger(job, done)
        bar.update(len(shard_rows))
    bar.close()
    body = finish(job, done)
    elapsed = time.time() - started
    return {**body, "seconds": elapsed, "scored_now": len(todo), "checked": resume.checked, "redone": resume.redone}


def publish_extras(job: CacheJob) -> None:
    """What a cache keeps beside its shards: a copy of the tokenizer, and of the strong one in a cross-tokenizer
    cache (`w2s.cache.portable`)."""
    if job.tokenizer is not None:
        save_tokenizer_copy(job.tokenizer, job.out_dir)
    if job.strong_tokenizer is not None:
        save_tokenizer_copy(job.strong_tokenizer, job.out_dir, STRONG_TOKENIZER_DIR)


def finish(job: CacheJob, done: dict[int, dict]) -> dict:
    """Writes this worker's manifest over its finished shards (last, atomically) and drops its ledger."""
    publish_extras(job)
    body = manifest_body(job.provenance, [done[c] for c in job.my_shards], job.config)
    atomic_write_json(job.out_dir / manifest_name(job.config), body)
    ledger_path(job).unlink(missing_ok=True)
    return body


def print_summary(job: CacheJob, body: dict, engine: str = "") -> None:
    """What was built: rows, tokens, shards, how long, and bytes per response token of each store."""
    console = Console()
    if body["checked"]:
        redone = body["redone"]
        which = f", redone: shard{'s' * (len(redone) > 1)} {', '.join(map(str, redone))}" if redone else ""
        console.print(f"checked the finished cache: {body['checked']} shards, {len(redone)} missing or corrupt{which}")
    tokens = max(1, body["totals"]["response_tokens"])
    sizes = ", ".join(
        f"{fmt.name} {sum(s['files'][fmt.name]['bytes'] for s in body['shards']) / tokens:.1f}"
        for fmt in formats_for(job.config.format)
    )
    config = job.config
    written = "cache written" if config.num_shards == 1 else f"part {config.shard_index} of {config.num_shards} written"
    console.print(
        f"[green]{written}[/green] to {job.out_dir}: {body['totals']['rows']} rows, "
        f"{body['totals']['response_tokens']} response tokens in {len(body['shards'])} shards "
        f"({body['scored_now']} scored now) by {job.provenance['backend']}{engine} in {body['seconds']:.1f} s; "
        f"{job.layout.store} store, {job.layout.dtype}: {sizes} bytes per response token on disk"
    )
    if config.num_shards > 1:  # a part is not a cache: nothing reads it until the parts are merged
        console.print(f"once all {config.num_shards} parts are written: `w2s cache merge {job.out_dir}`")
