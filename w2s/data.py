"""Reads the dataset a cache is built from and turns each row into scored token ids, refusing bad rows loudly.

Local files are read here, not through `datasets`: each file's bytes are read once, hashed for the manifest and
parsed from those same bytes, so the rows scored are the bytes fingerprinted (`datasets` keeps its own copy of a
local file and serves it again when the file was rewritten in place with the same size and time). Hub datasets
go through `datasets`. Every refusal names the file and the line or row (and the field), before anything is written.
"""

from __future__ import annotations

import bisect
import codecs
import copy
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from w2s.align import align, token_byte_spans
from w2s.errors import DataError
from w2s.tokens import Encoded, EncodingError, encode_example

if TYPE_CHECKING:  # annotations only: importing either takes about a second, and commands that load no model
    import datasets  # (`w2s --help`, `w2s verify`) import this module through w2s.eval.responses
    from transformers import PreTrainedTokenizerBase

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}
"""Suffixes of local data files, and the format each is read as (a dataset folder holds one format)."""


@dataclass(frozen=True)
class StrongSide:
    """A row as the strong model sees it, in a cross-tokenizer cache (`w2s.schemas.cache`): its own ids, and the
    chunks (`w2s.align`) of its response tokens and of the weak pair's, EOS the last chunk of both."""

    input_ids: list[int]
    """Strong prompt + response + EOS, as `w2s.tokens.encode_example` gives them with the strong tokenizer."""
    prompt_len: int
    chunk_of: list[int]
    """Chunk of each strong response token (EOS included), 0, 1, ... non-decreasing."""
    weak_chunk: list[int]
    """Chunk of each weak response token (EOS included)."""
    num_chunks: int


@dataclass(frozen=True)
class Row:
    """One example, ready to score."""

    row_id: int
    example_id: str
    input_ids: list[int]
    """Prompt + response (+ EOS) under the weak pair's tokenizer: what the weak pair scores."""
    prompt_len: int
    truncated: bool
    strong: StrongSide | None = None
    """Only in a cross-tokenizer cache: the row under the strong model's tokenizer (what is stored and trained)."""


class Records(Sequence):
    """The rows of local data files, in file order; each knows its file and its row there (for messages)."""

    def __init__(self, files: list[tuple[Path, list[dict]]]):
        self._rows = [record for _, records in files for record in records]
        self._names = [str(path) for path, _ in files]
        self._starts = list(accumulate([len(records) for _, records in files], initial=0))[:-1]
        self._order: Sequence[int] = range(len(self._rows))  # positions in _rows; `select` narrows it

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, index: int) -> dict:
        return self._rows[self._order[index]]

    def __iter__(self) -> Iterator[dict]:
        return (self._rows[position] for position in self._order)

    def select(self, indices: Iterable[int]) -> Records:
        """These rows at `indices`, as `datasets.Dataset.select` gives them."""
        chosen = copy.copy(self)
        chosen._order = [self._order[i] for i in indices]
        return chosen

    def locate(self, index: int) -> tuple[str, int]:
        """The file row `index` comes from, and its row there (from 0)."""
        position = self._order[index]
        file = bisect.bisect_right(self._starts, position) - 1
        return self._names[file], position - self._starts[file]


def _why(err: Exception) -> str:
    return " ".join(str(err).split())[:300] or type(err).__name__


def data_files(path: Path) -> list[Path]:
    """The data files of a local source: the file itself, or every data file of a folder (hidden entries, such as
    .DS_Store, are ignored). Refuses anything else in the folder rather than guess what it is."""
    if not path.is_dir():
        if path.suffix not in LOCAL_FORMATS:
            raise DataError(f"{path}: not a jsonl, json, parquet or arrow file (or a folder of them)")
        return [path]
    entries = sorted(entry for entry in path.iterdir() if not entry.name.startswith("."))
    stray = [f"{e.name}/" if e.is_dir() else e.name for e in entries if e.is_dir() or e.suffix not in LOCAL_FORMATS]
    if stray:
        shown = ", ".join(stray[:5]) + (f" and {len(stray) - 5} more" if len(stray) > 5 else "")
        raise DataError(
            f"{path}: entries that are not data files: {shown} (a dataset folder holds only .jsonl/.json, "
            ".parquet or .arrow files of one format; hidden files are ignored)"
        )
    if len({LOCAL_FORMATS[e.suffix] for e in entries}) > 1:
        kinds = ", ".join(f"{e.name} ({LOCAL_FORMATS[e.suffix]})" for e in entries)
        raise DataError(f"{path}: mixes data formats: {kinds}; a dataset folder holds files of one format")
    if not entries:
        raise DataError(f"{path}: no data files (.jsonl, .json, .parquet or .arrow) in the folder")
    return entries


