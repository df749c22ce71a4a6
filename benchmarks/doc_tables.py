"""The one way generated tables get into the docs: a report's markdown written between two markers of a page, so
that every measured table is a report's output and never typed by hand.

    .venv/bin/python benchmarks/doc_tables.py length --report runs/science-length/length_report.json \
        --docs docs/search.md
    .venv/bin/python benchmarks/doc_tables.py search-compare --report runs/search-compare/report.json \
        --docs docs/search.md
    .venv/bin/python benchmarks/doc_tables.py dtype-claims --docs docs/performance.md

Without --docs the tables are printed. Other benchmarks (science_table.py, search_speed.py, startup.py,
cache_real.py, train_step.py) write their own tables through `write_between`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from w2s.io import atomic_write_text  # noqa: E402


def markers(name: str, style: str = "slash") -> tuple[str, str]:
    """A table's two markers: `<!-- name -->` ... `<!-- /name -->` (slash), or `<!-- name:begin -->` ...
    `<!-- name:end -->` (begin)."""
    if style == "begin":
        return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    return f"<!-- {name} -->", f"<!-- /{name} -->"


def replace_between_markers(text: str, body: str, pair: tuple[str, str]) -> str:
    """`text` with everything between the two markers replaced by `body`; ValueError when a marker is missing."""
    start, end = (text.find(marker) for marker in pair)
    if start < 0 or end < start:
        raise ValueError(f"the file needs {pair[0]} and, after it, {pair[1]}")
    return text[: start + len(pair[0])] + "\n" + body.rstrip() + "\n" + text[end:]


def write_between(page: Path, pair: tuple[str, str], body: str) -> None:
    """Writes `body` between the page's markers, atomically (a page is never left half-written)."""
    atomic_write_text(page, replace_between_markers(page.read_text(), body, pair))


def merged_reports(paths: list[Path]) -> dict:
    """One report from the JSONs of runs that measured separate parts: a mapping value is merged key by key
    (later files win on a shared key), any other value is the last file's."""
    merged: dict = {}
    for path in paths:
        for key, value in json.loads(path.read_text()).items():
            merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return merged


def _length(report: dict) -> str:
    from w2s.science.length import markdown

    return markdown(report)


def _search_compare(report: dict) -> str:
    from w2s.science.search_compare import report_text

    return report_text(report)


def _dtype_claims(report: dict) -> str:
    from w2s.science.compare_runs import markdown

    return markdown(report)


TABLES = {
    "length": (_length, "length-table", REPO / "runs" / "science-length" / "length_report.json"),
    "search-compare": (_search_compare, "search-compare", REPO / "runs" / "search-compare" / "report.json"),
    "dtype-claims": (_dtype_claims, "dtype-claims", REPO / "docs" / "results" / "defaults" / "dtype_claims.json"),
}
"""name -> (the report's markdown, its markers' name, its default report): the experiments' tables."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=sorted(TABLES))
    parser.add_argument("--report", type=Path, help="the report.json (default: the experiment's own)")
    parser.add_argument("--docs", type=Path, help="write the tables between the table's markers of this file")
    args = parser.parse_args()
    render, name, default = TABLES[args.table]
    body = render(json.loads((args.report or default).read_text()))
    if args.docs is None:
        print(body)
        return 0
    write_between(args.docs, markers(name), body)
    print(f"{args.table} tables written into {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
