"""Puts a benchmark's generated markdown into a docs page, between `<!-- NAME:begin -->` and `<!-- NAME:end -->`
markers, so that the page's tables are the benchmark's output and never typed by hand."""

from __future__ import annotations

from pathlib import Path


def replace_block(page: Path, name: str, markdown: str) -> None:
    """Replaces what lies between the page's `name` markers by `markdown` (the markers must be there)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = page.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{page}: no {begin} ... {end} markers to put the tables between")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    page.write_text(f"{head}{begin}\n{markdown.strip()}\n{end}{tail}")
