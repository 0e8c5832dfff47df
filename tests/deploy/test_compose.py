"""The committed compose files: they parse, match the generator, and use only real CLI flags."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedsparse.budgets import Budget
from fedsparse.deploy.compose import (
    CERTS_IN_CONTAINER,
    compose_services,
    node_command,
    superexec_command,
    superlink_command,
    write_compose,
)

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent
#: the budgets docker/compose.yml was generated with (see its README section)
GENERATE = ["deploy", "compose", "--clients", "3", "--budgets",
            "0.1:0.34:low-end-phone,0.3:0.33:mid-phone,1.0:0.33:laptop"]
ENTRYPOINTS = {"flwr/superlink": "flower-superlink", "flwr/supernode": "flower-supernode",
               "fedsparse-app": "flower-superexec"}


def load(name: str) -> dict:
    return yaml.safe_load((DOCKER / name).read_text())


def cli_flags(program: str) -> set[str]:
    help_text = subprocess.run([str(BIN / program), "--help"], capture_output=True, text=True,
                               env={"COLUMNS": "200", "PATH": str(BIN)}).stdout
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", help_text))


def test_committed_files_are_what_the_generator_writes(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fedsparse.cli", *GENERATE, "--out", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for name in ("compose.yml", "compose.tls.yml"):
        assert (tmp_path / name).read_text() == (DOCKER / name).read_text(), \
            f"docker/{name} is stale: run fedsparse {' '.join(GENERATE)}"


@pytest.mark.parametrize("name", ["compose.yml", "compose.tls.yml"])
def test_every_command_uses_flags_the_installed_clis_accept(name):
    base = load("compose.yml")["services"]
    flags = {program: cli_flags(program) for program in set(ENTRYPOINTS.values())}
    for service, spec in load(name)["services"].items():
        program = ENTRYPOINTS[base[service]["image"].split(":")[0]]
        used = {arg for arg in spec["command"] if arg.startswith("--")}
        assert used and used <= flags[program], (service, used - flags[program])


def test_services_run_the_commands_the_process_tests_run():
    base = load("compose.yml")["services"]
    overlay = load("compose.tls.yml")["services"]
    certs = CERTS_IN_CONTAINER
    assert base["superlink"]["command"] == superlink_command(host="0.0.0.0", isolation="process")[1:]
    assert overlay["superlink"]["command"] == superlink_command(
        tls=certs, node_auth=True, host="0.0.0.0", isolation="process")[1:]
    assert base["superexec-serverapp"]["command"] == superexec_command("superlink:8000")[1:]
    assert overlay["superexec-serverapp"]["command"] == superexec_command("superlink:8000", certs)[1:]
    nodes = sorted(s for s in base if s.startswith("supernode-"))
    assert len(nodes) == 3
    densities = []
    for pid, service in enumerate(nodes):
        command = base[service]["command"]
        config = command[command.index("--node-config") + 1]
        assert f"partition-id={pid} num-partitions=3" in config
        density = float(re.search(r"budget-density=([0-9.]+)", config).group(1))
        device = re.search(r'device="([a-z-]+)"', config).group(1)
        densities.append(density)
        budget = Budget(density=density, device=device)
        assert command == node_command("superlink:8000", pid, 3, budget, host="0.0.0.0",
                                       isolation="process")[1:]
        assert overlay[service]["command"] == node_command(
            "superlink:8000", pid, 3, budget, tls=certs, key=certs / f"supernode-{pid}",
            host="0.0.0.0", isolation="process")[1:]
        assert base[f"superexec-clientapp-{pid}"]["command"] == superexec_command(f"{service}:9094")[1:]
    assert sorted(densities) == [0.1, 0.3, 1.0]


def test_overlay_applied_to_the_base_gives_the_tls_deployment():
    budgets = [Budget(0.1), Budget(1.0)]
    merged = compose_services(budgets)["services"]
    for name, change in write_and_load_overlay(budgets).items():
        merged[name].update(change)
    assert merged == compose_services(budgets, tls=True)["services"]


def write_and_load_overlay(budgets):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        _, overlay = write_compose(Path(folder), budgets)
        return yaml.safe_load(overlay.read_text())["services"]


def test_env_pins_the_installed_flower():
    import flwr

    env = dict(line.split("=", 1) for line in (DOCKER / ".env").read_text().splitlines()
               if line and not line.startswith("#"))
    assert env["FLWR_VERSION"] == flwr.__version__
    assert "FROM flwr/superexec:${FLWR_VERSION}" in (DOCKER / "Dockerfile").read_text()
