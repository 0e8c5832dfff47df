"""The committed compose files: they parse, match the generator, and use only real CLI flags."""

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedsparse.budgets import Budget
from fedsparse.deploy.compose import (
    CERTS_IN_CONTAINER,
    DATA_IN_CONTAINER,
    STATE_IN_CONTAINER,
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


@functools.cache
def cli_flags(program: str) -> frozenset[str]:
    help_text = subprocess.run([str(BIN / program), "--help"], capture_output=True, text=True,
                               env={"COLUMNS": "200", "PATH": str(BIN)}).stdout
    return frozenset(re.findall(r"(--[a-z][a-z0-9-]*)", help_text))


def test_committed_files_are_what_the_generator_writes(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fedsparse.cli", *GENERATE, "--out", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    context = os.path.relpath(ROOT, tmp_path.resolve())  # docker/'s own is ".."
    for name in ("compose.yml", "compose.tls.yml", ".env"):
        written = (tmp_path / name).read_text().replace(f"context: {context}\n", "context: ..\n")
        assert written == (DOCKER / name).read_text(), \
            f"docker/{name} is stale: run fedsparse {' '.join(GENERATE)} --out docker --force"


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
    state = STATE_IN_CONTAINER / "state.db"
    assert base["superlink"]["command"] == superlink_command(host="0.0.0.0", isolation="process",
                                                             database=state)[1:]
    assert overlay["superlink"]["command"] == superlink_command(
        tls=certs, node_auth=True, host="0.0.0.0", isolation="process", database=state)[1:]
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
                                       isolation="process", data_dir=DATA_IN_CONTAINER)[1:]
        assert overlay[service]["command"] == node_command(
            "superlink:8000", pid, 3, budget, tls=certs, key=certs / f"supernode-{pid}",
            host="0.0.0.0", isolation="process", data_dir=DATA_IN_CONTAINER)[1:]
        assert base[f"superexec-clientapp-{pid}"]["command"] == superexec_command(f"{service}:9094")[1:]
    assert sorted(densities) == [0.1, 0.3, 1.0]


def test_overlay_applied_to_the_base_gives_the_tls_deployment():
    budgets = [Budget(0.1), Budget(1.0)]
    merged = compose_services(budgets)["services"]
    for name, change in write_and_load_overlay(budgets).items():
        merged[name]["command"] = change.get("command", merged[name]["command"])
        if "volumes" in change:  # compose merges volume lists by container path
            merged[name]["volumes"] = [*merged[name].get("volumes", []), *change["volumes"]]
    secure = compose_services(budgets, tls=True)["services"]
    for service in (merged, secure):
        for spec in service.values():
            spec.pop("build", None)  # the context is relative to the folder written
            spec["volumes"] = sorted(spec.get("volumes", []))
    assert merged == secure


def write_and_load_overlay(budgets):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        _, overlay, _ = write_compose(Path(folder), budgets)
        return yaml.safe_load(overlay.read_text())["services"]


def test_compose_out_writes_a_self_contained_folder(tmp_path):
    """`deploy compose --out EMPTY`: every variable the files use is in their .env, the build
    context holds the Dockerfile, every mounted path exists relative to the files (certificates
    once generate-certs wrote them), and the SuperLink sees no key but its own."""
    out = tmp_path / "deploy"
    result = subprocess.run([sys.executable, "-m", "fedsparse.cli", "deploy", "compose", "--clients",
                             "2", "--budgets", "0.1:0.5,1.0:0.5", "--out", str(out)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    certs = subprocess.run(["bash", str(DOCKER / "generate-certs.sh"), str(out / "certificates"), "2",
                            "--san", "DNS:link.example.org"], capture_output=True, text=True)
    assert certs.returncode == 0, certs.stderr
    env = dict(line.split("=", 1) for line in (out / ".env").read_text().splitlines()
               if line and not line.startswith("#"))
    for name in ("compose.yml", "compose.tls.yml"):
        text = (out / name).read_text()
        assert set(re.findall(r"\$\{([A-Z_]+)\}", text)) <= set(env), name
        for service, spec in yaml.safe_load(text)["services"].items():
            if "build" in spec:
                context = (out / spec["build"]["context"]).resolve()
                assert (context / spec["build"]["dockerfile"]).is_file(), service
            for volume in spec.get("volumes", []):
                host = volume.split(":")[0]
                assert host.startswith("./") and (out / host).exists(), (name, service, volume)
    tls = yaml.safe_load((out / "compose.tls.yml").read_text())["services"]
    link_files = {v.split(":")[0] for v in tls["superlink"]["volumes"]}
    assert link_files == {"./certificates/ca.crt", "./certificates/server.pem", "./certificates/server.key"}
    san = subprocess.run(["openssl", "x509", "-in", str(out / "certificates" / "server.pem"), "-noout",
                          "-ext", "subjectAltName"], capture_output=True, text=True).stdout
    assert "link.example.org" in san and "superlink" in san
    bad = subprocess.run(["bash", str(DOCKER / "generate-certs.sh"), str(tmp_path / "c"), "1", "--san",
                          "no spaces"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--san needs DNS:name or IP:address" in bad.stderr


def test_env_pins_the_installed_flower():
    import flwr

    env = dict(line.split("=", 1) for line in (DOCKER / ".env").read_text().splitlines()
               if line and not line.startswith("#"))
    assert env["FLWR_VERSION"] == flwr.__version__
    assert "FROM flwr/superexec:${FLWR_VERSION}" in (DOCKER / "Dockerfile").read_text()


def _compose(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedsparse.cli", "deploy", "compose", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def test_compose_never_overwrites_what_it_did_not_write(tmp_path):
    """A non-empty folder is refused without --force; with it, only its own files change and a
    folder that was there is not handed to Flower's user."""
    out = tmp_path / "deploy"
    (out / "runs" / "earlier-run").mkdir(parents=True)
    (out / "runs" / "earlier-run" / "summary.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    refused = _compose("--clients", "2", "--out", str(out))
    assert refused.returncode == 2 and "is not empty" in refused.stderr and "--force" in refused.stderr
    assert not (out / "compose.yml").exists()
    forced = _compose("--clients", "2", "--out", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (out / "compose.yml").is_file() and (out / "notes.txt").read_text() == "mine"
    assert (out / "runs" / "earlier-run" / "summary.json").read_text() == "{}"
    assert "sudo chown" in forced.stdout + forced.stderr  # runs/ was there: never chowned here


@pytest.mark.parametrize(("args", "needle"), [
    ([], "--out is required"),
    (["--budgets", "1.0:1:toaster"], "unknown device profile 'toaster'"),
])
def test_compose_refuses_what_simulate_would(tmp_path, args, needle):
    result = _compose(*args, *([] if not args else ["--out", str(tmp_path / "d")]), cwd=tmp_path)
    assert result.returncode == 2 and needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    (tmp_path / "file").write_text("x")
    to_file = _compose("--out", str(tmp_path / "file"))
    assert to_file.returncode == 2 and "is a file, not a folder" in to_file.stderr
