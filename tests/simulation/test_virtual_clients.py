"""Virtual clients (a local simulation's routing): nodes serving clients that each message names,
clients keeping their private state in the run folder, give the same experiment as Flower's one
node per client found by the handshake (a Ray cluster's or a deployment's routing), through the
real CLI, server loop and ClientApp, in one process."""

import csv
import json
from pathlib import Path

import pytest

from tests.simulation.inprocess import simulate_here

SMALL = ["--clients", "6", "--rounds", "3", "--fraction", "0.5", "--set", "eval.every=1",
         "--set", "eval.fraction=0.5"]


def _same(row: dict) -> dict:
    """What must not change: all but timing, the folder, and the bytes counted per message (a
    virtual client's messages also carry its id, its replies its node's index, and the server
    counts what travels)."""
    return {k: _same(v) if isinstance(v, dict) else v for k, v in row.items()
            if k not in ("seconds", "wall_seconds", "run_dir") and "download" not in k
            and "upload" not in k}


def _results(run: Path) -> tuple[list[dict], list[dict], dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    with (run / "clients.csv").open() as handle:
        clients = list(csv.DictReader(handle))
    summary = json.loads((run / "summary.json").read_text())
    return [_same(r) for r in records], [_same(r) for r in clients], _same(summary)


@pytest.mark.parametrize("method", [
    ["--method", "pfedgate", "--budgets", "0.3:0.5,1.0:0.5"],  # a private gate per client
    ["--method", "ditto", "--budgets", "1.0:1"],  # a private model per client
    ["--method", "fedtiny", "--budgets", "0.2:1", "--set", "method.pruning.candidates=2"],  # queries
])
def test_two_nodes_serving_six_clients_run_the_same_experiment(tmp_path, method):
    one_each = simulate_here(tmp_path / "one", *SMALL, *method, one_node_per_client=True)
    shared = simulate_here(tmp_path / "two", *SMALL, *method, "--set", "simulation.nodes=2")
    six = simulate_here(tmp_path / "six", *SMALL, *method)  # the default: a node for each
    assert _results(shared) == _results(one_each) == _results(six)
    costs = [json.loads((run / "summary.json").read_text())["cost"] for run in (one_each, shared, six)]
    downloads = [c["download_bytes"] for c in costs]
    assert 0 < downloads[1] - downloads[0] < 100  # the client id, per message
    assert downloads[1] == downloads[2]
    uploads = [c["upload_bytes"] for c in costs]
    assert 0 < uploads[1] - uploads[0] < 40 and uploads[1] == uploads[2]  # the node's index, per reply
    states = sorted(p.parent.name for p in (shared / "client_state").glob("*/r*.pkl"))
    if method[1] != "fedtiny":  # private state lives in files, one folder per client that has any
        assert states and set(states) <= {str(p) for p in range(6)}
