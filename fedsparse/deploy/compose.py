"""Commands of a deployment's processes, and Docker compose files built from the same commands.

One function per process kind builds its argv, so the compose files, the process tests and the
README show the same flags. Compose files run ``--isolation process``: the SuperLink and each
SuperNode hand their apps to a SuperExec container built from ``docker/Dockerfile``
(``flwr/superexec`` with fedsparse installed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from fedsparse.budgets import NODE_BUDGET_KEYS, PARTITION_KEY, Budget

SUPERLINK_PORT = 8000
NODE_RUNTIME_PORT = 9094
CERTS_IN_CONTAINER = Path("/app/certificates")


def _tls_server_flags(tls: Path | None) -> list[str]:
    if tls is None:
        return ["--insecure"]
    return ["--ssl-ca-certfile", str(tls / "ca.crt"), "--ssl-certfile", str(tls / "server.pem"),
            "--ssl-keyfile", str(tls / "server.key")]


def superlink_command(port: int = SUPERLINK_PORT, tls: Path | None = None, node_auth: bool = False,
                      host: str = "127.0.0.1", isolation: str = "subprocess") -> list[str]:
    """``flower-superlink``: one HTTP port for Fleet, Control and Runtime APIs."""
    argv = ["flower-superlink", *_tls_server_flags(tls)]
    if node_auth:
        argv.append("--enable-supernode-auth")
    return [*argv, "--isolation", isolation, "--host", host, "--port", str(port),
            "--disable-runtime-dependency-installation"]


def node_config(partition_id: int, num_partitions: int, budget: Budget) -> str:
    """``--node-config``: the partition this node serves and the budget it declares."""
    fields = {PARTITION_KEY: partition_id, "num-partitions": num_partitions}
    values = budget.as_dict()
    for key, name in NODE_BUDGET_KEYS.items():
        value = values[name]
        if value is not None:
            fields[key] = f'"{value}"' if isinstance(value, str) else value
    return " ".join(f"{k}={v}" for k, v in fields.items())


def node_command(superlink: str, partition_id: int, num_partitions: int, density: float | Budget,
                 port: int = NODE_RUNTIME_PORT, tls: Path | None = None, key: Path | None = None,
                 host: str = "127.0.0.1", isolation: str = "subprocess") -> list[str]:
    """``flower-supernode`` serving one partition with its declared budget."""
    budget = density if isinstance(density, Budget) else Budget(density=density)
    argv = ["flower-supernode"]
    argv += ["--insecure"] if tls is None else ["--root-certificates", str(tls / "ca.crt")]
    if key is not None:
        argv += ["--auth-supernode-private-key", str(key)]
    return [*argv, "--superlink", superlink, "--isolation", isolation, "--host", host,
            "--port", str(port), "--node-config", node_config(partition_id, num_partitions, budget)]


def superexec_command(runtime_api: str, tls: Path | None = None) -> list[str]:
    """``flower-superexec`` running the apps of one SuperLink (ServerApp) or SuperNode
    (ClientApp) when those use ``--isolation process``."""
    argv = ["flower-superexec", "--runtime-api-address", runtime_api]
    return [*argv, *(["--insecure"] if tls is None else ["--root-certificates", str(tls / "ca.crt")])]


def _app_service(command: list[str], depends_on: str, tls: bool) -> dict[str, Any]:
    service: dict[str, Any] = {
        "image": "fedsparse-app:${FEDSPARSE_VERSION}",
        "build": {"context": "..", "dockerfile": "docker/Dockerfile",
                  "args": {"FLWR_VERSION": "${FLWR_VERSION}", "PYTHON_TAG": "${PYTHON_TAG}"}},
        "command": command[1:], "depends_on": [depends_on], "restart": "on-failure",
    }
    if tls:
        service["volumes"] = [f"./certificates/ca.crt:{CERTS_IN_CONTAINER}/ca.crt:ro"]
    return service


def compose_services(budgets: Sequence[Budget], tls: bool = False) -> dict[str, Any]:
    """A compose file: SuperLink, its SuperExec, and per client a SuperNode with its SuperExec.

    With ``tls``: TLS between every SuperNode and the SuperLink (certificates from
    ``docker/generate-certs.sh`` mounted read-only) and node authentication (each node signs
    with its own key; register its public key with ``flwr supernode register`` first).
    """
    certs = CERTS_IN_CONTAINER if tls else None
    link = superlink_command(tls=certs, node_auth=tls, host="0.0.0.0", isolation="process")
    services: dict[str, Any] = {"superlink": {
        "image": "flwr/superlink:${FLWR_VERSION}", "command": link[1:],
        "ports": [f"{SUPERLINK_PORT}:{SUPERLINK_PORT}"], "restart": "on-failure"}}
    if tls:
        services["superlink"]["volumes"] = [f"./certificates:{CERTS_IN_CONTAINER}:ro"]
    services["superexec-serverapp"] = _app_service(
        superexec_command(f"superlink:{SUPERLINK_PORT}", certs), "superlink", tls)
    for pid, budget in enumerate(budgets):
        key = CERTS_IN_CONTAINER / f"supernode-{pid}" if tls else None
        node = node_command(f"superlink:{SUPERLINK_PORT}", pid, len(budgets), budget, tls=certs, key=key,
                            host="0.0.0.0", isolation="process")
        services[f"supernode-{pid}"] = {"image": "flwr/supernode:${FLWR_VERSION}", "command": node[1:],
                                        "depends_on": ["superlink"], "restart": "on-failure"}
        if tls:
            services[f"supernode-{pid}"]["volumes"] = [
                f"./certificates/ca.crt:{CERTS_IN_CONTAINER}/ca.crt:ro",
                f"./certificates/supernode-{pid}:{CERTS_IN_CONTAINER}/supernode-{pid}:ro"]
        services[f"superexec-clientapp-{pid}"] = _app_service(
            superexec_command(f"supernode-{pid}:{NODE_RUNTIME_PORT}"), f"supernode-{pid}", False)
    return {"services": services}


def tls_overlay(budgets: Sequence[Budget]) -> dict[str, Any]:
    """The TLS overlay: only what changes (commands and certificate mounts) per service."""
    plain, secure = compose_services(budgets)["services"], compose_services(budgets, True)["services"]
    return {"services": {name: {k: v for k, v in service.items() if k in ("command", "volumes")}
                         for name, service in secure.items() if service != plain[name]}}


HEADER = ("# Generated by `fedsparse deploy compose --clients {n}` (do not edit by hand: re-run it).\n"
          "# Versions come from .env. Start: {start}\n")


def write_compose(out_dir: Path, budgets: Sequence[Budget]) -> tuple[Path, Path]:
    """Write ``compose.yml`` and its TLS overlay ``compose.tls.yml`` for these budgets."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = (("compose.yml", compose_services(budgets), "docker compose up --build -d"),
             ("compose.tls.yml", tls_overlay(budgets),
              "docker compose -f compose.yml -f compose.tls.yml up --build -d"))
    paths = []
    for name, tree, start in files:
        text = HEADER.format(n=len(budgets), start=start)
        (out_dir / name).write_text(text + yaml.safe_dump(tree, sort_keys=False, width=200))
        paths.append(out_dir / name)
    return paths[0], paths[1]
