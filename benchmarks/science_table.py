"""Prints the science report's tables (from report.json, never typed by hand) or writes them into a README.

    .venv/bin/python benchmarks/science_table.py [--report runs/science/report.json] [--readme README.md]

--readme FILE replaces the text between `<!-- science-table -->` and `<!-- /science-table -->` in FILE.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from w2s.eval.science_report import readme_text  # noqa: E402
from w2s.io import atomic_write_text  # noqa: E402

MARKERS = ("<!-- science-table -->", "<!-- /science-table -->")


def replace_between_markers(text: str, body: str) -> str:
    """`text` with everything between the two markers replaced by `body`; ValueError when a marker is missing."""
    start, end = (text.find(marker) for marker in MARKERS)
    if start < 0 or end < start:
        raise ValueError(f"the file needs {MARKERS[0]} and, after it, {MARKERS[1]}")
    return text[: start + len(MARKERS[0])] + "\n" + body.rstrip() + "\n" + text[end:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", type=Path, default=REPO / "runs" / "science" / "report.json")
    parser.add_argument("--readme", type=Path, help="write the tables between the science-table markers")
    args = parser.parse_args()
    body = readme_text(json.loads(args.report.read_text()))
    if args.readme is None:
        print(body)
        return 0
    atomic_write_text(args.readme, replace_between_markers(args.readme.read_text(), body))
    print(f"science tables written into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
