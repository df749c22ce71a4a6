"""Every bad input is refused before anything is written, with a message naming the file, row and field."""

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cache.helpers import build, cache_config
from w2s.cache.build import setup
from w2s.errors import CacheMismatch, DataError
from w2s.runs import FolderRefused
from w2s.source import DataSource
from w2s.world.tokenizer import train_tokenizer

pytestmark = pytest.mark.integration


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = {
    "example_id": "a",
    "prompt": "summarize : mira sold 7 lamps in oslo .",
    "response": "mira sold 7 lamps in oslo .",
}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([GOOD, {"example_id": "b", "prompt": "x"}], r"rows\.jsonl: row 1: field 'response' is missing"),
        ([GOOD, {"example_id": "b", "prompt": 3, "response": "y"}], r"row 1: field 'prompt' must be a string, got int"),
        ([{**GOOD, "response": "   "}], r"row 0: field 'response' is empty"),
        (
            [GOOD, {**GOOD, "example_id": "b", "prompt": "word " * 300}],
            r"row 1: field 'prompt' takes \d+ tokens, leaving no room",
        ),
        (
            [GOOD, {**GOOD, "response": "mira " * 300, "example_id": "c"}],
            r"row 1: prompt \+ response take \d+ tokens > max_len",
        ),
        (
            [GOOD, {**GOOD, "prompt": "other"}],
            r"row 1: field 'example_id': duplicate example_id 'a' \(first at row 0\)",
        ),
    ],
)
def test_bad_rows_are_refused_and_nothing_is_written(micro_world, tmp_path, rows, message):
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        build(micro_world, out, data=str(data))
    assert not out.exists()


def test_unreadable_file_is_named(micro_world, tmp_path):
    data = tmp_path / "broken.jsonl"
    data.write_text('{"prompt": "a", "response": \n')
    with pytest.raises(DataError, match=r"broken\.jsonl: line 1: invalid JSON: Expecting value \(column 29\)$"):
        build(micro_world, tmp_path / "out", data=str(data))
    with pytest.raises(DataError, match=r"missing\.jsonl: no such file or folder"):
        build(micro_world, tmp_path / "out", data=str(tmp_path / "missing.jsonl"))
    assert not (tmp_path / "out").exists()


ROW = b'{"prompt": "summarize : a", "response": "a ."}\n'


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "data.jsonl",
            ROW * 2 + b'{"prompt": "\xff", "response": "a ."}\n',
            r"data\.jsonl: line 3: not valid UTF-8 \(byte 0xff at column 13\)$",
        ),
        (
            "data.jsonl",
            ROW + b'{"prompt": "a" "response": "a ."}\n' + ROW,
            r"data\.jsonl: line 2: invalid JSON: Expecting ',' delimiter \(column 16\)$",
        ),
        ("data.jsonl", ROW + b"\n[1, 2]\n", r"data\.jsonl: line 3: a row must be a JSON object, got a list$"),
        ("data.jsonl", b"", r"data\.jsonl: no rows$"),
        ("data.jsonl", b"\n  \n", r"data\.jsonl: no rows$"),
        (
            "data.json",
            b'[{"prompt": "a", "response": "b"},\n {"prompt": "a" "response": "b"}]',
            r"data\.json: line 2: invalid JSON: Expecting ',' delimiter \(column 17\)$",
        ),
        ("data.json", b"[]", r"data\.json: no rows$"),
        ("data.parquet", b"PAR1 not really", r"data\.parquet: not a readable parquet file: "),
    ],
)
def test_undecodable_files_are_named_by_line(micro_world, tmp_path, name, content, message):
    data = tmp_path / name
    data.write_bytes(content)
    with pytest.raises(DataError, match=message) as refused:
        setup(cache_config(micro_world, tmp_path / "out", data=str(data)), load_models=False)
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "out").exists()


def test_untidy_dataset_folders_are_refused_naming_the_entries(micro_world, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [GOOD])
    (folder / "notes.txt").write_text("where the rows came from")
    (folder / "old").mkdir()
    with pytest.raises(DataError, match=r"data: entries that are not data files: notes\.txt, old/ \("):
        setup(cache_config(micro_world, tmp_path / "out", data=str(folder)), load_models=False)
    (folder / "notes.txt").unlink()
    (folder / "old").rmdir()
    pq.write_table(pa.table({"prompt": [GOOD["prompt"]], "response": [GOOD["response"]]}), folder / "b.parquet")
    with pytest.raises(DataError, match=r"data: mixes data formats: a\.jsonl \(json\), b\.parquet \(parquet\)"):
        setup(cache_config(micro_world, tmp_path / "out", data=str(folder)), load_models=False)
    assert not (tmp_path / "out").exists()


def test_a_dataset_folder_ignores_hidden_files_and_names_the_file_of_a_bad_row(micro_world, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [GOOD, {**GOOD, "example_id": "b"}])
    (folder / "b.json").write_text(json.dumps([{**GOOD, "example_id": "c"}], indent=2))  # a .json array
    (folder / ".DS_Store").write_bytes(b"\x00\x01 finder")
    job = setup(cache_config(micro_world, tmp_path / "out", data=str(folder)), load_models=False)
    assert [r.example_id for r in job.rows] == ["a", "b", "c"]
    write_jsonl(folder / "b.json", [{**GOOD, "example_id": "c"}, {"example_id": "d", "prompt": "x"}])  # json lines
    with pytest.raises(DataError, match=r"data/b\.json: row 1: field 'response' is missing"):
        setup(cache_config(micro_world, tmp_path / "out", data=str(folder)), load_models=False)


