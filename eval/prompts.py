"""A prompt set, read once for every command that generates: `w2s generate`, `w2s search` and the prompt tasks.

Rows come from `w2s.data.load_rows` (local jsonl/json/parquet/arrow read by w2s itself, or a hub dataset),
so a bad file is named by file and line exactly as the cache names it. Each row becomes an `Example`: the prompt
(a text field, or chat messages whose last assistant message, if any, is kept as the reference), a unique id, and
the whole record for the task's metrics.
"""

from __future__ import annotations

from w2s.data import check_encodable, check_messages, example_id_of, load_rows, locate
from w2s.errors import DataError
from w2s.source import DataSource
from w2s.task import Example


def _messages(record: dict, name: str, where: str) -> tuple[list[dict], str | None]:
    """The prompt messages of a chat record and its reference (a last assistant message)."""
    messages = record.get(name)
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field '{name}' must be a non-empty list of chat messages")
    check_messages(messages, name, where)
    if messages[-1]["role"] == "assistant":
        messages, reference = messages[:-1], messages[-1]["content"]
        if not messages:
            raise DataError(f"{where}: field '{name}' holds only an assistant message, no prompt")
        return messages, reference
    return messages, None


def _example(record: dict, source: DataSource, where: str, row: int) -> Example:
    """One record as an example; DataError naming `where` and the field for a missing or mistyped one."""
    if source.messages_field:
        prompt, reference = _messages(record, source.messages_field, where)
    else:
        prompt, reference = record.get(source.prompt_field), None
        if not isinstance(prompt, str) or not prompt.strip():
            got = "missing" if prompt is None else "empty" if isinstance(prompt, str) else f"a {type(prompt).__name__}"
            raise DataError(f"{where}: field '{source.prompt_field}' must be a non-empty string, got {got}")
        check_encodable(prompt, source.prompt_field, where)
    if source.reference_field and isinstance(record.get(source.reference_field), str):
        reference = check_encodable(record[source.reference_field], source.reference_field, where)
    example_id = example_id_of(record, source.id_field, where, row)
    return Example(prompt, example_id, reference, dict(record))


def load_prompts(source: DataSource, limit: int = 0) -> tuple[list[Example], str]:
    """The prompt set's first `limit` rows (all when 0) as examples, and a fingerprint of the whole set.

    Raises:
        DataError: a missing or unreadable file, a bad row or a repeated id, naming the file and line.
    """
    dataset, fingerprint = load_rows(source.path, source.split)
    count = len(dataset) if limit <= 0 else min(limit, len(dataset))
    examples, seen = [], {}
    for row in range(count):
        file, line = locate(dataset, source.path, row)
        where = f"{file}: row {line}"  # rows counted from 0, as the cache names them
        example = _example(dict(dataset[row]), source, where, row)
        if example.example_id in seen:
            raise DataError(
                f"{where}: field '{source.id_field}': duplicate id {example.example_id!r} (first at row "
                f"{seen[example.example_id]})"
            )
        seen[example.example_id] = row
        examples.append(example)
    return examples, fingerprint
