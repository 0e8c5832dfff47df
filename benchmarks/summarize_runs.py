"""Print a markdown table of the runs under a folder, costs relative to the first FedAvg run.

    python benchmarks/summarize_runs.py runs/pfedgate-fmnist [runs.json]
"""

from __future__ import annotations

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
    print("| run | method | budgets | acc mean | bottom decile | global | FLOPs vs FedAvg | "
          "memory vs dense | upload vs FedAvg | density | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in summaries:
        tiers = s["budget"]["tiers"]
        budgets = ",".join(f"{t['density']:g}:{t['share']:g}" for t in tiers) \
            if isinstance(tiers, list) else tiers
        flops = s["cost"]["train_flops"] / base["cost"]["train_flops"]
        upload = s["cost"]["upload_bytes"] / base["cost"]["upload_bytes"]
        name = Path(s["run_dir"]).name.rsplit("-", 2)[0]
        memory = s["cost"].get("memory_bytes_ratio") or float("nan")
        glob = s["accuracy"].get("global") or float("nan")
        print(f"| {name} | {s['method']} | {budgets} | {s['accuracy']['mean']:.4f} | "
              f"{s['accuracy']['bottom_decile']:.4f} | {glob:.4f} | {flops:.3f} | {memory:.3f} | "
              f"{upload:.3f} | "
              f"{s['cost']['density']:.3f} | {s['wall_seconds']:.0f} |")


if __name__ == "__main__":
    main()
