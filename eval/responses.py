"""The responses folder `w2s generate` and `w2s search` write: the one owner of its files.

    out_dir/
      run.json             what made it: system, sampling settings, models, prompt set fingerprint
      parts/part-00000.jsonl   prompts [0, save_every), each part written atomically once complete
      responses.jsonl      every record, in prompt order (written last, atomically)
      model_outputs.json   AlpacaEval's format: [{instruction, output, generator}], for alpaca_eval and other judges
      summary.json         counts, means and seconds

A record holds the prompt's id, the prompt, the response text and tokens, and its cost: the strong tokens
sampled and the weak tokens scored, so that sampling, search, best-of-N and EFT are compared at stated compute.
"""

from __future__ import annotations

import json
from pathlib import Path

from w2s.data import decode_utf8, parse_json_lines
from w2s.errors import DataError
from w2s.io import atomic_write_text

RUN = "run.json"
PARTS = "parts"
RESPONSES = "responses.jsonl"
ALPACA_EVAL = "model_outputs.json"
SUMMARY = "summary.json"
PUBLISHED = (RUN, RESPONSES, ALPACA_EVAL, SUMMARY)
"""What a finished run publishes (`w2s.runs` records their sha256; a rerun checks them)."""
ARTEFACTS = (PARTS, RESPONSES, ALPACA_EVAL, SUMMARY)
"""What a fresh start clears (run.json is rewritten by every claim)."""

RECORD_KEYS = ("id", "prompt", "output", "token_ids", "strong_tokens", "weak_tokens", "generator")
"""Keys every record has (plus weak_score, finished, seconds); a part missing one was not written by w2s."""


def part_path(out_dir: Path, index: int) -> Path:
    return out_dir / PARTS / f"part-{index:05d}.jsonl"


def to_jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def write_part(out_dir: Path, index: int, records: list[dict]) -> None:
    """Publishes one complete part (temporary name, then rename): a killed run leaves whole parts or none."""
    atomic_write_text(part_path(out_dir, index), to_jsonl(records))


def read_records(path: Path) -> list[dict]:
    """The records of a part or of responses.jsonl.

    Raises:
        DataError: naming the file and line of a record that is not UTF-8, not a JSON object or lacks a key.
    """
    records = parse_json_lines(path, decode_utf8(path, path.read_bytes()))
    for number, record in enumerate(records, 1):
        missing = [key for key in RECORD_KEYS if key not in record]
        if missing:
            raise DataError(f"{path}: record {number}: not a w2s response record (missing {missing})")
    return records


def read_part(out_dir: Path, index: int, expected_ids: list[str]) -> list[dict] | None:
    """A finished part, or None when it is not there; a part whose ids are not the expected ones (another prompt
    set, another save_every) is refused rather than mixed in."""
    path = part_path(out_dir, index)
    if not path.is_file():
        return None
    records = read_records(path)
    ids = [str(record["id"]) for record in records]
    if len(ids) < len(expected_ids) and ids == expected_ids[: len(ids)]:
        return None  # the last part of a run with a smaller `limit`: generated again, whole
    if ids != expected_ids:
        raise DataError(f"{path}: holds prompt ids {ids[:3]}..., expected {expected_ids[:3]}... (another prompt set?)")
    return records


def instruction_of(prompt: str | list[dict]) -> str:
    """AlpacaEval's `instruction`: the prompt text, or the last user message of chat messages."""
    if isinstance(prompt, str):
        return prompt
    users = [message["content"] for message in prompt if message["role"] == "user"]
    return users[-1] if users else prompt[-1]["content"]


def publish(out_dir: Path, records: list[dict], summary: dict) -> None:
    """Writes responses.jsonl, model_outputs.json and summary.json, each atomically; summary.json goes last,
    so its presence means the other two are complete."""
    atomic_write_text(out_dir / RESPONSES, to_jsonl(records))
    alpaca = [
        {"instruction": instruction_of(r["prompt"]), "output": r["output"], "generator": r["generator"]}
        for r in records
    ]
    atomic_write_text(out_dir / ALPACA_EVAL, json.dumps(alpaca, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out_dir / SUMMARY, json.dumps(summary, indent=2, sort_keys=True) + "\n")


def responses_file(path: Path) -> Path:
    """A responses file, or a responses folder's responses.jsonl."""
    return path / RESPONSES if path.is_dir() else path


def read_responses(path: Path) -> list[dict]:
    """The records of a responses file (or of a responses folder's responses.jsonl)."""
    path = responses_file(path)
    if not path.is_file():
        raise DataError(f"{path}: no such responses file (run `w2s generate` first)")
    return read_records(path)
