"""The server's warm-up on its held-back set: any method, same start for every run of a comparison."""

import json

from tests.simulation.inprocess import invoke_here, simulate_here

SMALL = ["--clients", "5", "--rounds", "1", "--fraction", "1", "--set", "eval.every=1",
         "--budgets", "1.0:1", "--strategy", "masked-fedavg"]


def summary(run):
    return json.loads((run / "summary.json").read_text())


def test_a_dense_run_shares_the_warm_up_of_a_pruning_run(tmp_path):
    cold = simulate_here(tmp_path / "cold", *SMALL, "--method", "dense", "--set",
                         "partition.server_set=true")
    warm = simulate_here(tmp_path / "warm", *SMALL, "--method", "dense", "--set",
                         "partition.server_warmup_epochs=3")
    a, b = summary(cold), summary(warm)
    assert a["warmup_epochs"] == 0 and b["warmup_epochs"] == 3
    assert a["server_set_samples"] == b["server_set_samples"] > 0  # same partitions
    assert a["accuracy"]["global"] != b["accuracy"]["global"]  # the warm-up changed the start
    pruned = simulate_here(tmp_path / "pruned", *SMALL, "--method", "prune-at-init")
    # the FedTiny family warms up by default (method.pruning.warmup_epochs) on the same set
    assert summary(pruned)["warmup_epochs"] == 5
    assert summary(pruned)["server_set_samples"] == a["server_set_samples"]


def test_a_warm_up_without_the_server_set_is_a_one_line_error(tmp_path):
    result = invoke_here("simulate", "--out", str(tmp_path), *SMALL, "--method", "dense",
                         "--set", "partition.server_set=false",
                         "--set", "partition.server_warmup_epochs=2")
    assert result.exit_code == 2 and "partition.server_set true" in result.stderr
