"""Every bad input is refused before anything is written, with a message naming the file, row and field."""

import json
import shutil

import pytest

from tests.cache.helpers import build, cache_config
from w2s.cache.build import setup
from w2s.errors import CacheMismatch
from w2s.world.tokenizer import train_tokenizer

pytestmark = pytest.mark.integration


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = {"example_id": "a", "prompt": "summarize : mira sold 7 lamps in oslo .", "response": "mira sold 7 lamps in oslo ."}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([GOOD, {"example_id": "b", "prompt": "x"}], r"rows\.jsonl: row 1: field 'response' is missing"),
        ([GOOD, {"example_id": "b", "prompt": 3, "response": "y"}], r"row 1: field 'prompt' must be a string, got int"),
        ([{**GOOD, "response": "   "}], r"row 0: field 'response' is empty"),
        ([GOOD, {**GOOD, "example_id": "b", "prompt": "word " * 300}], r"row 1: field 'prompt' takes \d+ tokens, leaving no room"),
        ([GOOD, {**GOOD, "response": "mira " * 300, "example_id": "c"}], r"row 1: prompt \+ response take \d+ tokens > max_len"),
        ([GOOD, {**GOOD, "prompt": "other"}], r"row 1: field 'example_id': duplicate example_id 'a' \(first at row 0\)"),
    ],
)
def test_bad_rows_are_refused_and_nothing_is_written(micro_world, tmp_path, rows, message):
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        build(micro_world, out, dataset=str(data))
    assert not out.exists()


def test_unreadable_file_is_named(micro_world, tmp_path):
    data = tmp_path / "broken.jsonl"
    data.write_text('{"prompt": "a", "response": \n')
    with pytest.raises(ValueError, match=r"broken\.jsonl: cannot read the dataset"):
        build(micro_world, tmp_path / "out", dataset=str(data))
    with pytest.raises(ValueError, match=r"missing\.jsonl"):
        build(micro_world, tmp_path / "out", dataset=str(tmp_path / "missing.jsonl"))
    assert not (tmp_path / "out").exists()


def test_models_with_different_tokenizers_are_named(micro_world, tmp_path):
    other = tmp_path / "other_aligned"
    shutil.copytree(micro_world / "weak_aligned", other)
    train_tokenizer(["completely different text for another vocabulary"] * 20, 300).save_pretrained(other)
    with pytest.raises(CacheMismatch, match=r"tokenizer of weak_aligned \(.*other_aligned\) differs from that of weak_base"):
        setup(cache_config(micro_world, tmp_path / "out", weak_aligned=str(other)), load_models=False)
    assert not (tmp_path / "out").exists()


def test_truncation_is_applied_and_recorded(micro_world, tmp_path):
    data = write_jsonl(tmp_path / "rows.jsonl", [GOOD, {**GOOD, "example_id": "long", "response": "mira " * 300}])
    manifest = build(micro_world, tmp_path / "out", dataset=str(data), truncation=True, max_len=64)
    assert manifest["provenance"]["truncation"] is True
    assert manifest["provenance"]["truncated_rows"] == 1
    assert manifest["totals"]["tokens"] <= 2 * 64


def test_chat_messages_field_gives_the_same_tokens_as_prompt_and_response(micro_world, tmp_path):
    plain = write_jsonl(tmp_path / "plain.jsonl", [GOOD])
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"example_id": "a", "messages": [
        {"role": "user", "content": GOOD["prompt"]}, {"role": "assistant", "content": GOOD["response"]}]}])
    a = setup(cache_config(micro_world, tmp_path / "a", dataset=str(plain)), load_models=False)
    b = setup(cache_config(micro_world, tmp_path / "b", dataset=str(chat), messages_field="messages"), load_models=False)
    assert a.rows == b.rows


def test_a_finished_cache_from_other_inputs_is_not_overwritten(micro_world, tmp_path):
    data = write_jsonl(tmp_path / "rows.jsonl", [GOOD])
    build(micro_world, tmp_path / "out", dataset=str(data))
    again = build(micro_world, tmp_path / "out", dataset=str(data))
    assert again["scored_now"] == 0
    write_jsonl(tmp_path / "rows.jsonl", [{**GOOD, "response": "tor found 3 cups in rome ."}])
    with pytest.raises(CacheMismatch, match="different inputs"):
        build(micro_world, tmp_path / "out", dataset=str(data))
