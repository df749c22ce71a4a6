"""Writes the tree-search comparison's tables (from its report.json, never typed by hand) into docs/search.md.

    .venv/bin/python benchmarks/search_compare_table.py [--report runs/search-compare/report.json] \
        [--docs docs/search.md]

The tables go between `<!-- search-compare -->` and `<!-- /search-compare -->` in the docs file; without --docs
they are printed. The report comes from `python -m w2s.science.search_compare`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.science_table import replace_between_markers  # noqa: E402
from w2s.io import atomic_write_text  # noqa: E402
from w2s.science.search_compare import report_text  # noqa: E402

MARKERS = ("<!-- search-compare -->", "<!-- /search-compare -->")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", type=Path, default=REPO / "runs" / "search-compare" / "report.json")
    parser.add_argument("--docs", type=Path, help="write the tables between the search-compare markers")
    args = parser.parse_args()
    body = report_text(json.loads(args.report.read_text()))
    if args.docs is None:
        print(body)
        return 0
    atomic_write_text(args.docs, replace_between_markers(args.docs.read_text(), body, MARKERS))
    print(f"search comparison tables written into {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
