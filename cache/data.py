"""Reads the dataset a cache is built from and turns each row into scored token ids, refusing bad rows loudly.

Every refusal names the file, the row and the field, and is raised before anything is written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import datasets
from transformers import PreTrainedTokenizerBase

from w2s.errors import DataError
from w2s.tokens import EncodingError, encode_example

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}


@dataclass(frozen=True)
class Row:
    """One example, ready to score."""

    row_id: int
    example_id: str
    input_ids: list[int]
    prompt_len: int
    truncated: bool


def load_rows(source: str, split: str = "train") -> tuple[datasets.Dataset, str]:
    """Loads a local jsonl/json/parquet/arrow file (or a folder of them), or a hub dataset by name.

    Returns:
        The dataset, and a fingerprint of its content.
    """
    path = Path(source)
    try:
        if path.exists():
            files = [str(path)]
            if path.is_dir():
                files = sorted(str(f) for f in path.iterdir() if f.suffix in LOCAL_FORMATS)
            if not files or Path(files[0]).suffix not in LOCAL_FORMATS:
                raise DataError(f"{source}: not a jsonl, json, parquet or arrow file (or a folder of them)")
            builder = LOCAL_FORMATS[Path(files[0]).suffix]
            dataset = datasets.load_dataset(builder, data_files=files, split="train")
        else:
            dataset = datasets.load_dataset(source, split=split)
    except DataError:
        raise
    except Exception as err:  # datasets raises many types for unreadable input; all mean the same to a user
        raise DataError(f"{source}: cannot read the dataset: {type(err).__name__}: {err}") from err
    return dataset, dataset_fingerprint(source, dataset)


def dataset_fingerprint(source: str, dataset: datasets.Dataset) -> str:
    """sha256 of the local files' bytes when the source is local, else the `datasets` fingerprint."""
    path = Path(source)
    if not path.exists():
        return f"datasets:{dataset._fingerprint}"
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()) if path.is_dir() else [path]:
        digest.update(file.read_bytes())
    return f"sha256:{digest.hexdigest()}"


def _text_field(record: dict, field: str, where: str) -> str:
    if field not in record or record[field] is None:
        raise DataError(f"{where}: field '{field}' is missing")
    if not isinstance(record[field], str):
        raise DataError(f"{where}: field '{field}' must be a string, got {type(record[field]).__name__}")
    return record[field]


def _prompt_and_response(record: dict, fields: dict, where: str) -> tuple[str | list[dict], str]:
    """Prompt and response of one record, from prompt/response fields or from a chat messages field."""
    if not fields["messages_field"]:
        return _text_field(record, fields["prompt_field"], where), _text_field(record, fields["response_field"], where)
    name = fields["messages_field"]
    messages = record.get(name)
    if not isinstance(messages, list) or len(messages) < 2:
        raise DataError(f"{where}: field '{name}' must be a list of at least two chat messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or "role" not in message:
            raise DataError(f"{where}: field '{name}[{i}]' must have a 'role' and a string 'content'")
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: field '{name}': the last message must be the assistant's response")
    return messages[:-1], messages[-1]["content"]


def encode_rows(
    dataset: datasets.Dataset,
    source: str,
    tokenizer: PreTrainedTokenizerBase,
    fields: dict,
    max_len: int,
    truncate: bool,
    use_chat_template: bool,
) -> list[Row]:
    """Validates and tokenises every record, in dataset order (row_id = position in the dataset).

    Args:
        fields: prompt_field, response_field, messages_field and id_field names.

    Raises:
        DataError: naming `source`, the row and the field of the first bad record.
    """
    rows: list[Row] = []
    seen_ids: dict[str, int] = {}
    for row_id, record in enumerate(dataset):
        where = f"{source}: row {row_id}"
        prompt, response = _prompt_and_response(record, fields, where)
        example_id = record.get(fields["id_field"]) if fields["id_field"] else None
        example_id = f"row-{row_id}" if example_id is None else str(example_id)
        if example_id in seen_ids:
            raise DataError(f"{where}: field '{fields['id_field']}': duplicate example_id {example_id!r} "
                            f"(first at row {seen_ids[example_id]})")
        seen_ids[example_id] = row_id
        try:
            encoded = encode_example(tokenizer, prompt, response, max_len, truncate, use_chat_template)
        except EncodingError as err:
            raise DataError(f"{where}: {err}") from err
        rows.append(Row(row_id, example_id, encoded.input_ids, encoded.prompt_len, encoded.truncated))
    if not rows:
        raise DataError(f"{source}: the dataset has no rows")
    return rows
