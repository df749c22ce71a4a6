"""Writes the length analysis' tables (from length_report.json, never typed by hand) into docs/search.md between
`<!-- length-table -->` and `<!-- /length-table -->`, or prints them.

    .venv/bin/python benchmarks/length_table.py --report runs/science-length/length_report.json [--docs docs/search.md]
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
from w2s.science.length import markdown  # noqa: E402

MARKERS = ("<!-- length-table -->", "<!-- /length-table -->")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", type=Path, default=REPO / "runs" / "science-length" / "length_report.json")
    parser.add_argument("--docs", type=Path, help="write the tables between the length-table markers of this file")
    args = parser.parse_args()
    body = markdown(json.loads(args.report.read_text()))
    if args.docs is None:
        print(body)
        return 0
    atomic_write_text(args.docs, replace_between_markers(args.docs.read_text(), body, MARKERS))
    print(f"length tables written into {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
