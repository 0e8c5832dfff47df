"""The ServerApp that ``flwr run .`` deploys (named in pyproject.toml's ``[tool.flwr.app]``;
the ClientApp is ``fedsparse.deploy.client``).

The ServerApp runs the same round loop, strategies and methods as the simulation; the only
differences are where things come from: the experiment from the run config
(``fedsparse.deploy.run_config``), each client's partition *and budget* from its SuperNode's
``--node-config`` (``partition-id``, ``num-partitions``, ``budget-density``,
``budget-train-flops``, ``budget-memory-bytes``, ``budget-upload-bytes``, ``device``), learned
by the server in the handshake instead of its own config.
"""

from __future__ import annotations

import time
from dataclasses import replace
from logging import ERROR, INFO

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from fedsparse.budgets import Budget
from fedsparse.config import ExperimentConfig
from fedsparse.data.federation import Federation, build_federation
from fedsparse.deploy.run_config import deployed_config
from fedsparse.errors import ConfigError, FedsparseError
from fedsparse.experiment import budgets_of, method_class
from fedsparse.report import results_text
from fedsparse.results import RunRecorder, new_run_dir
from fedsparse.simulation.runner import RunResult, finish_run, strategy_context
from fedsparse.simulation.server_app import ServerLoop, federation_size, handshake, wait_for_nodes
from fedsparse.strategies import build_strategy, check_strategy


def declared_budgets(declared: dict[int, Budget], configured: list[Budget]) -> list[Budget]:
    """One budget per partition: what its node declared, else the config's seeded assignment
    (Flower's local simulation declares nothing), with tiers numbered by density so plots
    colour them apart."""
    budgets = [declared.get(pid, configured[pid]) for pid in range(len(configured))]
    order = {d: i for i, d in enumerate(sorted({b.density for b in budgets}))}
    return [replace(b, tier=order[b.density]) for b in budgets]


def budget_source(declared: dict[int, Budget], num_clients: int) -> str:
    """Where the run's budgets came from, for ``summary.json``."""
    if len(declared) == num_clients:
        return "declared by the nodes"
    if not declared:
        return "config tiers (no node declared a budget)"
    return f"declared by {len(declared)} nodes, config tiers for the other {num_clients - len(declared)}"


def run_deployed(grid: Grid, config: ExperimentConfig) -> RunResult:
    """The experiment on real SuperNodes: budgets come from the nodes."""
    started = time.perf_counter()
    check_strategy(config, method_class(config).sparse_updates)
    federation = build_federation(config)
    timeout = config.simulation.node_wait_timeout

    def complete_federation_of_another_size(nodes: list[int]) -> None:
        size = federation_size(grid, nodes, timeout)
        if size == len(nodes) < config.num_clients:
            raise SmallerSimulation(nodes)
        if size == len(nodes) != config.num_clients:
            raise ConfigError(
                f"the federation has {size} SuperNodes, started for {size} partitions, but the "
                f"experiment has num_clients={config.num_clients}: for Flower's local simulation "
                f"run 'flwr run . --federation-config \"num-supernodes={config.num_clients}\"', "
                f"or pass --run-config 'set=\"num_clients={size}\"'")

    try:
        nodes = wait_for_nodes(grid, config.num_clients, timeout,
                               complete_federation_of_another_size)
    except SmallerSimulation as smaller:
        return run_virtual(grid, config, federation, smaller.nodes, started)
    node_of, declared = handshake(grid, nodes, timeout, [len(c.train) for c in federation.clients])
    budgets = declared_budgets(declared, budgets_of(config))
    log(INFO, "fedsparse: %d nodes, declared densities %s", len(node_of),
        sorted({b.density for b in budgets}))
    context = strategy_context(config, federation, budgets)
    strategy = build_strategy(config, context)
    recorder = RunRecorder(new_run_dir(config), config)
    loop = ServerLoop(config, federation, strategy, recorder)
    loop.run(grid, node_of=node_of)
    return _finish(config, loop, recorder, started, budget_source(declared, config.num_clients))


class SmallerSimulation(Exception):
    """Flower's local simulation started fewer nodes than the experiment has clients."""

    def __init__(self, nodes: list[int]) -> None:
        super().__init__(f"{len(nodes)} simulation nodes")
        self.nodes = nodes


def run_virtual(grid: Grid, config: ExperimentConfig, federation: Federation, nodes: list[int],
                started: float) -> RunResult:
    """A simulation federation smaller than the experiment (e.g. ``flwr run .`` on Flower's
    default local simulation): its nodes serve the clients as virtual clients, with the config's
    budgets (simulated nodes declare none), as ``fedsparse simulate`` does beyond 100 clients."""
    log(INFO, "fedsparse: the federation has %d simulation nodes for %d clients: each node serves "
        "virtual clients", len(nodes), config.num_clients)
    context = strategy_context(config, federation, budgets_of(config))
    strategy = build_strategy(config, context)
    recorder = RunRecorder(new_run_dir(config), config)
    loop = ServerLoop(config, federation, strategy, recorder)
    loop.run(grid, virtual_nodes=nodes)
    return _finish(config, loop, recorder, started,
                   f"config tiers ({config.num_clients} virtual clients on {len(nodes)} "
                   "simulation nodes)")


def _finish(config: ExperimentConfig, loop: ServerLoop, recorder: RunRecorder, started: float,
            source: str) -> RunResult:
    result = finish_run(config, loop, recorder, started, budget_source=source)
    log(INFO, "fedsparse: results\n%s", results_text(result.summary))
    log(INFO, "fedsparse: run folder %s", result.run_dir)
    return result


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """A user error (config, federation size, bad declaration) is one logged line and a failed
    run, not a traceback."""
    try:
        run_deployed(grid, deployed_config(dict(context.run_config)))
    except FedsparseError as exc:
        log(ERROR, "fedsparse: error: %s", exc)
        raise SystemExit(exc.exit_code) from None

