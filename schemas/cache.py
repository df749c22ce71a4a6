"""The logit cache's schema: the contract between stage 1 (cache) and stage 2 (train). Declared once, here.

A cache folder holds, for each shard c and each format it was written in, `<format>/shard-{c:05d}.<format>`
(`parquet/shard-00000.parquet`, `zarr/shard-00000.zarr/`), and a `manifest.json` written last. Every row is one
(prompt, response) example; every per-token field holds one value per *response* token, the value at t being
about token `input_ids[prompt_len + t]` given everything before it.

`FIELDS` below is the one list of fields, in Parquet column order; everything else (the Arrow schema, the names
of per-row and per-token fields, what each store holds, what each format writes) is derived from it. Three kinds
of field:
    row    one value per example (row_id, example_id, prompt_len, response_len, weak_seq_reward)
    ids    the token ids, one list per example (input_ids)
    token  one value per response token, stored as the cache's storage dtype (float32, float16 or bfloat16), or
           as the field's own integer dtype when it has one (`strong_chunk`)

Cross-tokenizer caches (the strong model's tokenizer is not the weak pair's; `w2s.align`). The weak pair scores
each row tokenised its own way, the strong model trains on it tokenised its own way, and both tokenizations of the
response are cut into chunks that end where both have a token boundary (EOS a chunk of its own on both sides).
Every field is then in STRONG-token space: `input_ids` and `prompt_len` are the strong model's (its chat template,
its BOS), `logp_strong_ref` is scored on those ids, and each weak per-token field (`weak_log_ratio`,
`logp_weak_base`, `logp_weak_aligned`) holds, at the LAST strong token of each chunk, the chunk's sum of the weak
pair's per-token values, and 0.0 at the chunk's other tokens. `weak_seq_reward` stays the sum over the response
(the sum of the chunk sums). One more per-token field, `strong_chunk` (int32, in both stores: training reads it),
numbers the chunk of each strong response token 0, 1, ... in order; a cache holds it exactly when it is
cross-tokenizer (`Layout.cross_tokenizer`; the manifest's provenance then says `cross_tokenizer: true`). It is
declared in `CROSS_TOKENIZER_FIELDS`, after `FIELDS`, so the columns of a same-tokenizer cache are unchanged.

Two stores (`Store`), chosen per cache and recorded in the manifest's `layout`:
    full     every field, float columns (float32 or float16): for inspection with plain pyarrow/pandas/duckdb
    compact  only what training reads (`TRAINING_FIELDS`: row_id, input_ids, prompt_len, weak_log_ratio and,
             when cached, logp_strong_ref), per-token values in float16 or bfloat16. Arrow and Parquet have no
             bfloat16, so bfloat16 values are stored as their uint16 bit patterns (`to_storage`/`from_storage`);
             the manifest and each Parquet file's metadata (`w2s_layout`) say so.

Parquet: one row per example, one column per field, per-token fields and input_ids as lists.
Zarr v3 group (one per shard): per-token fields as flat 1-D arrays with an int64 `offsets` array (rows + 1) such
that row i's values are `field[offsets[i]:offsets[i+1]]` (the compact store leaves `offsets` out: it follows from
`input_offsets` and `prompt_len`); `input_ids` flat with `input_offsets`; per-row scalars as 1-D arrays;
`example_id` as a string array; attributes `token_fields` (the per-token fields) and `layout`.

Schema versions: 1 (full store only, no `layout` in the manifest) is still read, as a full store whose dtype is
the provenance's `storage_dtype`; 2 adds the manifest's `layout` and the compact store.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 2
KNOWN_SCHEMA_VERSIONS = (1, 2)

StorageDtype = Literal["float32", "float16", "bfloat16"]
"""How per-token values are stored (bfloat16 only in the compact store)."""
Store = Literal["full", "compact"]
"""Which fields a cache holds: every field (`full`), or only those training reads (`compact`)."""
Format = Literal["parquet", "zarr", "both"]
"""Which stores a build writes from its one pass (`both`: parquet and zarr)."""
FieldKind = Literal["row", "ids", "token"]

STORAGE_DTYPES = {"float32": pa.float32(), "float16": pa.float16(), "bfloat16": pa.uint16()}
NUMPY_STORAGE = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
ARROW_TYPES = {"int64": pa.int64(), "int32": pa.int32(), "float32": pa.float32(), "string": pa.string()}
LAYOUT_KEY = "w2s_layout"
"""Parquet key-value metadata (and Zarr attribute) holding `Layout.summary()`."""


@dataclass(frozen=True)
class Field:
    """One field of a cached row."""

    name: str
    kind: FieldKind
    dtype: str | None
    """Value dtype ('int64', 'int32', 'float32', 'string'; for `ids` and `token` the element dtype); None: the
    storage dtype."""
    doc: str
    optional: bool = False
    """Present only in some caches (`logp_strong_ref`: only when the strong reference was cached)."""
    compact: bool = False
    """Kept by the compact store: training reads it."""
    cross: bool = False
    """Present only in cross-tokenizer caches (`strong_chunk`)."""


FIELDS: tuple[Field, ...] = (
    Field("row_id", "row", "int64", "global row number, dense from 0 in dataset order", compact=True),
    Field("example_id", "row", "string", "from the dataset, or derived from the row number"),
    Field("input_ids", "ids", "int32", "prompt + response (+ EOS) exactly as scored", compact=True),
    Field("prompt_len", "row", "int32", "tokens of the prompt (chat template included)", compact=True),
    Field("response_len", "row", "int32", "len(input_ids) - prompt_len"),
    Field("logp_weak_base", "token", None, "log pi_w_base(y_t | x, y_<t)"),
    Field("logp_weak_aligned", "token", None, "log pi_w_aligned(y_t | x, y_<t)"),
    Field(
        "weak_log_ratio",
        "token",
        None,
        "logp_weak_aligned - logp_weak_base (computed in float32, then stored)",
        compact=True,
    ),
    Field("weak_seq_reward", "row", "float32", "sum of weak_log_ratio (in float32, before any down-cast)"),
    Field("logp_strong_ref", "token", None, "log pi_ref(y_t | x, y_<t)", optional=True, compact=True),
)
STRONG_REF_FIELD = "logp_strong_ref"
STRONG_CHUNK_FIELD = "strong_chunk"
CROSS_TOKENIZER_FIELDS: tuple[Field, ...] = (
    Field(
        STRONG_CHUNK_FIELD,
        "token",
        "int32",
        "chunk of each strong response token, 0, 1, ... in order (cross-tokenizer caches only; module docstring)",
        optional=True,
        compact=True,
        cross=True,
    ),
)
"""Fields only a cross-tokenizer cache holds, after `FIELDS` in column order."""


def fields(with_strong_ref: bool = True, store: Store = "full", cross_tokenizer: bool = False) -> tuple[Field, ...]:
    """The fields a cache holds, in column order (the optional strong reference only when cached, `strong_chunk`
    only in a cross-tokenizer cache)."""
    every = FIELDS + CROSS_TOKENIZER_FIELDS
    return tuple(
        f
        for f in every
        if (f.cross and cross_tokenizer or not f.cross and (not f.optional or with_strong_ref))
        and (store == "full" or f.compact)
    )


def names(
    kind: FieldKind, with_strong_ref: bool = True, store: Store = "full", cross_tokenizer: bool = False
) -> tuple[str, ...]:
    """Names of the fields of one kind, in column order."""
    return tuple(f.name for f in fields(with_strong_ref, store, cross_tokenizer) if f.kind == kind)


def token_fields(with_strong_ref: bool, store: Store = "full", cross_tokenizer: bool = False) -> tuple[str, ...]:
    """Names of the per-response-token fields a cache holds."""
    return names("token", with_strong_ref, store, cross_tokenizer)


ROW_FIELDS = names("row")
TOKEN_FIELDS = names("token")
FIELD_BY_NAME = {f.name: f for f in FIELDS + CROSS_TOKENIZER_FIELDS}
TRAINING_FIELDS = tuple(f.name for f in fields(True, "compact"))
"""What the trainer reads (the compact store holds exactly these): the loss never reads the weak log-probs. A
cross-tokenizer cache adds `strong_chunk` (`CROSS_TOKENIZER_FIELDS`)."""


def to_storage(values: np.ndarray, dtype: StorageDtype) -> np.ndarray:
    """float32 per-token values `[n]` as stored: cast to float16/float32, or bfloat16 as uint16 bit patterns
    (round to nearest even, as torch rounds; NaN kept a NaN)."""
    if dtype != "bfloat16":
        return values.astype(NUMPY_STORAGE[dtype], copy=False)
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16  # uint32 arithmetic; NaNs fixed below
    return np.where(np.isnan(values), np.uint32(0x7FC0), rounded).astype(np.uint16)


def from_storage(stored: np.ndarray, dtype: StorageDtype) -> np.ndarray:
    """Stored per-token values `[n]` back as float32 (exact: every stored value is a float32)."""
    if dtype != "bfloat16":
        return stored.astype(np.float32, copy=False)
    return (stored.astype(np.uint32) << 16).view(np.float32)


@dataclass(frozen=True)
class Layout:
    """How one cache stores its rows: the store, the per-token storage dtype, whether the strong reference is
    cached, and whether the cache is cross-tokenizer (holds `strong_chunk`). The manifest records `describe()` as
    `layout`; each shard file carries `summary()` (Parquet: as key-value metadata `w2s_layout`, Zarr: as the
    group attribute of that name)."""

    store: Store = "full"
    dtype: StorageDtype = "float32"
    with_strong_ref: bool = False
    cross_tokenizer: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage dtype {self.dtype!r} is not one of {sorted(STORAGE_DTYPES)}")
        if self.store == "full" and self.dtype == "bfloat16":
            raise ValueError("the full store keeps float columns: bfloat16 is for the compact store")

    def fields(self) -> tuple[Field, ...]:
        """The fields this cache holds, in column order."""
        return fields(self.with_strong_ref, self.store, self.cross_tokenizer)

    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields())

    def token_fields(self) -> tuple[str, ...]:
        return token_fields(self.with_strong_ref, self.store, self.cross_tokenizer)

    def stored_offsets(self) -> bool:
        """Whether flat formats (Zarr) store the per-token `offsets`: the compact store derives them."""
        return self.store == "full"

    def describe(self) -> dict:
        """The manifest's `layout`: the store and, in column order, each field's name, kind, dtype and (bfloat16)
        how it is stored."""
        described = []
        for spec in self.fields():
            dtype = spec.dtype or self.dtype
            entry = {"name": spec.name, "kind": spec.kind, "dtype": dtype}
            if dtype == "bfloat16":
                entry["stored_as"] = "uint16 (the upper 16 bits of the float32)"
            described.append(entry)
        return {"store": self.store, "storage_dtype": self.dtype, "fields": described}

    def summary(self) -> dict:
        """The short form each shard file carries (its fields' dtypes follow from `FIELDS` and the storage dtype)."""
        return {"store": self.store, "storage_dtype": self.dtype, "fields": list(self.field_names())}

    @classmethod
    def from_description(cls, described: dict) -> Layout:
        """The layout a `describe()` or `summary()` dict records."""
        held = [entry if isinstance(entry, str) else entry["name"] for entry in described["fields"]]
        return cls(described["store"], described["storage_dtype"], STRONG_REF_FIELD in held, STRONG_CHUNK_FIELD in held)

    @classmethod
    def from_manifest(cls, manifest: dict) -> Layout:
        """A cache's layout; a schema-1 manifest (no `layout`) is a full store of its provenance's dtype."""
        if "layout" in manifest:
            return cls.from_description(manifest["layout"])
        dtype = manifest.get("provenance", {}).get("storage_dtype") or manifest["config"]["storage_dtype"]
        return cls("full", dtype, "strong_ref" in manifest.get("provenance", {}).get("models", {}))


def layout_from_metadata(metadata: dict[bytes, bytes] | None, columns: list[str]) -> Layout:
    """The layout a Parquet file's metadata records; a schema-1 file (none) is a full float store."""
    if metadata and LAYOUT_KEY.encode() in metadata:
        return Layout.from_description(json.loads(metadata[LAYOUT_KEY.encode()]))
    return Layout("full", "float32", STRONG_REF_FIELD in columns)  # floats of any width decode alike


def arrow_type(spec: Field, dtype: StorageDtype) -> pa.DataType:
    """Arrow type of one field's Parquet column when per-token values are stored as `dtype`."""
    if spec.kind == "token" and spec.dtype is None:
        return pa.list_(STORAGE_DTYPES[dtype])
    value = ARROW_TYPES[spec.dtype]
    return pa.list_(value) if spec.kind in ("ids", "token") else value


def arrow_schema(
    dtype: StorageDtype = "float32", with_strong_ref: bool = False, store: Store = "full", cross_tokenizer: bool = False
) -> pa.Schema:
    """The Parquet schema of a cache of `store` written with per-token values stored as `dtype`."""
    layout = Layout(store, dtype, with_strong_ref, cross_tokenizer)
    columns = [pa.field(f.name, arrow_type(f, dtype), nullable=False) for f in layout.fields()]
    metadata = {"w2s_schema_version": str(SCHEMA_VERSION), LAYOUT_KEY: json.dumps(layout.summary())}
    return pa.schema(columns, metadata=metadata)


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
    token_values: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [sum of response lengths], float32
    # (`strong_chunk`: int32)
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
        """Per-token values of row `row`, each `[response]` (none when no per-token field was read)."""
        if not self.token_values:
            return {}
        start, end = self.offsets[row], self.offsets[row + 1]
        return {name: values[start:end] for name, values in self.token_values.items()}

    def nonfinite(self) -> str | None:
        """Where the first NaN or infinity among the read values is (`field F, row R`), None when there is none:
        no w2s cache holds one (the build refuses them), so one is damage or a cache made by an older w2s."""
        fields = {"weak_seq_reward": self.weak_seq_reward, **self.token_values}
        for name, values in fields.items():
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size == 0:
                continue
            per_token = name != "weak_seq_reward" and len(self.offsets) > 1
            row = int(np.searchsorted(self.offsets, bad[0], side="right") - 1) if per_token else int(bad[0])
            where = f"row_id {int(self.row_id[row])}" if row < len(self.row_id) else f"row {row} of the shard"
            return f"field {name}, {where}: {values[bad[0]]} ({bad.size} non-finite values in this field)"
        return None


def shard_arrays(shard: ShardData, layout: Layout) -> dict[str, np.ndarray | list[str]]:
    """What a format stores for `shard` under `layout`: each field as one flat array in its stored dtype, plus
    `input_offsets` and (unless derived) `offsets`. Formats that store flat arrays (Zarr, a plug-in) write these
    as they are; Parquet turns the jagged ones into lists."""
    arrays: dict[str, np.ndarray | list[str]] = {}
    for spec in layout.fields():
        if spec.kind == "ids":
            arrays["input_ids"] = shard.input_ids.astype(np.int32, copy=False)
            arrays["input_offsets"] = shard.input_offsets.astype(np.int64, copy=False)
        elif spec.kind == "token" and spec.dtype is not None:  # an integer per-token field keeps its dtype
            arrays[spec.name] = shard.token_values[spec.name].astype(spec.dtype, copy=False)
        elif spec.kind == "token":
            arrays[spec.name] = to_storage(shard.token_values[spec.name], layout.dtype)
        elif spec.dtype == "string":
            arrays[spec.name] = list(shard.example_id)
        else:
            arrays[spec.name] = np.asarray(getattr(shard, spec.name)).astype(spec.dtype, copy=False)
    if layout.stored_offsets():
        arrays["offsets"] = shard.offsets.astype(np.int64, copy=False)
    return arrays


def shard_from_arrays(arrays: dict[str, np.ndarray | list[str]], layout: Layout) -> ShardData:
    """The inverse of `shard_arrays` over whichever arrays were read: per-token values decoded to float32, and
    what the compact store derives (`offsets`, `response_len`) filled in when its inputs were read."""
    shard = ShardData()
    for name, values in arrays.items():
        spec = FIELD_BY_NAME.get(name)
        if spec is not None and spec.kind == "token" and spec.dtype is not None:
            shard.token_values[name] = np.asarray(values).astype(spec.dtype, copy=False)
        elif spec is not None and spec.kind == "token":
            shard.token_values[name] = from_storage(np.asarray(values), layout.dtype)
        elif name == "example_id":
            shard.example_id = [str(x) for x in values]
        elif name in ("input_offsets", "offsets"):
            setattr(shard, name, np.asarray(values).astype(np.int64, copy=False))
        else:
            setattr(shard, name, np.asarray(values).astype(spec.dtype, copy=False))
    has_lengths = "input_offsets" in arrays and "prompt_len" in arrays
    if has_lengths and "response_len" not in arrays:
        shard.response_len = (np.diff(shard.input_offsets) - shard.prompt_len).astype(np.int32)
    if has_lengths and "offsets" not in arrays and shard.token_values:
        shard.offsets = np.concatenate([[0], np.cumsum(shard.response_len)]).astype(np.int64)
    return shard