def decode_utf8(path: Path, data: bytes) -> str:
    """`data` as UTF-8 text; refuses a bad byte naming its line and column (bytes from 1)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line, line_start = data.count(b"\n", 0, err.start) + 1, data.rfind(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path}: line {line}: not valid UTF-8 "
            f"(byte 0x{data[err.start]:02x} at column {err.start - line_start + 1})"
        ) from None


def _json_type(value: object) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), "null"
    )


def parse_json_lines(path: Path, text: str) -> list[dict]:
    """One JSON object per non-blank line."""
    records = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {number}: invalid JSON: {err.msg} (column {err.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {number}: a row must be a JSON object, got {_json_type(record)}")
        records.append(record)
    return records


def parse_json(path: Path, text: str) -> list[dict]:
    """A .json file: an array of row objects, one object (one row), or JSON lines (as `datasets` reads them)."""
    try:
        value = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # more than one document: JSON lines
            return parse_json_lines(path, text)
        raise DataError(f"{path}: line {err.lineno}: invalid JSON: {err.msg} (column {err.colno})") from None
    records = value if isinstance(value, list) else [value]
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{path}: item {index}: a row must be a JSON object, got {_json_type(record)}")
    return records


def parse_columnar(path: Path, data: bytes) -> list[dict]:
    """A Parquet file, or an Arrow IPC file (stream or file format, as `datasets` writes and reads them)."""
    kind = LOCAL_FORMATS[path.suffix]
    try:
        if kind == "parquet":
            return pq.read_table(pa.BufferReader(data)).to_pylist()
        try:
            return pa.ipc.open_stream(pa.BufferReader(data)).read_all().to_pylist()
        except pa.ArrowInvalid:
            return pa.ipc.open_file(pa.BufferReader(data)).read_all().to_pylist()
    except (pa.ArrowException, OSError, ValueError) as err:  # pyarrow's ways of saying "not this format"
        raise DataError(f"{path}: not a readable {kind} file: {_why(err)}") from None


def parse_file(path: Path, data: bytes) -> list[dict]:
    """The rows in one local file's bytes."""
    if LOCAL_FORMATS[path.suffix] != "json":
        return parse_columnar(path, data)
    text = decode_utf8(path, data).removeprefix(codecs.BOM_UTF8.decode())
    return parse_json_lines(path, text) if path.suffix == ".jsonl" else parse_json(path, text)


def read_local(path: Path) -> tuple[Records, str]:
    """The rows of a local file or folder, and the sha256 of the very bytes they were parsed from."""
    digest, files = hashlib.sha256(), []
    for file in data_files(path):
        data = file.read_bytes()  # read once: hashed and parsed from the same bytes
        digest.update(data)
        files.append((file, parse_file(file, data)))
    return Records(files), f"sha256:{digest.hexdigest()}"


def load_rows(source: str, split: str = "train") -> tuple[Records | datasets.Dataset, str]:
    """Loads a local jsonl/json/parquet/arrow file (or a folder of them), or a hub dataset by name.

    Returns:
        The rows (each a dict), and a fingerprint of their content: the sha256 of local files' bytes, else the
        `datasets` fingerprint.

    Raises:
        DataError: a missing or unreadable file, an untidy folder, no rows; naming the file and line.
    """
    path = Path(source).expanduser()
    if path.exists():
        dataset, fingerprint = read_local(path)
    elif path.suffix in LOCAL_FORMATS or source.startswith(("/", ".", "~")):
        raise DataError(f"{source}: no such file or folder")
    else:
        import datasets  # only for a hub dataset (see the TYPE_CHECKING import above)

        try:
            dataset = datasets.load_dataset(source, split=split)
        except Exception as err:  # datasets raises many types for unreadable input; all mean the same to a user
            raise DataError(f"{source}: cannot read the dataset: {type(err).__name__}: {_why(err)}") from err
        fingerprint = f"datasets:{dataset._fingerprint}"
    if len(dataset) == 0:
        raise DataError(f"{source}: no rows")
    return dataset, fingerprint


