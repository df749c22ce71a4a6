"""The logit cache's schema: the contract between stage 1 (cache) and stage 2 (train). Declared once, here.

A cache folder holds, for each shard c and each format it was written in, `<format>/shard-{c:05d}.<format>`
(`parquet/shard-00000.parquet`, `zarr/shard-00000.zarr/`), and a `manifest.json` written last. Every row is one
(prompt, response) example; every per-token field holds one value per *response* token, the value at t being
about token `input_ids[prompt_len + t]` given everything before it.

`FIELDS` below is the one list of fields, in Parquet column order; everything else (the Arrow schema, the names
of per-row and per-token fields, what each format writes) is derived from it. Three kinds of field:
    row    one value per example (row_id, example_id, prompt_len, response_len, weak_seq_reward)
    ids    the token ids, one list per example (input_ids)
    token  one value per response token, stored as the cache's storage dtype (float32 or float16)

Parquet: one row per example, one column per field, per-token fields and input_ids as lists.
Zarr v3 group (one per shard): per-token fields as flat 1-D arrays with an int64 `offsets` array (rows + 1) such
that row i's values are `field[offsets[i]:offsets[i+1]]`; `input_ids` flat with `input_offsets`; per-row
scalars as 1-D arrays; `example_id` as a string array; attribute `token_fields` lists the per-token fields.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1
KNOWN_SCHEMA_VERSIONS = (1,)

StorageDtype = Literal["float32", "float16"]
"""How per-token values are stored."""
Format = Literal["parquet", "zarr", "both"]
"""Which stores a build writes from its one pass (`both`: parquet and zarr)."""
FieldKind = Literal["row", "ids", "token"]

STORAGE_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}
NUMPY_STORAGE = {"float32": np.float32, "float16": np.float16}
ARROW_TYPES = {"int64": pa.int64(), "int32": pa.int32(), "float32": pa.float32(), "string": pa.string()}


@dataclass(frozen=True)
class Field:
    """One field of a cached row."""

    name: str
    kind: FieldKind
    dtype: str | None
    """Value dtype ('int64', 'int32', 'float32', 'string'; for `ids` the element dtype); None: the storage dtype."""
    doc: str
    optional: bool = False
    """Present only in some caches (`logp_strong_ref`: only when the strong reference was cached)."""


FIELDS: tuple[Field, ...] = (
    Field("row_id", "row", "int64", "global row number, dense from 0 in dataset order"),
    Field("example_id", "row", "string", "from the dataset, or derived from the row number"),
    Field("input_ids", "ids", "int32", "prompt + response (+ EOS) exactly as scored"),
    Field("prompt_len", "row", "int32", "tokens of the prompt (chat template included)"),
    Field("response_len", "row", "int32", "len(input_ids) - prompt_len"),
    Field("logp_weak_base", "token", None, "log pi_w_base(y_t | x, y_<t)"),
    Field("logp_weak_aligned", "token", None, "log pi_w_aligned(y_t | x, y_<t)"),
    Field("weak_log_ratio", "token", None, "logp_weak_aligned - logp_weak_base (computed in float32, then stored)"),
    Field("weak_seq_reward", "row", "float32", "sum of weak_log_ratio (in float32, before any down-cast)"),
    Field("logp_strong_ref", "token", None, "log pi_ref(y_t | x, y_<t)", optional=True),
)
STRONG_REF_FIELD = "logp_strong_ref"


def fields(with_strong_ref: bool = True) -> tuple[Field, ...]:
    """The fields a cache holds, in column order (the optional strong reference only when cached)."""
    return tuple(f for f in FIELDS if not f.optional or with_strong_ref)


def names(kind: FieldKind, with_strong_ref: bool = True) -> tuple[str, ...]:
    """Names of the fields of one kind, in column order."""
    return tuple(f.name for f in fields(with_strong_ref) if f.kind == kind)


def token_fields(with_strong_ref: bool) -> tuple[str, ...]:
    """Names of the per-response-token fields a cache holds."""
    return names("token", with_strong_ref)


ROW_FIELDS = names("row")
TOKEN_FIELDS = names("token")
FIELD_BY_NAME = {f.name: f for f in FIELDS}


def arrow_type(spec: Field, dtype: StorageDtype) -> pa.DataType:
    """Arrow type of one field's Parquet column when per-token values are stored as `dtype`."""
    if spec.kind == "token":
        return pa.list_(STORAGE_DTYPES[dtype])
    value = ARROW_TYPES[spec.dtype]
    return pa.list_(value) if spec.kind == "ids" else value


