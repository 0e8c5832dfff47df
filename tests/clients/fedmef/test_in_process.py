"""FedMef through the real CLI, server loop, strategy and ClientApp (one process), beside FedTiny
on the same data: it adjusts its mask, its updates pass, and its activations cost less."""

import json

import pytest

from tests.simulation.inprocess import simulate_here
from tests.simulation.test_methods_in_process import write_learnable_idx


@pytest.fixture(scope="module")
def image_data(tmp_path_factory):
    """A small learnable MNIST-format set."""
    return write_learnable_idx(tmp_path_factory.mktemp("idx"), 400, 120)


def run(tmp_path, data, method):
    return json.loads((simulate_here(
        tmp_path / method, "--dataset", "mnist", "--data-dir", str(data), "--clients", "4",
        "--rounds", "3", "--fraction", "1", "--partition", "iid", "--model", "cnn-bn", "--lr", "0.05",
        "--method", method, "--strategy", "masked-fedavg", "--budgets", "0.2:1",
        "--set", "method.pruning.adjust_every=1", "--set", "method.pruning.adjust_until=3",
        "--set", "method.pruning.warmup_epochs=1",
        "--set", "method.pruning.granularity=layer", "--set", "eval.every=3")
        / "summary.json").read_text())


def test_fedmef_adjusts_and_prunes_activations_beside_fedtiny(tmp_path, image_data):
    mef, tiny = run(tmp_path, image_data, "fedmef"), run(tmp_path, image_data, "fedtiny")
    for summary in (mef, tiny):
        assert summary["rounds_aggregated"] == 3 and summary["failures"]["updates_rejected"] == 0
        assert summary["pruning"]["adjustments"] == 2  # rounds 1 and 2 (before T_end = 3)
    pruning = mef["pruning"]
    assert "candidate_losses" not in pruning and pruning["criterion"] == "magnitude"
    assert pruning["activation_keep"] == 0.5 and 0.8 < pruning["activation_bytes_ratio"] < 1.0
    assert mef["cost"]["activation_bytes"] == pytest.approx(
        tiny["cost"]["activation_bytes"] * pruning["activation_bytes_ratio"], rel=1e-3)
    assert mef["cost"]["activation_bytes_ratio"] < tiny["cost"]["activation_bytes_ratio"] == 1.0
    assert mef["cost"]["training_bytes_peak_ratio"] < tiny["cost"]["training_bytes_peak_ratio"] < 1
    assert mef["accuracy"]["global"] > 0.3  # chance is 0.1
