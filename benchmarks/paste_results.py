"""Paste a suite's generated leaderboard into a Markdown file, between its markers.

    python benchmarks/paste_results.py bench/fmnist-pfedgate README.md BENCHMARKS.md

Each file holds ``<!-- bench:SUITE -->`` ... ``<!-- /bench:SUITE -->``; what lies between is
replaced by the suite folder's ``leaderboard.md`` (with its header: commit, date, machine,
command), so no result in the docs is typed by hand.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from fedsparse.bench.leaderboard import REPORT_MD, collect


def paste(suite_dir: Path, target: Path) -> None:
    name = collect(suite_dir).suite.name
    table = (suite_dir / REPORT_MD).read_text().strip()
    text = target.read_text()
    pattern = re.compile(rf"(<!-- bench:{re.escape(name)} -->\n).*?(\n<!-- /bench:{re.escape(name)} -->)",
                         re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{target} has no <!-- bench:{name} --> ... <!-- /bench:{name} --> block")
    target.write_text(pattern.sub(lambda m: m.group(1) + table + m.group(2), text))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    for file in sys.argv[2:]:
        paste(Path(sys.argv[1]), Path(file))
