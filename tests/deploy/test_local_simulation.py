"""``flwr run`` on Flower's own local simulation (a managed local SuperLink with its Simulation
Runtime), as a Flower user runs the app: the federation sized with ``--federation-config``, the
installed environment used (no runtime dependency install), the results table in the stream."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fedsparse.simulation.server_app import wait_for_nodes
from tests.deploy.test_processes import on_path
from tests.simulation.test_ray_cluster_end_to_end import kill_processes_mentioning

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_flwr_run_on_flowers_local_simulation_with_fewer_nodes_than_clients(tmp_path):
    """Two simulated SuperNodes for four clients (as Flower's default federation is smaller than
    the quickstart): the nodes serve virtual clients, pFedGate's gates kept in the run folder."""
    home = tmp_path / "flwr-home"
    app = tmp_path / "app"  # the bundle's two files (the code is the installed package)
    app.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (app / name).write_bytes((ROOT / name).read_bytes())
    env = {**os.environ, "PATH": on_path(), "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
           "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}
    out = tmp_path / "runs"
    try:
        result = subprocess.run(
            [str(BIN / "flwr"), "run", str(app), "--federation-config", "num-supernodes=2",
             "--run-config", f'set="num_clients=4;rounds=2;fraction=0.5" out="{out}"', "--stream"],
            cwd=app, env=env, capture_output=True, text=True, timeout=300)
    finally:
        kill_processes_mentioning(str(home))  # the managed SuperLink runs detached
    stream = result.stdout + result.stderr
    assert result.returncode == 0, stream[-3000:]
    (run,) = out.iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["method"] == "pfedgate"
    # Flower's simulated nodes declare nothing: the config's tiers hold, as with fedsparse simulate
    assert summary["budget"]["source"] == "config tiers (4 virtual clients on 2 simulation nodes)"
    assert summary["budget"]["violations"] == 0 and summary["failures"]["clients_failed"] == 0
    assert "4 clients served by 2 nodes" in stream
    assert "fedsparse: round 2/2" in stream and "accuracy mean" in stream
    with (run / "clients.csv").open() as handle:
        assert len(handle.readlines()) == 1 + 4  # every virtual client evaluated at the end
    assert {p.parent.name for p in (run / "client_state").glob("*/r*.pkl")} <= {"0", "1", "2", "3"}
    assert any((run / "client_state").glob("*/r2.pkl"))  # gates kept between messages
    assert not (home / "runtime-envs").exists() or not any((home / "runtime-envs").iterdir())


def test_a_federation_that_stops_growing_is_probed_once():
    """The wait for nodes asks what a stalled federation is (Flower's simulation: a complete
    federation of another size, reported at once instead of after the timeout)."""

    class Grid:
        def get_node_ids(self):
            return [7, 8]

    probed = []

    def on_stall(nodes):
        probed.append(nodes)
        raise RuntimeError("complete at 2")

    with pytest.raises(RuntimeError, match="complete at 2"):
        wait_for_nodes(Grid(), 4, timeout=30, on_stall=on_stall, stall=0.2)
    assert probed == [[7, 8]]
