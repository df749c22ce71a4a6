"""The field list in `w2s.schemas.cache` is the one source of the cache's layout, for both stores."""

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from w2s.schemas.cache import (
    FIELDS,
    KNOWN_SCHEMA_VERSIONS,
    ROW_FIELDS,
    SCHEMA_VERSION,
    STRONG_REF_FIELD,
    TRAINING_FIELDS,
    Layout,
    ShardData,
    arrow_schema,
    fields,
    from_storage,
    to_storage,
    token_fields,
)


def test_arrow_schema_columns_follow_the_field_list():
    for with_ref in (False, True):
        schema = arrow_schema("float32", with_strong_ref=with_ref)
        assert schema.names == [f.name for f in fields(with_ref)]
    assert arrow_schema(with_strong_ref=True).names == [f.name for f in FIELDS]
    assert STRONG_REF_FIELD not in arrow_schema(with_strong_ref=False).names


def test_arrow_schema_is_todays_parquet_layout():
    """Pinned by hand: the full store keeps its column names and types (plain readers of existing caches keep
    working); the metadata says schema 2 and carries the layout."""
    half = pa.list_(pa.float16())
    expected = pa.schema(
        [
            pa.field("row_id", pa.int64(), nullable=False),
            pa.field("example_id", pa.string(), nullable=False),
            pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
            pa.field("prompt_len", pa.int32(), nullable=False),
            pa.field("response_len", pa.int32(), nullable=False),
            pa.field("logp_weak_base", half, nullable=False),
            pa.field("logp_weak_aligned", half, nullable=False),
            pa.field("weak_log_ratio", half, nullable=False),
            pa.field("weak_seq_reward", pa.float32(), nullable=False),
            pa.field("logp_strong_ref", half, nullable=False),
        ]
    )
    schema = arrow_schema("float16", with_strong_ref=True)
    assert schema.equals(expected)
    assert schema.metadata[b"w2s_schema_version"] == b"2"
    layout = json.loads(schema.metadata[b"w2s_layout"])
    assert layout == {"store": "full", "storage_dtype": "float16", "fields": [f.name for f in FIELDS]}


def test_the_compact_store_holds_what_training_reads_and_stores_bfloat16_as_uint16():
    schema = arrow_schema("bfloat16", with_strong_ref=True, store="compact")
    assert schema.names == list(TRAINING_FIELDS)
    assert TRAINING_FIELDS == ("row_id", "input_ids", "prompt_len", "weak_log_ratio", STRONG_REF_FIELD)
    assert schema.field("weak_log_ratio").type == pa.list_(pa.uint16())
    assert schema.field("input_ids").type == pa.list_(pa.int32())
    assert Layout.from_description(json.loads(schema.metadata[b"w2s_layout"])) == Layout("compact", "bfloat16", True)
    described = {entry["name"]: entry for entry in Layout("compact", "bfloat16", True).describe()["fields"]}
    assert described[STRONG_REF_FIELD]["dtype"] == "bfloat16" and "uint16" in described[STRONG_REF_FIELD]["stored_as"]
    assert arrow_schema("float16", store="compact").names == ["row_id", "input_ids", "prompt_len", "weak_log_ratio"]
    with pytest.raises(ValueError, match="the full store keeps float columns"):
        Layout("full", "bfloat16")


def test_bfloat16_storage_rounds_as_torch_does():
    normal = np.random.default_rng(0).normal(0, 8, 10_000)
    values = np.concatenate([normal, [0.0, -0.0, 1e-40, 3.4e38, -3.4e38, np.inf, -np.inf, np.nan]]).astype(np.float32)
    stored = to_storage(values, "bfloat16")
    assert stored.dtype == np.uint16
    expected = torch.from_numpy(values).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(from_storage(stored, "bfloat16"), expected)
    assert from_storage(to_storage(normal.astype(np.float32), "float16"), "float16").dtype == np.float32


def test_a_schema_1_manifest_reads_as_a_full_store():
    provenance = {"storage_dtype": "float16", "models": {"strong_ref": {}}}
    manifest = {"schema_version": 1, "config": {"storage_dtype": "float16"}, "provenance": provenance}
    assert Layout.from_manifest(manifest) == Layout("full", "float16", True)
    assert 1 in KNOWN_SCHEMA_VERSIONS and SCHEMA_VERSION == 2


def test_names_by_kind_are_derived():
    assert token_fields(False) == ("logp_weak_base", "logp_weak_aligned", "weak_log_ratio")
    assert token_fields(True)[-1] == STRONG_REF_FIELD
    assert token_fields(True, "compact") == ("weak_log_ratio", STRONG_REF_FIELD)
    assert ROW_FIELDS == ("row_id", "example_id", "prompt_len", "response_len", "weak_seq_reward")
    assert set(ROW_FIELDS) <= set(ShardData.__dataclass_fields__)  # every per-row field has its attribute


def test_unknown_storage_dtype_is_refused():
    with pytest.raises(ValueError, match="storage dtype 'int8'"):
        arrow_schema("int8")