def chat_row(*messages):
    return {"example_id": "a", "messages": [{"role": r, "content": c} for r, c in messages]}


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([("system", "be brief ."), ("assistant", GOOD["response"])], r"'messages\[0\]': .* role 'system'"),
        (
            [("system", "be brief ."), ("user", GOOD["prompt"]), ("assistant", GOOD["response"])],
            r"'messages\[0\]': .* role 'system'",
        ),
        (
            [("user", GOOD["prompt"]), ("tool", "7 lamps"), ("assistant", GOOD["response"])],
            r"'messages\[1\]': .* role 'tool'",
        ),
        (
            [("narrator", "once ,"), ("user", GOOD["prompt"]), ("assistant", GOOD["response"])],
            r"'messages\[0\]': .* role 'narrator'",
        ),
        ([("user", "  "), ("assistant", GOOD["response"])], r"'messages': no message before the response"),
    ],
)
def test_chat_messages_the_template_does_not_render_are_refused(micro_world, tmp_path, messages, message):
    # the tiny world's chat template renders only user and assistant turns: any other role would vanish
    data = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            chat_row(("user", GOOD["prompt"]), ("assistant", GOOD["response"])),
            {**chat_row(*messages), "example_id": "b"},
        ],
    )
    with pytest.raises(DataError, match=r"chat\.jsonl: row 1: field " + message):
        setup(
            cache_config(micro_world, tmp_path / "out", data=DataSource(str(data), messages_field="messages")),
            load_models=False,
        )
    assert not (tmp_path / "out").exists()


def test_models_with_different_tokenizers_are_named(micro_world, tmp_path):
    other = tmp_path / "other_aligned"
    shutil.copytree(micro_world / "weak_aligned", other)
    train_tokenizer(["completely different text for another vocabulary"] * 20, 300).save_pretrained(other)
    with pytest.raises(
        CacheMismatch, match=r"tokenizer of weak_aligned \(.*other_aligned\) differs from that of weak_base"
    ):
        setup(cache_config(micro_world, tmp_path / "out", weak_aligned=str(other)), load_models=False)
    assert not (tmp_path / "out").exists()


def test_a_pair_with_the_same_tokenizer_files_loads_one_tokenizer_and_a_changed_file_loads_both(
    micro_world, tmp_path, monkeypatch
):
    """The micro world's weak pair differs only in its weights: one tokenizer is loaded for both. Change a file
    that loading reads (the chat template) and both are loaded and compared again, and the difference refused."""
    from w2s.cache import build as cache_build

    loaded = []
    real_load = cache_build.load_tokenizer
    monkeypatch.setattr(cache_build, "load_tokenizer", lambda role, path: loaded.append(role) or real_load(role, path))
    job = setup(cache_config(micro_world, tmp_path / "out"), load_models=False)
    assert loaded == ["weak_base"] and job.provenance["tokenizer_sha256"]
    other = tmp_path / "other_aligned"
    shutil.copytree(micro_world / "weak_aligned", other)
    (other / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    loaded.clear()
    with pytest.raises(CacheMismatch, match=r"tokenizer of weak_aligned \(.*other_aligned\) differs"):
        setup(cache_config(micro_world, tmp_path / "out2", weak_aligned=str(other)), load_models=False)
    assert loaded == ["weak_base", "weak_aligned"]


def test_truncation_is_applied_and_recorded(micro_world, tmp_path):
    data = write_jsonl(tmp_path / "rows.jsonl", [GOOD, {**GOOD, "example_id": "long", "response": "mira " * 300}])
    manifest = build(micro_world, tmp_path / "out", data=str(data), truncation=True, max_len=64)
    assert manifest["provenance"]["truncation"] is True
    assert manifest["provenance"]["truncated_rows"] == 1
    assert manifest["totals"]["tokens"] <= 2 * 64


def test_chat_messages_field_gives_the_same_tokens_as_prompt_and_response(micro_world, tmp_path):
    plain = write_jsonl(tmp_path / "plain.jsonl", [GOOD])
    chat = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {
                "example_id": "a",
                "messages": [
                    {"role": "user", "content": GOOD["prompt"]},
                    {"role": "assistant", "content": GOOD["response"]},
                ],
            }
        ],
    )
    a = setup(cache_config(micro_world, tmp_path / "a", data=str(plain)), load_models=False)
    b = setup(
        cache_config(micro_world, tmp_path / "b", data=DataSource(str(chat), messages_field="messages")),
        load_models=False,
    )
    assert a.rows == b.rows


def test_a_finished_cache_from_other_inputs_is_not_overwritten(micro_world, tmp_path):
    data = write_jsonl(tmp_path / "rows.jsonl", [GOOD])
    build(micro_world, tmp_path / "out", data=str(data))
    again = build(micro_world, tmp_path / "out", data=str(data))
    assert again["scored_now"] == 0
    write_jsonl(tmp_path / "rows.jsonl", [{**GOOD, "response": "tor found 3 cups in rome ."}])
    with pytest.raises(FolderRefused, match=r"holds another run of `w2s cache` \(dataset.fingerprint differ\)"):
        build(micro_world, tmp_path / "out", data=str(data))
