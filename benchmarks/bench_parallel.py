"""What ``fedsparse bench --parallel N`` does to a suite's wall time on this machine.

    python benchmarks/bench_parallel.py benchmarks/suites/smoke.yaml --widths 1 2 --repeats 2

Runs the suite from scratch at each width, interleaved (1, 2, 1, 2, ...) so the machine's drift
falls on both, and prints a Markdown table: wall seconds per repeat, the median, and the ratio
of each width's median to the first's.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path)
    parser.add_argument("--widths", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    walls: dict[int, list[float]] = {w: [] for w in args.widths}
    for _ in range(args.repeats):
        for width in args.widths:
            out = Path(tempfile.mkdtemp(prefix="bench-parallel-")) / "suite"
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "fedsparse.cli", "bench", str(args.suite),
                                   "--out", str(out), "--parallel", str(width)],
                                  capture_output=True, text=True)
            walls[width].append(time.perf_counter() - started)
            shutil.rmtree(out.parent, ignore_errors=True)
            if done.returncode != 0:
                raise SystemExit(f"--parallel {width} failed: {done.stderr[-2000:]}")
    first = statistics.median(walls[args.widths[0]])
    print(f"`python benchmarks/bench_parallel.py {args.suite} --widths "
          f"{' '.join(map(str, args.widths))} --repeats {args.repeats}`\n")
    print("| --parallel | wall s per repeat | median | vs --parallel " f"{args.widths[0]} |")
    print("|---|---|---|---|")
    for width, values in walls.items():
        median = statistics.median(values)
        print(f"| {width} | {', '.join(f'{v:.1f}' for v in values)} | {median:.1f} | "
              f"{median / first:.2f}x |")


if __name__ == "__main__":
    main()
