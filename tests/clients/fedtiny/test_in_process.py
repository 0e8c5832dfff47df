"""FedTiny and prune-at-init at filter level (``granularity: filter``) through the real CLI,
server loop, strategy and ClientApp in one process: whole channels pruned and grown, tiers
trained as narrower networks, costs counted by the server on those networks."""

import json

import pytest

from tests.simulation.inprocess import simulate_here
from tests.simulation.test_methods_in_process import write_learnable_idx


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_learnable_idx(tmp_path_factory.mktemp("idx"), 480, 160)


def filter_run(tmp_path, images, method, *extra):
    return simulate_here(tmp_path, "--dataset", "mnist", "--data-dir", str(images), "--clients", "4",
                         "--rounds", "4", "--fraction", "1", "--partition", "iid", "--model", "cnn-bn",
                         "--lr", "0.05",
                         "--method", method, "--strategy", "masked-fedavg",
                         "--budgets", "0.1:0.5,0.3:0.5", "--set", "partition.server_set=true",
                         "--set", "method.pruning.granularity=filter",
                         "--set", "method.pruning.adjust_every=1", "--set", "method.pruning.warmup_epochs=1",
                         "--set", "method.pruning.candidates=2", "--set", "eval.every=4", *extra)


def test_fedtiny_prunes_and_grows_whole_channels_and_trains_narrower_networks(tmp_path, images):
    run = filter_run(tmp_path, images, "fedtiny")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["failures"] == {"clients_failed": 0, "updates_rejected": 0, "aggregates_refused": 0}
    pruning = summary["pruning"]
    assert pruning["granularity"] == "filter" and pruning["chosen"] in (0, 1)
    # the top tier's channels hold at most its density of the parameters, and come close to it
    assert 0.25 < pruning["channel_density"] <= 0.3
    # one space per adjustment, from the output end, each moving channels
    history = pruning["history"]
    assert [h["round"] for h in history] == [1, 2]
    assert list(history[0]["k"]) == ["classifier.1"] and history[0]["regrown"]
    cost = summary["cost"]
    # counted on the sliced networks: FLOPs fall with the channels, about as the density does
    # (memory: the adjustment rounds add the probe, one space at full width)
    assert cost["train_flops_ratio"] < 0.35 and cost["memory_bytes_ratio"] < 0.4
    assert cost["upload_bytes_ratio"] < 0.35
    assert summary["accuracy"]["global"] > 0.3  # chance: 0.1
    assert "sliced" in summary["evaluation_protocol"]


def test_filter_magnitude_at_init_is_a_structured_baseline(tmp_path, images):
    # the mask is fixed before round 1 and never adjusted: one round shows it (and its cost)
    run = filter_run(tmp_path, images, "prune-at-init", "--rounds", "1", "--set", "eval.every=1")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["failures"]["updates_rejected"] == 0
    assert summary["pruning"]["granularity"] == "filter" and summary["pruning"]["history"] == []
    assert summary["cost"]["train_flops_ratio"] < 0.35


def test_filter_level_refuses_snip_and_fedmef_in_one_line(tmp_path, images):
    from tests.simulation.inprocess import invoke_here

    for method, extra, needle in (("prune-at-init", ["--set", "method.pruning.criterion=snip"], "SNIP"),
                                  ("fedmef", [], "fedmef")):
        result = invoke_here("simulate", "--out", str(tmp_path / method), "--dataset", "mnist",
                             "--data-dir", str(images), "--clients", "4", "--rounds", "1",
                             "--partition", "iid",
                             "--model", "cnn-bn", "--method", method, "--strategy", "masked-fedavg",
                             "--budgets", "0.3:1", "--set", "partition.server_set=true",
                             "--set", "method.pruning.granularity=filter", *extra)
        assert result.exit_code != 0
        assert needle in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
