"""`w2s export`: a summarisation dataset (XSUM by default) as the prompt/response jsonl the other commands read.

Reads through `datasets` (a hub name, or a local file/folder of the same columns) and writes one row per
document: `id`, `prompt` (the document put into `prompt_template`) and `response` (the reference summary). The
cache reads `response` as the text to score; `w2s generate` and the tasks read `prompt` and keep `response` as
the reference.

    w2s export --config configs/paper_xsum_qwen2.yaml split=train   # -> {run_root}/data/xsum-train.jsonl
    w2s export --config configs/paper_xsum_qwen2.yaml split=test
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from w2s.config import require
from w2s.errors import DataError
from w2s.eval.responses import to_jsonl
from w2s.io import atomic_write_text
from w2s.runs import FolderRefused, claim


@dataclass
class ExportConfig:
    """Which dataset to export, with which prompt template, to which file."""

    dataset: str = "EdinburghNLP/xsum"
    """A hub dataset name, or a local jsonl/json/parquet/arrow file or folder with the same columns."""
    split: str = "test"
    """Split to export (train, validation or test for XSUM; local files load as 'train')."""
    out: str = "{run_root}/data/xsum-{split}.jsonl"
    """Output jsonl; `{split}` is replaced by the split."""
    prompt_template: str = "summarize : {document}"
    """The prompt of each row: `{document}` is replaced by the document (the only placeholder allowed)."""
    document_field: str = "document"
    """Column holding the document."""
    summary_field: str = "summary"
    """Column holding the reference summary (written as `response`)."""
    id_field: str = "id"
    """Column holding the example id."""
    limit: int = 0
    """Only the first N rows (0: all)."""

    def __post_init__(self) -> None:
        names = {name for _, name, _, _ in string.Formatter().parse(self.prompt_template) if name is not None}
        require(
            names == {"document"},
            "export.prompt_template",
            f"must use {{document}} and no other placeholder, got {sorted(names)} (write literal braces as {{{{ }}}})",
        )
        require(self.limit >= 0, "export.limit", f"must be >= 0 (0: all), got {self.limit}")


def export_row(record: dict, config: ExportConfig, where: str) -> dict:
    """One exported row; DataError naming `where` and the column when a document or summary is not text."""
    for field in (config.document_field, config.summary_field):
        if not isinstance(record.get(field), str) or not record[field].strip():
            raise DataError(f"{where}: field '{field}' must be a non-empty string")
    return {
        "id": str(record.get(config.id_field, where)),
        "prompt": config.prompt_template.format(document=record[config.document_field].strip()),
        "response": record[config.summary_field].strip(),
    }


def run(config: ExportConfig) -> Path:
    """Writes the export atomically and returns its path."""
    from w2s.data import load_rows, locate  # here, not at the top: w2s.data imports datasets and transformers,
    # and ExportConfig is read by every command's start-up (`w2s --help` included)

    dataset, fingerprint = load_rows(config.dataset, config.split)
    count = len(dataset) if config.limit == 0 else min(config.limit, len(dataset))
    rows = []
    for index in range(count):
        file, row = locate(dataset, config.dataset, index)
        rows.append(export_row(dict(dataset[index]), config, f"{file}: row {row}"))
    out = Path(config.out.replace("{split}", config.split))
    with claim(out.parent, "export", inputs={"dataset": config.dataset}) as folder:  # one folder of exports, ours
        published = list(folder.marker.get("published", {}))
        if out.exists() and out.name not in published:
            raise FolderRefused(f"{out}: already there and not written by `w2s export`; choose another export.out")
        atomic_write_text(out, to_jsonl(rows))
        folder.finish(sorted({*published, out.name} & {p.name for p in out.parent.iterdir()}))
    Console().print(f"[green]exported[/green] {len(rows)} rows of {config.dataset} ({config.split}) to {out}")
    return out