def check_encodable(text: str, field: str, where: str) -> str:
    """`text`, refused (naming `where` and the field) when it cannot be encoded as UTF-8: a lone surrogate such as
    "\\ud800", which a JSON escape can spell, would otherwise fail deep in a tokenizer or a shard writer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DataError(
            f"{where}: field '{field}' holds text that cannot be encoded as UTF-8 "
            f"(the lone surrogate {text[err.start]!r} at character {err.start})"
        ) from None
    return text


def _text_field(record: dict, field: str, where: str) -> str:
    if field not in record or record[field] is None:
        raise DataError(f"{where}: field '{field}' is missing")
    if not isinstance(record[field], str):
        raise DataError(f"{where}: field '{field}' must be a string, got {type(record[field]).__name__}")
    return check_encodable(record[field], field, where)


def check_messages(messages: list, name: str, where: str) -> None:
    """Refuses a chat message without a 'role' or a string 'content', or whose text cannot be encoded, naming
    `where` and the field's index."""
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or "role" not in message:
            raise DataError(f"{where}: field '{name}[{i}]' must have a 'role' and a string 'content'")
        check_encodable(message["content"], f"{name}[{i}].content", where)
        check_encodable(str(message["role"]), f"{name}[{i}].role", where)


def _prompt_and_response(record: dict, fields: dict, where: str) -> tuple[str | list[dict], str]:
    """Prompt and response of one record, from prompt/response fields or from a chat messages field."""
    if not fields["messages_field"]:
        return _text_field(record, fields["prompt_field"], where), _text_field(record, fields["response_field"], where)
    name = fields["messages_field"]
    messages = record.get(name)
    if not isinstance(messages, list) or len(messages) < 2:
        raise DataError(f"{where}: field '{name}' must be a list of at least two chat messages")
    check_messages(messages, name, where)
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: field '{name}': the last message must be the assistant's response")
    return messages[:-1], messages[-1]["content"]


def locate(dataset: Sequence[dict] | datasets.Dataset, source: str, row_id: int) -> tuple[str, int]:
    """The file and row (there) of row `row_id`: local rows know their own file, hub rows are named by `source`."""
    return dataset.locate(row_id) if isinstance(dataset, Records) else (source, row_id)


def strong_side(
    strong_tokenizer: PreTrainedTokenizerBase,
    weak_tokenizer: PreTrainedTokenizerBase,
    prompt: str | list[dict],
    response: str,
    weak: Encoded,
    settings: tuple[int, bool, str],
    where: str,
) -> StrongSide:
    """One record tokenised the strong model's way (its own chat template; a plain-text prompt gets its BOS), and
    the chunks of the response text's two tokenizations (`w2s.align`; EOS a chunk of its own on both sides).

    Args:
        weak: the record as the weak pair's tokenizer encoded it (no truncation: refused in cross-tokenizer mode).
        settings: max_len, use_chat_template and the prompt's field.
    """
    max_len, use_chat_template, prompt_field = settings
    names = {"strong": f"strong tokenizer {strong_tokenizer.name_or_path}", "weak": "weak tokenizer"}
    try:
        encoded = encode_example(strong_tokenizer, prompt, response, max_len, False, use_chat_template, prompt_field)
    except EncodingError as err:  # truncation cannot be the fix here: it is refused across tokenizers
        why = str(err).replace("set truncation to cut the response", "raise max_len: no truncation across tokenizers")
        raise DataError(f"{where}: {names['strong']}: {why}") from err
    strong = token_byte_spans(strong_tokenizer, response, f"{where}: field 'response', {names['strong']}")
    weak_spans = token_byte_spans(weak_tokenizer, response, f"{where}: field 'response', {names['weak']}")
    for side, spans, ids in (("strong", strong, encoded), ("weak", weak_spans, weak)):
        if spans.ids != ids.input_ids[ids.prompt_len : -1]:  # both encode the response on its own: never differ
            raise DataError(f"{where}: {names[side]}: the response's ids differ when tokenised for alignment")
    alignment = align(strong.spans, weak_spans.spans, strong.num_bytes, eos=True)
    return StrongSide(
        encoded.input_ids, encoded.prompt_len, alignment.strong_chunk, alignment.weak_chunk, alignment.num_chunks
    )


