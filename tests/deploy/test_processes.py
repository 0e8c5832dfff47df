"""Real deployments on 127.0.0.1: a SuperLink, SuperNodes declaring budgets, ``flwr run .``.

The processes run exactly what the compose files run (same command builders, ``--isolation
process`` with a SuperExec beside the SuperLink and each SuperNode), on loopback. Every process
is started in its own session and stopped by its PID (its process group) when the tests end.

A deployed round mostly waits (a SuperNode polls its SuperLink every 3 s when idle and starts a
Python process per ClientApp message), so the insecure and the TLS deployment are started and
run side by side by one fixture; each test then checks its own.
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
#: two nodes each (and a stranger for TLS): every ClientApp message is a Python process, and the
#: CPU both deployments share is what a deployed round costs here; densities that no default
#: would give, so the summary can only have them from the nodes
DENSITIES = [0.1, 0.3]
TLS_DENSITIES = [0.1, 0.5]
#: one round: every ClientApp message starts a Python process on each node, so each round costs
#: seconds of imports; one round shows the whole path (handshake, training, evaluation)
RUN_CONFIG = 'set="num_clients={n};rounds=1;fraction=1.0;simulation.min_clients=1" out="{out}"'


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


def on_path() -> str:
    """PATH with this environment's scripts first: Flower's processes start ``flwr-serverapp``
    and ``flwr-clientapp`` by name, as an activated environment finds them (pytest run as
    ``.venv/bin/python -m pytest`` has no activated environment)."""
    return f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"


def deployment_env(folder: Path) -> dict[str, str]:
    return {**os.environ, "PATH": on_path(), "FLWR_HOME": str(folder / "flwr-home"),
            "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


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


def app_folder(folder: Path) -> Path:
    """The Flower App as its bundle holds it: pyproject.toml and README.md (``fab-include``; the
    code is the installed package). Flower's bundle builder walks every file under the app
    folder before filtering, so building from the repository also walks .venv: seconds of CPU
    per ``flwr run .`` that say nothing about the deployment."""
    app = folder / "app"
    app.mkdir(exist_ok=True)
    for name in ("pyproject.toml", "README.md"):
        (app / name).write_bytes((ROOT / name).read_bytes())
    return app


def launch_app(deployment: Processes, out: Path, nodes: int) -> subprocess.Popen:
    """``flwr run APP`` against the deployment's SuperLink, in the background."""
    app = app_folder(deployment.folder)
    return subprocess.Popen([str(BIN / "flwr"), "run", str(app), "fedsparse", "--run-config",
                             RUN_CONFIG.format(n=nodes, out=out), "--stream"], env=deployment.env, cwd=app,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def check_app(run: subprocess.Popen, out: Path, densities: list[float]) -> None:
    stdout, stderr = run.communicate(timeout=400)
    assert run.returncode == 0, stdout[-2000:] + stderr[-2000:]
    result = subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr)
    runs = list(out.iterdir())
    assert len(runs) == 1, result.stdout[-2000:]
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["rounds"] == 1 and summary["failures"]["clients_failed"] == 0
    rows = (runs[0] / "clients.csv").read_text().splitlines()
    header = rows[0].split(",")
    declared = {int(r.split(",")[0]): float(r.split(",")[header.index("budget_density")]) for r in rows[1:]}
    assert declared == dict(enumerate(densities))  # the nodes' declarations, not the config's tiers
    assert summary["budget"]["source"] == "declared by the nodes"
    assert [t["density"] for t in summary["budget"]["tiers"]] == sorted(densities)
    assert "fedsparse: round 1/1, " in stdout + stderr  # per-round progress, streamed
    assert "accuracy mean" in stdout + stderr  # the results table, as fedsparse simulate prints
    records = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1] and records[-1]["budget_violations"] == 0


def start_link(deployment, port: int, certs: Path | None) -> None:
    link = deployment.start("superlink", superlink_command(port=port, tls=certs, node_auth=certs is not None,
                                                           isolation="process"))
    wait_for_port(port, link)
    deployment.start("superexec-serverapp", superexec_command(f"127.0.0.1:{port}", certs))


def start_node(deployment, name: str, link_port: int, pid: int, density: float, certs: Path | None,
               key: Path | None, nodes: int) -> subprocess.Popen:
    port = free_port()
    node = deployment.start(name, node_command(f"127.0.0.1:{link_port}", pid, nodes, density, port=port,
                                               tls=certs, key=key, isolation="process"))
    deployment.start(f"{name}-superexec", superexec_command(f"127.0.0.1:{port}"))
    return node


def start_insecure(deployment: Processes, folder: Path) -> None:
    port = free_port()
    write_connection(folder / "flwr-home", port, None)
    start_link(deployment, port, None)
    for i, density in enumerate(DENSITIES):
        start_node(deployment, f"node{i}", port, i, density, None, None, len(DENSITIES))


def start_tls(deployment: Processes, folder: Path) -> subprocess.Popen:
    """A TLS SuperLink with node authentication, three registered nodes and one stranger (an
    unregistered key); returns the stranger's process."""
    certs = folder / "certs"
    subprocess.run(["bash", str(ROOT / "docker" / "generate-certs.sh"), str(certs),
                    str(len(TLS_DENSITIES) + 1)], check=True, capture_output=True)
    port = free_port()
    write_connection(folder / "flwr-home", port, certs / "ca.crt")
    start_link(deployment, port, certs)
    for i in range(len(TLS_DENSITIES)):
        registered = flwr(deployment.env, "supernode", "register", str(certs / f"supernode-{i}.pub"),
                          "fedsparse")
        assert registered.returncode == 0, registered.stdout + registered.stderr
    n = len(TLS_DENSITIES)
    stranger = start_node(deployment, "stranger", port, n - 1, 1.0, certs, certs / f"supernode-{n}", n)
    for i, density in enumerate(TLS_DENSITIES):
        start_node(deployment, f"node{i}", port, i, density, certs, certs / f"supernode-{i}", n)
    return stranger


@pytest.fixture(scope="module")
def deployments(tmp_path_factory):
    """Both deployments up and their app runs started; stopped when the module's tests end."""
    plain_dir, tls_dir = tmp_path_factory.mktemp("insecure"), tmp_path_factory.mktemp("tls")
    plain, tls = Processes(plain_dir, deployment_env(plain_dir)), Processes(tls_dir, deployment_env(tls_dir))
    runs: dict[str, tuple[subprocess.Popen, Path]] = {}
    try:
        start_insecure(plain, plain_dir)
        stranger = start_tls(tls, tls_dir)
        runs["insecure"] = (launch_app(plain, plain_dir / "runs", len(DENSITIES)), plain_dir)
        runs["tls"] = (launch_app(tls, tls_dir / "runs", len(TLS_DENSITIES)), tls_dir)
        yield runs, stranger
    finally:
        for run, _ in runs.values():
            if run.poll() is None:
                run.kill()
        plain.stop()
        tls.stop()


def test_insecure_deployment_learns_budgets_from_the_nodes(deployments):
    runs, _ = deployments
    run, folder = runs["insecure"]
    check_app(run, folder / "runs", DENSITIES)


def test_tls_deployment_admits_only_registered_nodes(deployments):
    runs, stranger = deployments
    run, folder = runs["tls"]
    assert stranger.wait(timeout=60) != 0  # key 3 was never registered: refused
    assert "Failed to activate SuperNode" in (folder / "stranger.log").read_text()
    check_app(run, folder / "runs", TLS_DENSITIES)
