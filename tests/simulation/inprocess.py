"""The whole experiment in one process: the real ServerLoop, strategies, methods and ClientApp,
with a grid that hands each message straight to the ClientApp instead of Flower's Simulation
Runtime and Ray. Tests of method and strategy behaviour use it (~2 s a run instead of ~16 s);
the Ray path itself is covered by the end-to-end tests that start real simulations.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity
from typer.testing import CliRunner

from fedsparse.cli import app
from fedsparse.config import ExperimentConfig
from fedsparse.simulation import runner
from fedsparse.simulation.client_app import make_client_app
from fedsparse.simulation.server_app import ServerLoop, handshake


class InProcessGrid(Grid):
    """Delivers each pushed message to the ClientApp of its node at once; a node's Context (and
    so its private state) lives as long as the grid."""

    def __init__(self, client_app: ClientApp, num_nodes: int) -> None:
        self.client_app = client_app
        self.nodes = {1000 + pid: Context(run_id=1, node_id=1000 + pid, state=RecordDict(),
                                          node_config={"partition-id": pid, "num-partitions": num_nodes},
                                          run_config={})
                      for pid in range(num_nodes)}
        self.replies: dict[str, Message] = {}
        self._ids = itertools.count()

    @property
    def run(self) -> Any:
        return None

    def set_run(self, run_id: int) -> None:
        return None

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        raise NotImplementedError("fedsparse builds its messages itself")

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def get_nodes(self) -> Any:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            message_id = f"m{next(self._ids)}"
            msg.metadata.__dict__["_message_id"] = message_id
            msg.metadata.__dict__["_run_id"] = 1
            try:
                reply = self.client_app(message=msg, context=self.nodes[msg.metadata.dst_node_id])
            except Exception as exc:  # the simulation runtime turns these into Error replies
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=str(exc)),
                                reply_to=msg)
            self.replies[message_id] = reply
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


@contextmanager
def _server_identity() -> Iterator[None]:
    """Messages can only be built where Flower knows the current task: act as the server."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 7, 1, 1
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def _simulate(cfg: ExperimentConfig, loop: ServerLoop, client_app: Any, run_dir: Path,
              ray_tmp: Path) -> None:
    with _server_identity():
        loop.run(InProcessGrid(client_app, cfg.flower_nodes))


def _simulate_one_node_per_client(cfg: ExperimentConfig, loop: ServerLoop, client_app: Any,
                                  run_dir: Path, ray_tmp: Path) -> None:
    """Flower's own model, as on a Ray cluster or a deployment: a node per client, found by the
    handshake, private state in the node's Context."""
    with _server_identity():
        grid = InProcessGrid(client_app, cfg.num_clients)
        node_of, _ = handshake(grid, list(grid.nodes), cfg.simulation.node_wait_timeout,
                               [len(c.train) for c in loop.federation.clients])
        loop.run(grid, node_of=node_of)


@contextmanager
def in_process(one_node_per_client: bool = False) -> Iterator[None]:
    """Within the block, ``run_experiment`` (and so ``fedsparse simulate``) runs in this process;
    ``one_node_per_client``: through the handshake, instead of virtual clients."""
    original = runner._simulate, runner.start_ray
    runner._simulate = _simulate_one_node_per_client if one_node_per_client else _simulate
    runner.start_ray = lambda config, ray_tmp: None  # no Ray here
    try:
        yield
    finally:
        runner._simulate, runner.start_ray = original


def simulate_in_process(config: ExperimentConfig, out: Path) -> runner.RunResult:
    """``run_experiment`` with the in-process grid in place of ``run_simulation``."""
    config = config.model_copy(update={"output": config.output.model_copy(update={"dir": out})})
    with in_process():
        return runner.run_experiment(config)


def invoke_here(*args: str, one_node_per_client: bool = False) -> Any:
    """``fedsparse ARGS`` through the real CLI, simulations in this process; Click's result."""
    with in_process(one_node_per_client):
        return CliRunner().invoke(app, list(args), prog_name="fedsparse")


def simulate_here(out: Path, *args: str, one_node_per_client: bool = False) -> Path:
    """``fedsparse simulate --out OUT ARGS`` through the real CLI, in this process; the run folder."""
    result = invoke_here("simulate", "--out", str(out), *args,
                         one_node_per_client=one_node_per_client)
    assert result.exit_code == 0, (result.stderr or "")[-3000:] + repr(result.exception)
    runs = sorted(Path(out).iterdir())
    assert len(runs) == 1
    return runs[0]


__all__ = ["InProcessGrid", "in_process", "invoke_here", "make_client_app", "simulate_here",
           "simulate_in_process"]
