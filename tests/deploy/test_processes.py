"""Real deployments on 127.0.0.1: a SuperLink, SuperNodes declaring budgets, ``flwr run .``.

The processes run exactly what the compose files run (same command builders, ``--isolation
process`` with a SuperExec beside the SuperLink and each SuperNode), on loopback. Every process
is started in its own session and stopped by its PID (its process group) when the test ends.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsparse.deploy.compose import node_command, superexec_command, superlink_command

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DENSITIES = [0.1, 0.3, 1.0]
#: one round: every ClientApp message starts a Python process on each node, so each round costs
#: seconds of imports; one round shows the whole path (handshake, training, evaluation)
RUN_CONFIG = 'set="num_clients=3;rounds=1;fraction=1.0;simulation.min_clients=1" out="{out}"'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Started processes, each in its own session, stopped by PID at the end."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder, self.env, self.started = folder, env, []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = (self.folder / f"{name}.log").open("w")
        proc = subprocess.Popen([str(BIN / argv[0]), *argv[1:]], stdout=log, stderr=subprocess.STDOUT,
                                env=self.env, cwd=self.folder, start_new_session=True)
        self.started.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.started:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def deployment(tmp_path):
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    procs = Processes(tmp_path, env)
    yield procs
    procs.stop()


def write_connection(home: Path, port: int, ca: Path | None) -> None:
    home.mkdir(parents=True, exist_ok=True)
    security = f'root-certificates = "{ca}"' if ca else "insecure = true"
    (home / "config.toml").write_text(f'[superlink]\ndefault = "fedsparse"\n\n[superlink.fedsparse]\n'
                                      f'address = "127.0.0.1:{port}"\n{security}\n')


def flwr(env, *args, timeout=60):
    return subprocess.run([str(BIN / "flwr"), *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the SuperLink exited early"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port}")


def run_app_and_check(deployment, out: Path) -> None:
    result = flwr(deployment.env, "run", ".", "fedsparse", "--run-config", RUN_CONFIG.format(out=out),
                  "--stream", timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    runs = list(out.iterdir())
    assert len(runs) == 1, result.stdout[-2000:]
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["rounds"] == 1 and summary["failures"]["clients_failed"] == 0
    rows = (runs[0] / "clients.csv").read_text().splitlines()
    header = rows[0].split(",")
    declared = {int(r.split(",")[0]): float(r.split(",")[header.index("budget_density")]) for r in rows[1:]}
    assert declared == dict(enumerate(DENSITIES))  # the nodes' declarations, not the config's tiers
    records = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1] and records[-1]["budget_violations"] == 0


def start_link(deployment, port: int, certs: Path | None) -> None:
    link = deployment.start("superlink", superlink_command(port=port, tls=certs, node_auth=certs is not None,
                                                           isolation="process"))
    wait_for_port(port, link)
    deployment.start("superexec-serverapp", superexec_command(f"127.0.0.1:{port}", certs))


def start_node(deployment, name: str, link_port: int, pid: int, density: float, certs: Path | None,
               key: Path | None) -> subprocess.Popen:
    port = free_port()
    node = deployment.start(name, node_command(f"127.0.0.1:{link_port}", pid, 3, density, port=port,
                                               tls=certs, key=key, isolation="process"))
    deployment.start(f"{name}-superexec", superexec_command(f"127.0.0.1:{port}"))
    return node


def test_insecure_deployment_learns_budgets_from_the_nodes(deployment, tmp_path):
    port = free_port()
    write_connection(tmp_path / "flwr-home", port, None)
    start_link(deployment, port, None)
    for i, density in enumerate(DENSITIES):
        start_node(deployment, f"node{i}", port, i, density, None, None)
    run_app_and_check(deployment, tmp_path / "runs")


def test_tls_deployment_admits_only_registered_nodes(deployment, tmp_path):
    certs = tmp_path / "certs"
    subprocess.run(["bash", str(ROOT / "docker" / "generate-certs.sh"), str(certs), "4"], check=True,
                   capture_output=True)
    port = free_port()
    write_connection(tmp_path / "flwr-home", port, certs / "ca.crt")
    start_link(deployment, port, certs)
    for i in range(3):
        registered = flwr(deployment.env, "supernode", "register", str(certs / f"supernode-{i}.pub"),
                          "fedsparse")
        assert registered.returncode == 0, registered.stdout + registered.stderr
    stranger = start_node(deployment, "stranger", port, 2, 1.0, certs, certs / "supernode-3")
    assert stranger.wait(timeout=60) != 0  # key 3 was never registered: refused
    assert "Failed to activate SuperNode" in (tmp_path / "stranger.log").read_text()
    for i, density in enumerate(DENSITIES):
        start_node(deployment, f"node{i}", port, i, density, certs, certs / f"supernode-{i}")
    run_app_and_check(deployment, tmp_path / "runs")
