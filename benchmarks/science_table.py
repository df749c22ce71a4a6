"""Prints the science report's tables (from report.json, never typed by hand) or writes them into a markdown file
(docs/science.md, docs/science_real.md, the README's summary).

    .venv/bin/python benchmarks/science_table.py [--report runs/science/report.json] [--readme docs/science.md]
    .venv/bin/python benchmarks/science_table.py --report runs/science-real/report.json --readme docs/science_real.md
    .venv/bin/python benchmarks/science_table.py --report runs/science-real/report.json --readme README.md \
        --claims --marker science-real-summary

--readme FILE replaces the text between `<!-- science-table -->` and `<!-- /science-table -->` (or the markers
named by --marker) in FILE. --claims writes only the claims and their verdicts (a summary).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.doc_tables import markers, write_between  # noqa: E402
from w2s.science.report import claims_summary, readme_text  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", type=Path, default=REPO / "runs" / "science" / "report.json")
    parser.add_argument("--readme", type=Path, help="write the tables between the science-table markers")
    parser.add_argument("--marker", default="science-table", help="the markers' name (default %(default)s)")
    parser.add_argument("--claims", action="store_true", help="only the claims and their verdicts")
    args = parser.parse_args()
    report = json.loads(args.report.read_text())
    body = claims_summary(report) if args.claims else readme_text(report)
    if args.readme is None:
        print(body)
        return 0
    write_between(args.readme, markers(args.marker), body)
    print(f"science tables written into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
