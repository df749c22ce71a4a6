"""The field list in `w2s.schemas.cache` is the one source of the cache's layout."""

import pyarrow as pa
import pytest

from w2s.schemas.cache import (
    FIELDS,
    ROW_FIELDS,
    STRONG_REF_FIELD,
    ShardData,
    arrow_schema,
    fields,
    token_fields,
)


def test_arrow_schema_columns_follow_the_field_list():
    for with_ref in (False, True):
        schema = arrow_schema("float32", with_strong_ref=with_ref)
        assert schema.names == [f.name for f in fields(with_ref)]
    assert arrow_schema(with_strong_ref=True).names == [f.name for f in FIELDS]
    assert STRONG_REF_FIELD not in arrow_schema(with_strong_ref=False).names


def test_arrow_schema_is_todays_parquet_layout():
    """Pinned by hand: existing caches must keep reading, and new shards keep the same bytes."""
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
        ],
        metadata={"w2s_schema_version": "1"},
    )
    assert arrow_schema("float16", with_strong_ref=True).equals(expected, check_metadata=True)


def test_names_by_kind_are_derived():
    assert token_fields(False) == ("logp_weak_base", "logp_weak_aligned", "weak_log_ratio")
    assert token_fields(True)[-1] == STRONG_REF_FIELD
    assert ROW_FIELDS == ("row_id", "example_id", "prompt_len", "response_len", "weak_seq_reward")
    assert set(ROW_FIELDS) <= set(ShardData.__dataclass_fields__)  # every per-row field has its attribute


def test_unknown_storage_dtype_is_refused():
    with pytest.raises(ValueError, match="storage dtype 'int8'"):
        arrow_schema("int8")