def encode_rows(
    dataset: Sequence[dict] | datasets.Dataset,
    source: str,
    tokenizer: PreTrainedTokenizerBase,
    fields: dict,
    max_len: int,
    truncate: bool,
    use_chat_template: bool,
    strong_tokenizer: PreTrainedTokenizerBase | None = None,
) -> list[Row]:
    """Validates and tokenises every record, in dataset order (row_id = position in the dataset). Every text field
    is user text: one that spells a special token is tokenised as text, never as the control token (`w2s.tokens`),
    and one that cannot be encoded as UTF-8 (a lone surrogate) is refused.

    Args:
        dataset: rows from `load_rows` (local rows are named by their own file and row in messages).
        tokenizer: the weak pair's tokenizer.
        fields: prompt_field, response_field, messages_field and id_field names.
        strong_tokenizer: a cross-tokenizer cache's strong tokenizer (each row then has its `StrongSide`; the
            caller refuses `truncate` with it); None: the weak pair's tokenizer is the strong model's too.

    Raises:
        DataError: naming the file, the row and the field of the first bad record.
    """
    rows: list[Row] = []
    seen_ids: dict[str, int] = {}
    prompt_field = fields["messages_field"] or fields["prompt_field"]
    for row_id, record in enumerate(dataset):
        file, row = locate(dataset, source, row_id)
        where = f"{file}: row {row}"
        prompt, response = _prompt_and_response(record, fields, where)
        example_id = example_id_of(record, fields["id_field"], where, row_id)
        if example_id in seen_ids:
            first_file, first_row = locate(dataset, source, seen_ids[example_id])
            first = f"row {first_row}" if first_file == file else f"{first_file}: row {first_row}"
            raise DataError(
                duplicate_id(where, first, example_id, fields["id_field"], record, dataset[seen_ids[example_id]])
            )
        seen_ids[example_id] = row_id
        try:
            encoded = encode_example(tokenizer, prompt, response, max_len, truncate, use_chat_template, prompt_field)
        except EncodingError as err:
            raise DataError(f"{where}: {err}") from err
        strong = None
        if strong_tokenizer is not None:
            settings = (max_len, use_chat_template, prompt_field)
            strong = strong_side(strong_tokenizer, tokenizer, prompt, response, encoded, settings, where)
        rows.append(Row(row_id, example_id, encoded.input_ids, encoded.prompt_len, encoded.truncated, strong))
    if not rows:
        raise DataError(f"{source}: no rows")
    return rows


def duplicate_id(where: str, first: str, example_id: str, field: str, record: dict, first_record: dict) -> str:
    """The refusal of a second row with `example_id`, saying which of the two made it up (a row without an id
    gets `row-<position>`, which a row that names its own id may already hold)."""
    made = [not field or row.get(field) is None for row in (record, first_record)]
    if made[0] or made[1]:
        whose = "this row has" if made[0] else f"{first} has"
        return (
            f"{where}: duplicate example_id {example_id!r} (first at {first}): {whose} no '{field}' and was given "
            "it from its position; give every row an id, or none"
        )
    return f"{where}: field '{field}': duplicate example_id {example_id!r} (first at {first})"


def example_id_of(record: dict, field: str, where: str, row: int) -> str:
    """A row's id as text: a non-empty string or an integer from `field`, or `row-<n>` when the field is unset or
    absent; anything else (a boolean, a float such as NaN, a list or mapping, an empty string) is refused rather
    than stored as its Python spelling.

    Raises:
        DataError: naming `where` and the field.
    """
    value = record.get(field) if field else None
    if value is None:
        return f"row-{row}"
    if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: field '{field}' must be a non-empty string or an integer, got {value!r}")
    return check_encodable(str(value), field, where)
