"""Commands of a deployment's processes, and Docker compose files built from the same commands.

One function per process kind builds its argv, so the compose files, the process tests and the
deployment docs show the same flags. Compose files run ``--isolation process``: the SuperLink and each
SuperNode hand their apps to a SuperExec container built from ``docker/Dockerfile``
(``flwr/superexec`` with fedsparse installed).

``write_compose`` writes a self-contained folder: the two compose files, their ``.env`` (image
versions), and the folders they mount, all relative to the folder: ``state/`` (the SuperLink's
database, so registrations and runs survive a restart), ``runs/`` (the run folders the ServerApp
writes), ``data/server`` and ``data/supernode-<i>`` (each node reads its dataset files from its
own folder: node-config ``data-dir``), and ``certificates/`` for TLS. The image builds from the
fedsparse source tree, named by a path relative to the folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from fedsparse.budgets import NODE_BUDGET_KEYS, PARTITION_KEY, Budget
from fedsparse.errors import ConfigError

SUPERLINK_PORT = 8000
NODE_RUNTIME_PORT = 9094
CERTS_IN_CONTAINER = Path("/app/certificates")
STATE_IN_CONTAINER = Path("/app/state")
DATA_IN_CONTAINER = Path("/app/data")
#: the SuperExec's working directory is /app: the run config's default ``out="runs"``
RUNS_IN_CONTAINER = Path("/app/runs")
#: the user Flower's images run as: mounted folders and keys must be readable (state and runs
#: writable) by it
FLOWER_UID = 49999
PYTHON_TAG = "py3.11-ubuntu24.04"


def _tls_server_flags(tls: Path | None) -> list[str]:
    if tls is None:
        return ["--insecure"]
    return ["--ssl-ca-certfile", str(tls / "ca.crt"), "--ssl-certfile", str(tls / "server.pem"),
            "--ssl-keyfile", str(tls / "server.key")]


def superlink_command(port: int = SUPERLINK_PORT, tls: Path | None = None, node_auth: bool = False,
                      host: str = "127.0.0.1", isolation: str = "subprocess",
                      database: Path | None = None) -> list[str]:
    """``flower-superlink``: one HTTP port for Fleet, Control and Runtime APIs; ``database``:
    keep registered nodes and runs in this SQLite file (default: in memory)."""
    argv = ["flower-superlink", *_tls_server_flags(tls)]
    if node_auth:
        argv.append("--enable-supernode-auth")
    if database is not None:
        argv += ["--database", str(database)]
    return [*argv, "--isolation", isolation, "--host", host, "--port", str(port),
            "--disable-runtime-dependency-installation"]


def node_config(partition_id: int, num_partitions: int, budget: Budget,
                data_dir: Path | None = None) -> str:
    """``--node-config``: the partition this node serves, the budget it declares and where its
    dataset files are (``data-dir``, read by its ClientApps instead of the config's folder)."""
    fields: dict[str, Any] = {PARTITION_KEY: partition_id, "num-partitions": num_partitions}
    values = budget.as_dict()
    for key, name in NODE_BUDGET_KEYS.items():
        value = values[name]
        if value is not None:
            fields[key] = f'"{value}"' if isinstance(value, str) else value
    if data_dir is not None:
        fields["data-dir"] = f'"{data_dir}"'
    return " ".join(f"{k}={v}" for k, v in fields.items())


def node_command(superlink: str, partition_id: int, num_partitions: int, density: float | Budget,
                 port: int = NODE_RUNTIME_PORT, tls: Path | None = None, key: Path | None = None,
                 host: str = "127.0.0.1", isolation: str = "subprocess",
                 data_dir: Path | None = None) -> list[str]:
    """``flower-supernode`` serving one partition with its declared budget."""
    budget = density if isinstance(density, Budget) else Budget(density=density)
    argv = ["flower-supernode"]
    argv += ["--insecure"] if tls is None else ["--root-certificates", str(tls / "ca.crt")]
    if key is not None:
        argv += ["--auth-supernode-private-key", str(key)]
    return [*argv, "--superlink", superlink, "--isolation", isolation, "--host", host,
            "--port", str(port), "--node-config",
            node_config(partition_id, num_partitions, budget, data_dir)]


def superexec_command(runtime_api: str, tls: Path | None = None) -> list[str]:
    """``flower-superexec`` running the apps of one SuperLink (ServerApp) or SuperNode
    (ClientApp) when those use ``--isolation process``."""
    argv = ["flower-superexec", "--runtime-api-address", runtime_api]
    return [*argv, *(["--insecure"] if tls is None else ["--root-certificates", str(tls / "ca.crt")])]


def _app_service(command: list[str], depends_on: str, context: str,
                 volumes: list[str]) -> dict[str, Any]:
    return {
        "image": "fedsparse-app:${FEDSPARSE_VERSION}",
        "build": {"context": context, "dockerfile": "docker/Dockerfile",
                  "args": {"FLWR_VERSION": "${FLWR_VERSION}", "PYTHON_TAG": "${PYTHON_TAG}"}},
        "command": command[1:], "depends_on": [depends_on], "restart": "on-failure",
        "volumes": volumes,
    }


def compose_services(budgets: Sequence[Budget], tls: bool = False, context: str = "..") -> dict[str, Any]:
    """A compose file: SuperLink, its SuperExec, and per client a SuperNode with its SuperExec.

    With ``tls``: TLS between every SuperNode and the SuperLink and node authentication (each
    node signs with its own key; register its public key with ``flwr supernode register``
    first). Every container gets only the certificate files it needs: the SuperLink its own
    certificate and key and the CA certificate, a node the CA certificate and its own key.
    ``context``: the fedsparse source tree, relative to the compose folder.
    """
    certs = CERTS_IN_CONTAINER if tls else None
    link = superlink_command(tls=certs, node_auth=tls, host="0.0.0.0", isolation="process",
                             database=STATE_IN_CONTAINER / "state.db")
    link_volumes = [f"./state:{STATE_IN_CONTAINER}"]
    if tls:
        link_volumes += [f"./certificates/{name}:{CERTS_IN_CONTAINER}/{name}:ro"
                         for name in ("ca.crt", "server.pem", "server.key")]
    services: dict[str, Any] = {"superlink": {
        "image": "flwr/superlink:${FLWR_VERSION}", "command": link[1:],
        "ports": [f"{SUPERLINK_PORT}:{SUPERLINK_PORT}"], "restart": "on-failure",
        "volumes": link_volumes}}
    ca = [f"./certificates/ca.crt:{CERTS_IN_CONTAINER}/ca.crt:ro"] if tls else []
    services["superexec-serverapp"] = _app_service(
        superexec_command(f"superlink:{SUPERLINK_PORT}", certs), "superlink", context,
        [f"./runs:{RUNS_IN_CONTAINER}", f"./data/server:{DATA_IN_CONTAINER}:ro", *ca])
    for pid, budget in enumerate(budgets):
        key = CERTS_IN_CONTAINER / f"supernode-{pid}" if tls else None
        node = node_command(f"superlink:{SUPERLINK_PORT}", pid, len(budgets), budget, tls=certs, key=key,
                            host="0.0.0.0", isolation="process", data_dir=DATA_IN_CONTAINER)
        services[f"supernode-{pid}"] = {"image": "flwr/supernode:${FLWR_VERSION}", "command": node[1:],
                                        "depends_on": ["superlink"], "restart": "on-failure"}
        if tls:
            services[f"supernode-{pid}"]["volumes"] = [
                *ca, f"./certificates/supernode-{pid}:{CERTS_IN_CONTAINER}/supernode-{pid}:ro"]
        services[f"superexec-clientapp-{pid}"] = _app_service(
            superexec_command(f"supernode-{pid}:{NODE_RUNTIME_PORT}"), f"supernode-{pid}", context,
            [f"./data/supernode-{pid}:{DATA_IN_CONTAINER}:ro"])
    return {"services": services}


def tls_overlay(budgets: Sequence[Budget], context: str = "..") -> dict[str, Any]:
    """The TLS overlay: only what changes (commands and certificate mounts) per service;
    compose merges its volumes with the base file's by container path."""
    plain = compose_services(budgets, context=context)["services"]
    secure = compose_services(budgets, True, context)["services"]
    overlay: dict[str, Any] = {}
    for name, service in secure.items():
        changed: dict[str, Any] = {}
        if service["command"] != plain[name]["command"]:
            changed["command"] = service["command"]
        added = [v for v in service.get("volumes", []) if v not in plain[name].get("volumes", [])]
        if added:
            changed["volumes"] = added
        if changed:
            overlay[name] = changed
    return {"services": overlay}


HEADER = ("# Generated by `fedsparse deploy compose --clients {n}` (do not edit by hand: re-run it).\n"
          "# Versions come from .env. Start: {start}\n")

ENV = """# Versions of the images in compose.yml. FLWR_VERSION must match the installed flwr (the
# project pins flwr[simulation]==1.42.*); written by `fedsparse deploy compose`.
FLWR_VERSION={flwr}
# the Python variant of the app image (fedsparse requires Python 3.11)
PYTHON_TAG={python_tag}
FEDSPARSE_VERSION={fedsparse}
COMPOSE_PROJECT_NAME=fedsparse
"""


def source_tree() -> Path:
    """The fedsparse source tree the app image builds from (it holds docker/Dockerfile)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "docker" / "Dockerfile").is_file() or not (root / "pyproject.toml").is_file():
        raise ConfigError("deploy compose builds the app image from the fedsparse source tree "
                          "(docker/Dockerfile), which this installation lacks: run it from a clone "
                          "installed with 'pip install -e .'")
    return root


def mounted_folders(out_dir: Path, services: dict[str, Any]) -> list[Path]:
    """The folders the services mount (certificates aside, which generate-certs.sh writes),
    read from the services themselves so the two cannot disagree."""
    hosts = {volume.split(":")[0] for spec in services.values() for volume in spec.get("volumes", [])}
    return sorted(out_dir / host for host in hosts if not host.startswith("./certificates"))


def write_compose(out_dir: Path, budgets: Sequence[Budget]) -> tuple[Path, Path, list[Path]]:
    """Write ``compose.yml``, its TLS overlay ``compose.tls.yml``, ``.env`` and the mounted
    folders into ``out_dir`` for these budgets; every path in them is relative to ``out_dir``.
    Returns the two compose files and the folders this call created (only those may be handed
    to Flower's user: a folder that was there belongs to someone else)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    context = os.path.relpath(source_tree(), out_dir.resolve())
    files = (("compose.yml", compose_services(budgets, context=context), "docker compose up --build -d"),
             ("compose.tls.yml", tls_overlay(budgets, context),
              "docker compose -f compose.yml -f compose.tls.yml up --build -d"))
    paths = []
    for name, tree, start in files:
        text = HEADER.format(n=len(budgets), start=start)
        (out_dir / name).write_text(text + yaml.safe_dump(tree, sort_keys=False, width=200))
        paths.append(out_dir / name)
    (out_dir / ".env").write_text(ENV.format(flwr=version("flwr"), python_tag=PYTHON_TAG,
                                             fedsparse=version("fedsparse")))
    created = []
    for folder in mounted_folders(out_dir, files[0][1]["services"]):
        if not folder.exists():
            created.append(folder)
        folder.mkdir(parents=True, exist_ok=True)
    return paths[0], paths[1], created


def give_to_flower(paths: Sequence[Path]) -> bool:
    """Hand ``paths`` to the user Flower's images run as (possible as root only); False when
    this process may not, and the caller should say how."""
    if os.geteuid() != 0:
        return False
    for path in paths:
        for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
            os.chown(item, FLOWER_UID, FLOWER_UID)
    return True
