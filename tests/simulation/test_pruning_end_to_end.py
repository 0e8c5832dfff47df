"""FedTiny, prune-at-init and FedDST end to end on Flower + Ray (small synthetic runs)."""

import csv
import json

import pytest

from tests.simulation.test_end_to_end import check_run_folder
from tests.test_cli import invoke

pytestmark = pytest.mark.e2e

SMALL = ["--clients", "8", "--rounds", "4", "--fraction", "0.5", "--model", "mlp",
         "--set", "model.hidden=[16,128,64]", "--strategy", "masked-fedavg",
         "--set", "method.pruning.adjust_every=1", "--set", "method.pruning.warmup_epochs=2"]


def client_rows(run):
    with (run / "clients.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_fedtiny_selects_by_abns_and_adjusts_nested_tiers(fedtiny_runs):
    run = fedtiny_runs.whole  # SMALL with budgets 0.2:0.5,0.4:0.5 (conftest.FEDTINY)
    summary = check_run_folder(run, clients=8, rounds=4)
    pruning = summary["pruning"]
    losses = pruning["candidate_losses"]
    assert len(losses) == 5 and pruning["chosen"] == losses.index(min(losses))
    assert pruning["adjustments"] == 2  # rounds 1 and 2 (T_end = 3 of 4 rounds)
    assert [h["round"] for h in pruning["history"]] == [1, 2] and pruning["adjust_every"] == 1
    assert all(h["k"] and h["alpha"] > 0 for h in pruning["history"])
    assert pruning["allocation"] == "erk" and pruning["layer_densities"]
    assert pruning["granularity"] == "chunk"  # no memory budget: memory first, streamed
    assert summary["warmup_epochs"] == 2 and summary["server_set_samples"] > 0
    for row in client_rows(run):
        if row["density"]:
            assert float(row["density"]) <= float(row["budget_density"]) + 1e-9
    assert summary["cost"]["train_flops_ratio"] < 0.5
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["updates_rejected"] == 0 for r in records)


def test_a_memory_budget_too_small_for_one_chunk_fails_at_start(tmp_path):
    result = invoke("simulate", "--out", str(tmp_path), *SMALL, "--method", "fedtiny", "--set",
                    "budgets.tiers=[{density: 0.3, memory_bytes: 1000}]")
    assert result.returncode != 0
    assert "score its largest chunk" in result.stderr and "raise its memory budget" in result.stderr
    assert not any(tmp_path.iterdir())
