"""Paste a suite's generated leaderboard into a Markdown file, between its markers.

    python benchmarks/paste_results.py bench/fmnist-pfedgate README.md BENCHMARKS.md

Each file holds ``<!-- bench:SUITE -->`` ... ``<!-- /bench:SUITE -->`` (replaced by the suite
folder's ``leaderboard.md``, with its header: commit, date, machine, command) or
``<!-- bench-headline:SUITE -->`` ... ``<!-- /bench-headline:SUITE -->`` (replaced by its short
``headline.md``, what README carries), so no result in the docs is typed by hand.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from fedsparse.bench.leaderboard import HEADLINE_MD, REPORT_MD, collect


def paste(suite_dir: Path, target: Path) -> None:
    name = collect(suite_dir).suite.name
    text = target.read_text()
    found = False
    for marker, report in (("bench", REPORT_MD), ("bench-headline", HEADLINE_MD)):
        pattern = re.compile(rf"(<!-- {marker}:{re.escape(name)} -->\n).*?"
                             rf"(\n<!-- /{marker}:{re.escape(name)} -->)", re.DOTALL)
        if pattern.search(text):
            table = (suite_dir / report).read_text().strip()
            text = pattern.sub(lambda m, t=table: m.group(1) + t + m.group(2), text)
            found = True
    if not found:
        raise SystemExit(f"{target} has no <!-- bench:{name} --> or <!-- bench-headline:{name} --> "
                         "block: add one where the table belongs")
    target.write_text(text)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    for file in sys.argv[2:]:
        paste(Path(sys.argv[1]), Path(file))
