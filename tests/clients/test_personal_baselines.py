"""The personalisation baselines, local and Ditto, through the real CLI, server loop and ClientApp
(in one process)."""

import json

import pytest

from tests.simulation.inprocess import simulate_here

SMALL = ["--clients", "5", "--rounds", "4", "--fraction", "1", "--set", "eval.every=2",
         "--strategy", "masked-fedavg", "--budgets", "1.0:1", "--local-epochs", "2"]


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_local_training_federates_nothing_and_is_charged_dense(tmp_path):
    run = simulate_here(tmp_path, *SMALL, "--method", "local", "--set", "eval.fraction=1")
    evaluated = [r for r in records(run) if "accuracy_mean" in r]
    # the global model never moves (scored on the same clients' tests); the clients' own models learn
    assert evaluated[0]["accuracy_global"] == evaluated[-1]["accuracy_global"]
    assert evaluated[-1]["accuracy_mean"] > evaluated[-1]["accuracy_global"] + 0.1
    cost = json.loads((run / "summary.json").read_text())["cost"]
    assert cost["train_flops_ratio"] == pytest.approx(1.0) and cost["upload_bytes_ratio"] < 0.05


def test_local_needs_a_mask_aware_strategy(tmp_path):
    """Its updates are empty (sparse): a dense-only strategy is refused, and FedAvg by name
    runs as its mask-aware counterpart, saying so."""
    from tests.simulation.inprocess import invoke_here

    result = invoke_here("simulate", "--out", str(tmp_path), *SMALL, "--method", "local",
                         "--strategy", "krum")
    assert result.exit_code == 2 and "use --strategy masked-fedavg" in result.stderr
    result = invoke_here("simulate", "--out", str(tmp_path), *SMALL, "--method", "local",
                         "--strategy", "FedAvg")
    assert result.exit_code == 0 and "runs as 'masked-fedavg'" in result.stderr


def test_ditto_evaluates_personal_models_and_pays_for_them(tmp_path):
    dense = simulate_here(tmp_path / "dense", *SMALL, "--method", "dense")
    ditto = simulate_here(tmp_path / "ditto", *SMALL, "--method", "ditto",
                          "--set", "method.ditto.lam=0.05", "--set", "method.ditto.personal_epochs=2")
    a, b = records(dense), records(ditto)
    # the global models are FedAvg's, identical; the clients evaluate their personal models
    assert [r["accuracy_global"] for r in a if "accuracy_global" in r] == \
        [r["accuracy_global"] for r in b if "accuracy_global" in r]
    assert b[-1]["accuracy_mean"] != a[-1]["accuracy_mean"]
    summary = json.loads((ditto / "summary.json").read_text())
    assert summary["evaluation_protocol"].startswith("the client's personal model")
    assert json.loads((dense / "summary.json").read_text())["evaluation_protocol"] == \
        "the global model as received"
    cost = summary["cost"]
    assert cost["train_flops_ratio"] == pytest.approx(2.0)  # 2 global + 2 personal epochs
    assert cost["upload_bytes_ratio"] == pytest.approx(1.0)
    assert (ditto / "client_state").is_dir()  # the personal models live on the clients
