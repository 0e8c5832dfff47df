"""End-to-end simulations through the real console script, Flower and Ray."""

import csv
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SUMMARY_KEYS = {"method", "strategy", "dataset", "num_clients", "rounds", "seed", "wall_seconds",
                "accuracy", "failures"}


def ray_processes_of(run: Path) -> list[str]:
    """Processes of the Ray that ``run`` started (named by its temporary folder, which its
    raylet's log gives): other tests' runs may be running beside it."""
    marker = re.search(r"/tmp/fsray-\w+", (run / "ray-logs" / "raylet.out").read_text()).group(0)
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line]


def check_run_folder(run: Path, clients: int, rounds: int) -> dict:
    for name in ("config.yaml", "metrics.jsonl", "clients.csv", "summary.json", "partitions.npz"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary) >= SUMMARY_KEYS
    assert summary["num_clients"] == clients and summary["rounds"] == rounds
    assert summary["failures"] == {"clients_failed": 0, "updates_rejected": 0, "aggregates_refused": 0}
    assert summary["budget"]["violations"] == 0
    cost = summary["cost"]
    for key in ("train_flops", "memory_bytes", "upload_bytes", "download_bytes"):
        assert cost[key] > 0 and cost[f"{key}_ratio"] > 0
    acc = summary["accuracy"]
    assert {"mean", "bottom_decile", "global"} <= set(acc)
    assert all(0.0 <= acc[k] <= 1.0 for k in acc)
    assert acc["bottom_decile"] <= acc["mean"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(1, rounds + 1))
    with (run / "clients.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(int(r["partition_id"]) for r in rows) == list(range(clients))
    expected = {"accuracy.png", "clients_vs_budget.png"}
    if summary["sparse_updates"]:
        expected |= {"costs.png", "layer_density.png"}
    assert {p.name for p in (run / "plots").glob("*.png")} == expected
    return summary


def test_a_ray_run_serves_virtual_clients_and_leaves_nothing_behind(fedtiny_runs):
    run = fedtiny_runs.whole  # conftest.FEDTINY: 8 virtual clients on 2 Flower nodes
    check_run_folder(run, clients=8, rounds=4)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients_sampled"] for r in records] == [4, 4, 4, 4]
    assert "accuracy_mean" in records[1] and "accuracy_mean" not in records[0]
    assert json.loads((run / "summary.json").read_text())["accuracy"]["mean"] > 0
    assert not ray_processes_of(run), "Ray processes outlived the run"
    assert (run / "flwr").is_dir()
    # the actors ran in the workers Ray prestarts (one per CPU) while the driver partitioned:
    # none started on top of them
    workers = list((run / "ray-logs").glob("python-core-worker-*.log"))
    assert len(workers) == os.cpu_count(), [w.name for w in workers]


def test_pfedgate_with_tiers_and_novel_clients(pfedgate_runs):
    run = pfedgate_runs.whole
    summary = check_run_folder(run, clients=6, rounds=4)
    assert summary["eval_gating"] == "batch" and summary["novel_clients"] == 2
    # on the MLP both budgets leave the gate blocks to choose among (not a fixed mask)
    assert summary["gate_choices"] == {"0.1": True, "0.5": True}
    assert "--method fedavg-ft" in summary["compare_with"]
    assert {"seen", "novel"} <= set(summary["accuracy"])
    assert summary["cost"]["train_flops_ratio"] < 0.6
    with (run / "clients.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        assert float(row["eval_density"]) <= float(row["budget_density"]) + 1e-9
        if row["novel"] == "1":
            assert int(row["rounds_trained"]) == 0
        elif int(row["rounds_trained"]):
            assert float(row["density"]) <= float(row["budget_density"]) + 1e-9
