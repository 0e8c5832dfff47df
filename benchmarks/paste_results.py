"""Paste a suite's generated leaderboard into a Markdown file, between its markers.

    python benchmarks/paste_results.py bench/fmnist-pfedgate README.md BENCHMARKS.md docs/results.md \
        --results benchmarks/results --assets docs/assets

Each file holds ``<!-- bench:SUITE -->`` ... ``<!-- /bench:SUITE -->`` (replaced by the suite
folder's ``leaderboard.md``, with its header: commit, date, machine, command) or
``<!-- bench-headline:SUITE -->`` ... ``<!-- /bench-headline:SUITE -->`` (replaced by its short
``headline.md``, what README carries), so no result in the docs is typed by hand.
``--results DIR`` also keeps the suite's report, CSV, manifest, suite file and pictures under
``DIR/<suite>/`` (committed beside the tables), and ``--assets DIR`` its pictures under
``DIR/<suite>/`` for the docs site, which serves files from docs/ only.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from fedsparse.bench.leaderboard import HEADLINE_MD, REPORT_MD, collect


def paste(suite_dir: Path, target: Path) -> None:
    name = collect(suite_dir).suite.name
    text = target.read_text()
    found = False
    for marker, report in (("bench", REPORT_MD), ("bench-headline", HEADLINE_MD)):
        pattern = re.compile(rf"(<!-- {marker}:{re.escape(name)} -->\n)(?:.*?\n)?"
                             rf"(<!-- /{marker}:{re.escape(name)} -->)", re.DOTALL)
        if pattern.search(text):
            table = (suite_dir / report).read_text().strip()
            text = pattern.sub(lambda m, t=table: m.group(1) + t + "\n" + m.group(2), text)
            found = True
    if not found:
        raise SystemExit(f"{target} has no <!-- bench:{name} --> or <!-- bench-headline:{name} --> "
                         "block: add one where the table belongs")
    target.write_text(text)


def publish(suite_dir: Path, results: Path | None, assets: Path | None) -> None:
    name = collect(suite_dir).suite.name
    plots = sorted((suite_dir / "plots").glob("*.png"))
    if results is not None:
        target = results / name
        shutil.rmtree(target, ignore_errors=True)
        (target / "plots").mkdir(parents=True)
        for file in (REPORT_MD, HEADLINE_MD, "leaderboard.csv", "manifest.json", "suite.yaml"):
            if (suite_dir / file).is_file():
                shutil.copy2(suite_dir / file, target / file)
        for plot in plots:
            shutil.copy2(plot, target / "plots" / plot.name)
    if assets is not None:
        shutil.rmtree(assets / name, ignore_errors=True)
        (assets / name).mkdir(parents=True)
        for plot in plots:
            shutil.copy2(plot, assets / name / plot.name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite_dir", type=Path)
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--results", type=Path, help="keep the suite's report files here")
    parser.add_argument("--assets", type=Path, help="keep the suite's pictures here (docs)")
    args = parser.parse_args()
    for file in args.files:
        paste(args.suite_dir, file)
    publish(args.suite_dir, args.results, args.assets)
