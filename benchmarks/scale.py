"""Scale: 100 and 1,000 clients with 10% sampled per round and 10,000 with 1%, through the real CLI.

    python benchmarks/scale.py [--rounds 5] [--method dense] [--sizes 100:0.1,1000:0.1,10000:0.01]
                               [--set simulation.nodes=N] [--json runs/scale.json]

For each size it runs ``fedsparse simulate`` (Synthetic data, MLP, evaluation only after the last
round) and reports the first round (it also pays the Ray actors' start: imports, data,
partitions), the median of the training-only rounds after it, the last round (which also
evaluates every client), the whole wall time (Ray start-up, handshake with every node), and
the peak resident and proportional memory of the whole process tree (the CLI, Ray's daemons and
workers; PSS shares each shared page out among the processes mapping it), sampled from /proc
every 0.2 s. Training-round time should follow the sampled clients, not the total.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


def tree_memory_bytes(root: int) -> tuple[int, int]:
    """Resident (RSS) and proportional (PSS) memory of ``root`` and all its descendants, from
    /proc. RSS counts a page shared by n processes n times (the memory-mapped data pool, torch's
    libraries); PSS counts 1/n of it in each, so the tree's PSS is the memory it really holds."""
    rss = pss = 0
    stack, seen = [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except OSError:
            continue
        stack += _children(pid)
    return rss, pss


def run_size(clients: int, fraction: float, rounds: int, method: str, out: Path,
             extra: list[str]) -> dict[str, float]:
    budgets = "1.0:1" if method == "dense" else "0.3:1"
    strategy = "fedavg" if method == "dense" else "masked-fedavg"
    argv = [sys.executable, "-m", "fedsparse.cli", "simulate", "--clients", str(clients),
            "--fraction", str(fraction), "--rounds", str(rounds), "--method", method, "--strategy", strategy,
            "--budgets", budgets, "--set", f"eval.every={rounds + 1}", "--set", "eval.final=true",
            "--set", "eval.global_model=false", "--set", "simulation.node_wait_timeout=600",
            "--out", str(out), "--name", f"scale-{clients}",
            *[arg for pair in extra for arg in ("--set", pair)]]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = peak_pss = 0
    while proc.poll() is None:
        rss, pss = tree_memory_bytes(proc.pid)
        peak, peak_pss = max(peak, rss), max(peak_pss, pss)
        time.sleep(0.2)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{clients} clients failed: {proc.stderr.read()[-2000:]}")
    run = next(out.glob(f"scale-{clients}-*"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # round 1 also pays the actors' start (imports, data, partitions); the last evaluates everyone
    steady = sorted(r["seconds"] for r in records[1:-1]) or [records[0]["seconds"]]
    summary = json.loads((run / "summary.json").read_text())
    return {"clients": clients, "sampled": max(1, round(fraction * clients)),
            "nodes": _nodes(run), "accuracy_mean": summary["accuracy"]["mean"],
            "first_round_s": records[0]["seconds"], "train_round_s": steady[len(steady) // 2],
            "last_round_with_eval_s": records[-1]["seconds"],
            "wall_s": wall, "peak_rss_mib": peak / 2**20, "peak_pss_mib": peak_pss / 2**20}


def _nodes(run: Path) -> int:
    """Flower nodes the run started (its config's simulation.nodes or the default rule)."""
    from fedsparse.config import load_config

    return load_config(run / "config.yaml").flower_nodes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--method", default="dense")
    parser.add_argument("--sizes", default="100:0.1,1000:0.1,10000:0.01",
                        help="clients[:fraction sampled per round], comma-separated")
    parser.add_argument("--set", action="append", default=[], dest="extra",
                        help="a config override for every size, e.g. simulation.nodes=1000")
    parser.add_argument("--json", type=Path, default=Path("runs/scale.json"))
    args = parser.parse_args()
    rows = []
    print(f"method {args.method}, {args.rounds} rounds, {os.cpu_count()} CPUs, {args.extra or ''}")
    print("| clients | sampled/round | Flower nodes | first round s | training round s (median of "
          "2..n-1) | last round (+ eval of all) s | wall s | peak RSS MiB | peak PSS MiB | "
          "mean accuracy |")
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for spec in args.sizes.split(","):
            size, _, fraction = spec.partition(":")
            r = run_size(int(size), float(fraction or 0.1), args.rounds, args.method, Path(folder),
                         args.extra)
            rows.append(r)
            print(f"| {r['clients']} | {r['sampled']} | {r['nodes']} | {r['first_round_s']:.2f} | "
                  f"{r['train_round_s']:.2f} | "
                  f"{r['last_round_with_eval_s']:.2f} | {r['wall_s']:.1f} | "
                  f"{r['peak_rss_mib']:.0f} | {r['peak_pss_mib']:.0f} | "
                  f"{r['accuracy_mean']:.3f} |", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
