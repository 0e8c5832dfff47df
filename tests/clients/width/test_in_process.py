"""HeteroFL, FjORD and FedRolex through the real CLI, server loop, strategy and ClientApp (in one
process): sparse uploads accepted, costs counted by the server, every client evaluated."""

import csv
import json

import pytest

from tests.simulation.inprocess import simulate_here

SMALL = ["--clients", "6", "--rounds", "3", "--fraction", "1", "--set", "eval.every=3",
         "--budgets", "0.2:0.5,1.0:0.5", "--strategy", "masked-fedavg", "--model", "mlp",
         "--set", "model.hidden=[64,64]"]


@pytest.mark.parametrize("method", ["heterofl", "fjord", "fedrolex"])
def test_a_width_method_runs_and_the_server_counts_its_savings(tmp_path, method):
    run = simulate_here(tmp_path, *SMALL, "--method", method)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds_aggregated"] == 3 and summary["failures"]["updates_rejected"] == 0
    assert 0.2 < summary["width"]["ratios"]["0.2"] < 0.45  # density ~ r^2 for chained layers
    cost = summary["cost"]
    # half the clients hold <= 0.2 of the weights: ~0.6x dense in memory and bytes, and less in
    # FLOPs (FjORD's batches also run narrower than the client's width)
    # (HeteroFL's and FedRolex's label split sends only the rows of labels a client holds, so
    # the density uploaded can fall below the share of the model held)
    assert 0.5 < cost["memory_bytes_ratio"] < 0.62
    assert cost["density"] <= cost["memory_bytes_ratio"] + 1e-9
    assert 0.5 < cost["upload_bytes_ratio"] < 0.7
    assert cost["train_flops_ratio"] < cost["density"]
    # the papers' counter (Conv2d and Linear weights only) on the networks the batches trained
    assert 0.2 < cost["conv_linear_flops_ratio"] < cost["density"] and cost["conv_linear_flops"] > 0
    assert summary["accuracy"]["mean"] > 0.3 and summary["accuracy"]["global"] > 0.25  # chance: 0.1
    assert "width submodel" in summary["evaluation_protocol"]
    assert set(summary["accuracy_by_density"]) == {"0.2", "1"}
    clients = (run / "clients.csv").read_text().splitlines()
    assert len(clients) == 7


def test_the_server_scores_every_client_at_every_width_it_could_hold(tmp_path):
    # FedRolex: the server must slice the window the clients held in the final round
    run = simulate_here(tmp_path, *SMALL, "--method", "fedrolex")
    summary = json.loads((run / "summary.json").read_text())
    scores = summary["server_scores"]
    # every client holds the narrow width; only the dense tier also the whole model
    assert scores["width-0.2-accuracy"]["clients"] == 6
    assert scores["width-1-accuracy"]["clients"] == 3
    with (run / "clients.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        own = "1" if float(row["budget_density"]) == 1.0 else "0.2"
        # at its own width the server's score is the client's own (same model, same split)
        assert float(row[f"server_width_{own}_accuracy"]) == pytest.approx(float(row["accuracy"]))
        if own == "0.2":
            assert row["server_width_1_accuracy"] == ""
