"""The logit cache's schema: the contract between stage 1 (cache) and stage 2 (train). Defined once, here.

A cache folder holds, for each shard c, `parquet/shard-{c:05d}.parquet` and/or `zarr/shard-{c:05d}.zarr/`,
and a `manifest.json` written last. Every row is one (prompt, response) example; every per-token field holds one value
per *response* token, the value at t being about token `input_ids[prompt_len + t]` given everything before it.

Parquet columns (one row per example):
    row_id             int64          global row number, dense from 0 in dataset order
    example_id         string         from the dataset, or derived from the row number
    input_ids          list<int32>    prompt + response (+ EOS) exactly as scored
    prompt_len         int32
    response_len       int32          len(input_ids) - prompt_len
    logp_weak_base     list<float>    log pi_w_base(y_t | x, y_<t)
    logp_weak_aligned  list<float>    log pi_w_aligned(y_t | x, y_<t)
    weak_log_ratio     list<float>    logp_weak_aligned - logp_weak_base (computed in float32, then stored)
    weak_seq_reward    float32        sum of weak_log_ratio (in float32, before any down-cast)
    logp_strong_ref    list<float>    log pi_ref(y_t | x, y_<t), only when the strong reference was cached

Zarr v3 group (one per shard): the same fields, per-token ones as flat 1-D arrays with an int64 `offsets`
array (rows + 1) such that row i's values are `field[offsets[i]:offsets[i+1]]`; `input_ids` flat with
`input_offsets`; per-row scalars as 1-D arrays; `example_id` as a string array. Arrays use the sharding codec.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1
KNOWN_SCHEMA_VERSIONS = (1,)

TOKEN_FIELDS_WEAK = ("logp_weak_base", "logp_weak_aligned", "weak_log_ratio")
STRONG_REF_FIELD = "logp_strong_ref"
STORAGE_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}
FORMATS = ("parquet", "zarr", "both")


def token_fields(with_strong_ref: bool) -> tuple[str, ...]:
    """Names of the per-response-token fields a cache holds."""
    return TOKEN_FIELDS_WEAK + ((STRONG_REF_FIELD,) if with_strong_ref else ())


def arrow_schema(dtype: str = "float32", with_strong_ref: bool = False) -> pa.Schema:
    """The Parquet schema of a cache written with per-token values stored as `dtype`."""
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype {dtype!r} is not one of {sorted(STORAGE_DTYPES)}")
    value = pa.list_(STORAGE_DTYPES[dtype])
    fields = [
        pa.field("row_id", pa.int64(), nullable=False),
        pa.field("example_id", pa.string(), nullable=False),
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("prompt_len", pa.int32(), nullable=False),
        pa.field("response_len", pa.int32(), nullable=False),
    ]
    fields += [pa.field(name, value, nullable=False) for name in token_fields(with_strong_ref)]
    fields.insert(8, pa.field("weak_seq_reward", pa.float32(), nullable=False))
    return pa.schema(fields, metadata={"w2s_schema_version": str(SCHEMA_VERSION)})


def shard_name(index: int, fmt: str) -> str:
    """Path of shard `index` inside the cache folder: one subfolder per format, so that
    `pyarrow.dataset.dataset("CACHE/parquet")` reads exactly the shards and nothing else."""
    return f"{fmt}/shard-{index:05d}.{fmt}"
