"""Which strategy survives which attack: global accuracy with no attack, 20% liars and 20%
byzantine clients (``simulation.failure_kinds``), same data, seed and rounds for every run.

    python benchmarks/attacks.py [--out runs/attacks] [--json attacks.json]

Synthetic(0.5, 0.5) iid, 10 clients all sampled, 5 rounds, dense MLP; a liar claims 1000x its
examples and no samples seen, a byzantine client sends w - 10 (w' - w). Each run goes through the
real CLI, Flower and Ray. Prints a markdown table and writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_strategy" / "norm_clipped_fedavg.py"
STRATEGIES = {
    "fedavg": [],
    "masked-fedadam": ["--set", "strategy.options.server_lr=0.05"],
    "masked-median": [],
    "masked-trimmed-mean": ["--set", "strategy.options.trim=0.3"],
    f"{EXAMPLE}:NormClippedFedAvg": ["--set", "strategy.options.max_norm=1.0"],
}
ATTACKS = {"none": [], "liar": ["--inject-failures", "0.2", "--set", "simulation.failure_kinds=[liar]"],
           "byzantine": ["--inject-failures", "0.2", "--set",
                         "simulation.failure_kinds=[byzantine]"]}
BASE = ["--clients", "10", "--rounds", "5", "--fraction", "1", "--set", "data.synthetic.iid=true",
        "--method", "dense", "--budgets", "1.0:1", "--seed", "1", "--set", "eval.every=5"]


def run(out: Path, strategy: str, attack: str) -> dict:
    folder = out / f"{Path(strategy).stem.split(':')[-1]}-{attack}"
    subprocess.run([sys.executable, "-m", "fedsparse.cli", "simulate", "--out", str(folder), *BASE,
                    "--strategy", strategy, *STRATEGIES[strategy], *ATTACKS[attack]],
                   check=True, capture_output=True, text=True)
    (run_dir,) = folder.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"strategy": strategy.split(":")[-1], "attack": attack,
            "global_accuracy": summary["accuracy"]["global"],
            "updates_rejected": summary["failures"]["updates_rejected"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("runs/attacks"))
    parser.add_argument("--json", type=Path, default=Path("attacks.json"))
    args = parser.parse_args()
    rows = [run(args.out, s, a) for s in STRATEGIES for a in ATTACKS]
    print("| strategy | no attack | 20% liars (rejected) | 20% byzantine |")
    print("|---|---|---|---|")
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        cells = {r["attack"]: r for r in rows if r["strategy"] == strategy}
        print(f"| {strategy} | {cells['none']['global_accuracy']:.3f} | "
              f"{cells['liar']['global_accuracy']:.3f} ({cells['liar']['updates_rejected']}) | "
              f"{cells['byzantine']['global_accuracy']:.3f} |")
    args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
