"""Print a markdown table of the runs under a folder, costs relative to the first FedAvg run.

    python benchmarks/summarize_runs.py runs/pfedgate-fmnist [runs.json]
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def main() -> None:
    root = Path(sys.argv[1])
    summaries = [json.loads(p.read_text()) for p in sorted(root.rglob("summary.json"))]
    if not summaries:
        sys.exit(f"no summary.json under {root}: pass the folder the runs were written to")
    if len(sys.argv) > 2:  # a JSON copy of what the table shows
        Path(sys.argv[2]).write_text(json.dumps(
            [{k: s.get(k) for k in ("run_dir", "method", "budget", "accuracy", "cost", "clock",
                                    "wall_seconds")} for s in summaries], indent=1))
    base = next((s for s in summaries if s["method"] in ("dense", "fedavg-ft")), summaries[0])
    base_round = round_seconds(base)
    print("| run | method | budgets | acc mean | bottom decile | global | acc by density | "
          "FLOPs vs FedAvg | conv+linear FLOPs vs FedAvg | memory vs dense | peak memory | "
          "activations vs dense | peak with activations | upload vs FedAvg | "
          "density | round s vs FedAvg | sim s to target | sim s total | wall s |")
    print("|" + "---|" * 19)
    for s in summaries:
        tiers = s["budget"]["tiers"]
        budgets = ",".join(f"{t['density']:g}:{t['share']:g}" for t in tiers) \
            if isinstance(tiers, list) else tiers
        flops = s["cost"]["train_flops"] / base["cost"]["train_flops"]
        conv_linear = (s["cost"].get("conv_linear_flops") or float("nan")) \
            / (base["cost"].get("conv_linear_flops") or float("nan"))
        seconds = round_seconds(s) / base_round
        upload = s["cost"]["upload_bytes"] / base["cost"]["upload_bytes"]
        name = Path(s["run_dir"]).name.rsplit("-", 2)[0]
        memory = s["cost"].get("memory_bytes_ratio") or float("nan")
        peaks = " | ".join(f"{s['cost'].get(k) or float('nan'):.3f}" for k in (
            "memory_bytes_peak_ratio", "activation_bytes_ratio", "training_bytes_peak_ratio"))
        glob = s["accuracy"].get("global") or float("nan")
        clock = s.get("clock") or {}
        to_target = clock.get("time_to_target")
        print(f"| {name} | {s['method']} | {budgets} | {s['accuracy']['mean']:.4f} | "
              f"{s['accuracy']['bottom_decile']:.4f} | {glob:.4f} | {by_density(s)} | "
              f"{flops:.3f} | {conv_linear:.3f} | {memory:.3f} | {peaks} | {upload:.3f} | "
              f"{s['cost']['density']:.3f} | {seconds:.2f} | "
              f"{'-' if to_target is None else f'{to_target:.1f}'} | "
              f"{clock.get('total_seconds', float('nan')):.1f} | {s['wall_seconds']:.0f} |")


def round_seconds(summary: dict) -> float:
    """Median wall seconds of the rounds that trained and did not evaluate (metrics.jsonl): one
    local epoch of the sampled clients plus the round's overhead."""
    path = Path(summary["run_dir"]) / "metrics.jsonl"
    if not path.exists():
        return float("nan")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    times = sorted(r["seconds"] for r in rows if "seconds" in r and "accuracy_mean" not in r)
    return times[len(times) // 2] if times else float("nan")


def by_density(summary: dict) -> str:
    """Mean client accuracy per declared density, from the run's clients.csv."""
    path = Path(summary["run_dir"]) / "clients.csv"
    if not path.exists():
        return "-"
    groups: dict[float, list[float]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            groups.setdefault(float(row["budget_density"]), []).append(float(row["accuracy"]))
    return " ".join(f"{d:g}: {sum(v) / len(v):.3f}" for d, v in sorted(groups.items()))

if __name__ == "__main__":
    main()