def arrow_schema(dtype: StorageDtype = "float32", with_strong_ref: bool = False) -> pa.Schema:
    """The Parquet schema of a cache written with per-token values stored as `dtype`."""
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype {dtype!r} is not one of {sorted(STORAGE_DTYPES)}")
    columns = [pa.field(f.name, arrow_type(f, dtype), nullable=False) for f in fields(with_strong_ref)]
    return pa.schema(columns, metadata={"w2s_schema_version": str(SCHEMA_VERSION)})


def shard_name(index: int, fmt: str) -> str:
    """Path of shard `index` inside the cache folder: one subfolder per format, so that
    `pyarrow.dataset.dataset("CACHE/parquet")` reads exactly the shards and nothing else."""
    return f"{fmt}/shard-{index:05d}.{fmt}"


def temporary_path(path: Path) -> Path:
    """Where this process writes a shard before renaming it to `path`, so a reader never sees half a shard.

    A dot name beside the final one: hidden from `pyarrow.dataset`, and found again by `stale_temporaries`.
    """
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def stale_temporaries(cache_dir: Path, index: int) -> list[Path]:
    """Temporary files or folders of shard `index` that a killed writer left behind, in any format."""
    return sorted(cache_dir.glob(f"*/.shard-{index:05d}.*.tmp-*"))


def _empty(dtype: type) -> np.ndarray:
    return np.zeros(0, dtype)


def _no_offsets() -> np.ndarray:
    return np.zeros(1, np.int64)


@dataclass
class ShardData:
    """One shard's rows in memory, columnar: what every format writes and reads back.

    Per-row fields are attributes named as in `FIELDS`; token ids and per-token values are flat, with offsets
    (the jagged layout of the Zarr store). A partial read leaves the fields it did not read empty.
    """

    row_id: np.ndarray = field(default_factory=lambda: _empty(np.int64))  # [rows] int64
    example_id: list[str] = field(default_factory=list)  # [rows]
    input_ids: np.ndarray = field(default_factory=lambda: _empty(np.int32))  # [sum of sequence lengths] int32
    input_offsets: np.ndarray = field(default_factory=_no_offsets)  # [rows + 1] int64, into input_ids
    prompt_len: np.ndarray = field(default_factory=lambda: _empty(np.int32))  # [rows] int32
    response_len: np.ndarray = field(default_factory=lambda: _empty(np.int32))  # [rows] int32
    weak_seq_reward: np.ndarray = field(default_factory=lambda: _empty(np.float32))  # [rows] float32
    token_values: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [sum of response lengths]
    offsets: np.ndarray = field(default_factory=_no_offsets)  # [rows + 1] int64, into the token_values arrays

    @property
    def num_rows(self) -> int:
        return len(self.row_id)

    @property
    def num_tokens(self) -> int:
        """Response tokens (per-token values per field)."""
        return int(self.offsets[-1])

    def sequence(self, row: int) -> np.ndarray:
        """Token ids of row `row` (prompt + response), `[seq]`."""
        return self.input_ids[self.input_offsets[row] : self.input_offsets[row + 1]]

    def values(self, row: int) -> dict[str, np.ndarray]:
        """Per-token values of row `row`, each `[response]`."""
        start, end = self.offsets[row], self.offsets[row + 1]
        return {name: values[start:end] for name, values in self.token_values.items()}
