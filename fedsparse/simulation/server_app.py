"""Flower ServerApp: handshake, then the round loop around a Flower strategy.

fedsparse owns the loop (instead of ``Strategy.start``) to add what an experiment needs and
Flower's loop lacks: waiting for every node, a seeded partition-to-node map, an evaluation
cadence, per-round records written as they happen, failure counts and progress callbacks.
The strategy's own ``configure_*`` / ``aggregate_*`` methods still do the federated work.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from fedsparse.budgets import DECLARED_BUDGET, Budget, parse_declared_budget
from fedsparse.checkpoint import Checkpoint, save_checkpoint
from fedsparse.codec import to_record
from fedsparse.config import ExperimentConfig
from fedsparse.costs import ClientRoundCost
from fedsparse.data.federation import Federation
from fedsparse.errors import SimulationError
from fedsparse.experiment import warmup_epochs
from fedsparse.method import LocalData
from fedsparse.models import build_model
from fedsparse.results import RunRecorder, bottom_decile
from fedsparse.simulation.grid_io import Stragglers, send_and_receive
from fedsparse.simulation.queries import make_ask
from fedsparse.strategies import MaskAwareStrategy
from fedsparse.strategies.messages import NODE_INDEX_KEY
from fedsparse.strategies.validation import PARTITION_KEY, reply_partition
from fedsparse.training import evaluate, train_local
from fedsparse.updates import UpdateRejected

RoundCallback = Callable[[dict[str, Any]], None]


class RoundAbandoned(Exception):
    """A stop was requested while a round's clients trained: nothing of the round is kept
    (the strategy and the method have not seen its replies)."""


@dataclass
class Outcome:
    """What the server loop hands back to the runner once it finishes."""

    rounds_done: int = 0
    #: rounds whose aggregate became the new global model
    rounds_aggregated: int = 0
    #: rounds whose aggregate was refused (not finite, impossible statistics)
    rounds_refused: int = 0
    clients_failed: int = 0
    updates_rejected: int = 0
    budget_violations: int = 0
    costs: list[ClientRoundCost] = field(default_factory=list)
    layer_sent: dict[str, int] = field(default_factory=dict)
    updates_accepted: int = 0
    accuracy: dict[str, float] = field(default_factory=dict)
    #: mean client accuracy per declared density (several tiers only)
    accuracy_by_density: dict[str, float] = field(default_factory=dict)
    evaluated_round: int = 0
    client_rows: list[dict[str, Any]] = field(default_factory=list)
    #: simulated device clock (0 when it is off)
    sim_seconds: float = 0.0
    clients_late: int = 0
    clients_surplus: int = 0
    #: (round, cumulative simulated seconds, mean accuracy) of every evaluated round
    timeline: list[tuple[int, float, float]] = field(default_factory=list)
    #: training FLOPs the clients spent at evaluation (fine-tuning, a gate fit) per evaluated
    #: round, counted by the server from each method's protocol
    eval_flops: dict[int, float] = field(default_factory=dict)
    #: the method's own server-side scores at the final evaluation: key -> (mean, clients)
    server_scores: dict[str, tuple[float, int]] = field(default_factory=dict)


def experiment_defining(config: ExperimentConfig) -> dict[str, Any]:
    """What fixes a run's results: every config key but where it runs and writes
    (``simulation``, ``output``), which a resume may change."""
    return config.model_dump(mode="json", exclude={"simulation", "output"})


def wait_for_nodes(grid: Grid, expected: int, timeout: float,
                   on_stall: Callable[[list[int]], None] | None = None, stall: float = 5.0) -> list[int]:
    """Block until ``expected`` nodes are registered (Flower samples too early otherwise).

    ``on_stall``: called once with the nodes present when their number has not changed for
    ``stall`` seconds (it may raise to end the wait early, e.g. a federation of another size).
    """
    deadline = time.monotonic() + timeout
    seen, since, probed = -1, time.monotonic(), False
    while len(nodes := sorted(grid.get_node_ids())) < expected:
        now = time.monotonic()
        if len(nodes) != seen:
            seen, since = len(nodes), now
        elif nodes and on_stall is not None and not probed and now - since > stall:
            probed = True
            on_stall(nodes)
        if now > deadline:
            raise SimulationError(f"only {len(nodes)} of {expected} nodes connected within "
                                  f"{timeout:.0f}s: start more SuperNodes or raise "
                                  "simulation.node_wait_timeout")
        time.sleep(0.05)
    return nodes


def _hello(nodes: list[int]) -> list[Message]:
    """The handshake query: each node answers with its partition, sizes and declarations."""
    return [Message(RecordDict({"config": ConfigRecord({"hello": 1})}),
                    message_type=MessageType.QUERY, dst_node_id=n) for n in nodes]


def federation_size(grid: Grid, nodes: list[int], timeout: float) -> int | None:
    """The number of partitions the present nodes were started for, when they all agree
    (Flower's simulation gives every node ``num-partitions``); None when unknown. What the
    nodes say: used only to stop a wait early with a message, never as a result."""
    messages = _hello(nodes)
    sizes = {int(r.content["metrics"]["num-partitions"]) for r in send_and_receive(grid, messages, timeout)
             if not r.has_error() and "num-partitions" in r.content["metrics"]}
    return sizes.pop() if len(sizes) == 1 else None


def handshake(grid: Grid, nodes: list[int], timeout: float, train_sizes: list[int] | None = None
              ) -> tuple[dict[int, int], dict[int, Budget]]:
    """Ask every node which partition it serves and, if it declares one, its budget.

    Returns (partition id -> node id, partition id -> declared budget).
    """
    messages = _hello(nodes)
    node_of: dict[int, int] = {}
    declared: dict[int, Budget] = {}
    for reply in send_and_receive(grid, messages, timeout):
        if reply.has_error():
            raise SimulationError(f"node {reply.metadata.src_node_id} failed the handshake: "
                                  f"{reply.error.reason}")
        pid = reply_partition(reply)
        if pid in node_of or not 0 <= pid < len(nodes):
            raise SimulationError(f"node {reply.metadata.src_node_id} claims partition {pid}, which is "
                                  "out of range or claimed twice: give every node its own partition-id")
        held = int(reply.content["metrics"]["num-train"])
        if train_sizes is not None and held != train_sizes[pid]:
            raise SimulationError(f"the node serving partition {pid} holds {held} training samples, "
                                  f"the server's partitioning {train_sizes[pid]}: nodes and server "
                                  "must use the same data, partitioning and seed")
        node_of[pid] = reply.metadata.src_node_id
        if DECLARED_BUDGET in reply.content.config_records:
            declared[pid] = parse_declared_budget(dict(reply.content[DECLARED_BUDGET]), pid)
    missing = sorted(set(range(len(nodes))) - set(node_of))
    if missing:
        raise SimulationError(f"partitions {missing[:5]} did not answer the handshake")
    return node_of, declared


class ServerLoop:
    """The experiment's round loop; one instance per run."""

    def __init__(self, config: ExperimentConfig, federation: Federation, strategy: MaskAwareStrategy,
                 recorder: RunRecorder, on_round: RoundCallback | None = None,
                 resume: Checkpoint | None = None) -> None:
        self.config = config
        self.method = strategy.context.method
        #: set by a signal (``stopping.StopRequest``): the loop abandons the round in progress
        self.stop: Any = threading.Event()
        self.federation = federation
        self.strategy = strategy
        self.recorder = recorder
        self.on_round = on_round
        self.outcome = Outcome()
        self._costs_by_client: dict[int, list[ClientRoundCost]] = {}
        self._global_test = federation.pool.tensors(federation.pooled_test())
        self.initial_arrays = self._initial_arrays()  # also rejects a model unfit for the data
        self.first_round = 1
        #: most messages in flight at once (None: all of a round's)
        self.window: int | None = None
        #: whether an exchange with the clients has finished (the workers have started)
        self.workers_started = False
        #: hashes of the data, partitions and budget file (``federation.fingerprints``), kept in
        #: every checkpoint so a resume can tell they did not change
        self.inputs: dict[str, str] = {}
        if resume is not None:
            self.first_round = resume.server_round + 1
            self.initial_arrays = ArrayRecord(array_dict={
                k: Array(np.array(v, order="C", copy=True)) for k, v in resume.arrays.items()})
            self.outcome = resume.outcome
            strategy.restore_state(resume.strategy_state)
            self.method.load_state_dict(resume.method_state)

    def reply_timeout(self) -> float:
        """Seconds an exchange waits for replies: ``round_timeout``, plus ``startup_grace`` for
        the first, whose clients wait for the workers to start (Ray actors import torch and
        the ClientApp, seconds on a loaded machine), so that a timeout sized for steady rounds
        does not fail the healthy clients of the first."""
        sim = self.config.simulation
        return sim.round_timeout + (0.0 if self.workers_started else sim.startup_grace)

    def _exchange(self, grid: Grid, messages: list[Message], timeout: float,
                  **options: Any) -> list[Message]:
        """Send a round's messages; collect replies until the timeout, or until the clients
        still silent are stragglers by ``simulation.straggler_slack`` (counted as failed)."""
        sim = self.config.simulation
        if sim.straggler_slack is not None:
            options.setdefault("stragglers", Stragglers(sim.straggler_slack, sim.straggler_floor))
        replies = send_and_receive(grid, messages, timeout, **options)
        self.workers_started = True
        return replies

    def _initial_arrays(self) -> ArrayRecord:
        torch.manual_seed(self.config.seed)
        pool = self.federation.pool
        return ArrayRecord(build_model(self.config.model, pool.input_shape,
                                       pool.num_classes).state_dict())

    def is_eval_round(self, server_round: int) -> bool:
        last = server_round == self.config.rounds and self.config.eval.final
        return last or server_round % self.config.eval.every == 0

    def run(self, grid: Grid, node_of: dict[int, int] | None = None,
            virtual_nodes: list[int] | None = None) -> Outcome:
        """Run every round; ``node_of``: a handshake already done (deployment);
        ``virtual_nodes``: nodes that serve the clients as virtual clients (found by the caller).
        Without either, the loop waits for the config's ``flower_nodes`` and routes the clients
        over them as virtual clients; on a Ray cluster (no shared disk for private state) it asks
        every node which partition it serves and hands each client its own node."""
        sim = self.config.simulation
        if node_of is None and virtual_nodes is None:
            nodes = wait_for_nodes(grid, self.config.flower_nodes, sim.node_wait_timeout)
            if sim.ray_address is None:  # (a cluster has a node per client: config.py)
                # fedsparse's own ClientApp knows the run folder: messages need not name it
                self.route_virtual_clients(nodes, name_state_dir=False)
            else:
                node_of, _ = handshake(grid, nodes, sim.node_wait_timeout,
                                       [len(c.train) for c in self.federation.clients])
        if virtual_nodes is not None:
            self.route_virtual_clients(virtual_nodes)
        elif node_of is not None:
            self.strategy.bind_nodes(node_of)
            self.workers_started = True  # they answered the handshake
        arrays = self.initial_arrays
        if self.first_round == 1:
            arrays = self.start_method(grid, arrays)
        saved = self.first_round - 1
        for server_round in range(self.first_round, self.config.rounds + 1):
            if self.stop.is_set():
                break
            started = time.perf_counter()
            try:
                record, new_arrays = self.train_round(grid, server_round, arrays)
                if self.is_eval_round(server_round):
                    record.update(self.evaluate_round(grid, server_round, new_arrays))
            except RoundAbandoned:
                log(WARNING, "round %d abandoned: a stop was requested", server_round)
                break
            arrays = new_arrays
            if self.is_eval_round(server_round) and self.strategy.context.clock is not None:
                self.outcome.timeline.append((server_round, self.outcome.sim_seconds,
                                              record["accuracy_mean"]))
            record["seconds"] = round(time.perf_counter() - started, 4)
            self.recorder.log_round(record)
            log(INFO, "fedsparse: %s", round_line(record, self.config.rounds))
            self.outcome.rounds_done = server_round
            if server_round % sim.checkpoint_every == 0 or server_round == self.config.rounds:
                self.checkpoint(server_round, arrays)
                saved = server_round
            if self.on_round is not None:
                self.on_round(record)
        if self.stop.is_set() and self.outcome.rounds_done > saved:
            self.checkpoint(self.outcome.rounds_done, arrays)  # resume from the last finished round
        return self.outcome

    def route_virtual_clients(self, nodes: list[int], name_state_dir: bool = True) -> None:
        """Many clients per node: client ``p`` is served by node ``p mod len(nodes)``, each
        message names its client, clients keep their private state in the run folder, and no
        more messages than nodes are in flight (so the runtime's polling stays O(nodes x nodes)
        whatever the federation's size). ``name_state_dir``: messages carry the run folder
        (a ClientApp started by Flower, e.g. ``flwr run``, does not know it)."""
        nodes = sorted(nodes)
        routes = {pid: nodes[pid % len(nodes)] for pid in range(self.config.num_clients)}
        state_dir = str(self.recorder.run_dir.resolve()) if name_state_dir else None
        self.strategy.bind_nodes(routes, state_dir=state_dir, virtual=True)
        self.window = len(nodes)
        log(INFO, "fedsparse: %d clients served by %d nodes", self.config.num_clients, len(nodes))

    def checkpoint(self, server_round: int, arrays: ArrayRecord) -> None:
        save_checkpoint(self.recorder.run_dir, Checkpoint(
            server_round, {k: v.numpy() for k, v in arrays.items()}, self.outcome,
            self.strategy.checkpoint_state(), self.method.state_dict(),
            experiment_defining(self.config), self.inputs))

    def warm_up(self, arrays: ArrayRecord) -> ArrayRecord:
        """Before round 1, whatever the method: train the initial model for
        ``partition.server_warmup_epochs`` (or the method's default) on the server's held-back set,
        so every run of a comparison can start from the same warmed-up model."""
        epochs = warmup_epochs(self.config)
        if not epochs:
            return arrays
        pool = self.federation.pool
        x, y = pool.tensors(self.federation.server)
        model = build_model(self.config.model, pool.input_shape, pool.num_classes)
        model.load_state_dict(arrays.to_torch_state_dict())
        settings = self.config.train.model_copy(update={"local_epochs": epochs})
        train_local(model, x, y, settings, torch.Generator().manual_seed(self.config.seed))
        log(INFO, "server warm-up: %d epochs on %d held-back samples", epochs, len(y))
        return ArrayRecord(model.state_dict())

    def start_method(self, grid: Grid, arrays: ArrayRecord) -> ArrayRecord:
        """The server's warm-up, then the method's step before round 1 (e.g. FedTiny's ABNS
        query rounds)."""
        arrays = self.warm_up(arrays)
        state = {k: v.numpy() for k, v in arrays.items()}
        queries = make_ask(grid, self.strategy, self.reply_timeout(), self.window)

        def ask(*args: Any) -> Any:
            replies = queries(*args)
            self.workers_started = True
            return replies

        started = self.method.start(state, ask)
        return arrays if started is state else to_record(started)

    def train_round(self, grid: Grid, server_round: int,
                    arrays: ArrayRecord) -> tuple[dict[str, Any], ArrayRecord]:
        messages = list(self.strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        timeout = self.reply_timeout()
        replies = self._exchange(grid, messages, timeout, stop=self.stop, window=self.window,
                                 on_reply=self.strategy.train_reply_arrived)
        if self.stop.is_set():
            raise RoundAbandoned
        self.strategy.note_node_order(replies)
        failed = sum(r.has_error() for r in replies) + len(messages) - len(replies)
        if len(replies) < len(messages):
            log(WARNING, "round %d: %d of %d clients failed: no reply within %.0f s "
                "(simulation.round_timeout%s)", server_round, len(messages) - len(replies),
                len(messages), timeout, "" if timeout == self.config.simulation.round_timeout
                else " + simulation.startup_grace")
        for reply in replies:
            if reply.has_error():
                log(WARNING, "round %d: node %d failed: %s", server_round,
                    reply.metadata.src_node_id, reply.error.reason)
        new_arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        report = self.strategy.report
        skipped = len(report.costs) < self.config.simulation.min_clients
        if skipped:
            log(WARNING, "round %d: %d accepted updates, fewer than simulation.min_clients=%d: "
                "the global model is kept", server_round, len(report.costs),
                self.config.simulation.min_clients)
            new_arrays = None
        self.outcome.clients_failed += failed
        self.outcome.updates_rejected += len(report.rejected)
        self.outcome.budget_violations += len(report.violations)
        self.outcome.costs.extend(report.costs)
        for kept in report.layer_kept:
            self.outcome.updates_accepted += 1
            for name, nnz in kept.items():
                self.outcome.layer_sent[name] = self.outcome.layer_sent.get(name, 0) + nnz
        record: dict[str, Any] = {
            "round": server_round,
            "clients_sampled": len(messages),
            "clients_failed": failed,
            "updates_rejected": len(report.rejected),
            "budget_violations": len(report.violations),
            "clients_accepted": len(report.costs),
            "aggregated": not skipped and new_arrays is not None,
            "aggregate_refused": report.refused,
            **report.notes,
            "train_loss": float(metrics["train-loss"]) if metrics else None,
            **mean_costs(report.costs),
        }
        self.outcome.rounds_aggregated += int(record["aggregated"])
        self.outcome.rounds_refused += int(report.refused is not None)
        if report.timing is not None:
            self.outcome.sim_seconds += report.timing.seconds
            self.outcome.clients_late += len(report.timing.late)
            self.outcome.clients_surplus += len(report.timing.surplus)
            record.update({"sim_round_seconds": report.timing.seconds,
                           "sim_seconds": self.outcome.sim_seconds,
                           "clients_late": len(report.timing.late),
                           "clients_surplus": len(report.timing.surplus)})
        return record, new_arrays if new_arrays is not None else arrays

    def evaluate_round(self, grid: Grid, server_round: int, arrays: ArrayRecord) -> dict[str, Any]:
        """Clients evaluate their deployed models (all of them at the final round, a seeded sample
        before: ``eval.fraction``); the server scores the global model."""
        self.strategy.evaluation_partitions = None
        messages = list(self.strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid))
        # not abandoned on a stop: the round's training already changed the strategy's and the
        # method's state, so the round finishes (and is recorded) before the loop stops
        replies = self._exchange(grid, messages, self.reply_timeout(), window=self.window)
        self.strategy.note_node_order(replies)
        rows = []
        novel = self.method.novel_clients()
        rejected = 0
        seen: set[int] = set()
        for reply in replies:
            if reply.has_error():
                continue
            try:
                row = self.evaluation_row(reply, novel)
            except (UpdateRejected, KeyError, TypeError, ValueError) as exc:
                rejected += 1
                log(WARNING, "round %d: evaluation of node %d rejected: %s", server_round,
                    reply.metadata.src_node_id, exc)
                continue
            if row["partition_id"] in seen:
                rejected += 1
                continue
            seen.add(row["partition_id"])
            rows.append(row)
        rows.sort(key=lambda row: row["partition_id"])
        self._costs_by_client.clear()
        for cost in self.outcome.costs:
            self._costs_by_client.setdefault(cost.partition_id, []).append(cost)
        for row in rows:
            row.update(self.client_costs(row["partition_id"]))
        if server_round == self.config.rounds:
            self.outcome.server_scores = self.method_server_scores(arrays, rows)
        self.outcome.eval_flops[server_round] = sum(r["eval_train_flops"] for r in rows)
        accuracies = [row["accuracy"] for row in rows]
        accuracy = {
            "mean": _mean(accuracies),
            "bottom_decile": bottom_decile(accuracies),
            "global": (self.global_accuracy(arrays, self.strategy.evaluation_partitions)
                       if self.config.eval.global_model else None),
            # what selection reads (the clients' validation splits); None without one
            "val_mean": _mean([r["val_accuracy"] for r in rows if "val_accuracy" in r])
            if any("val_accuracy" in r for r in rows) else None,
        }
        densities = sorted({row["budget_density"] for row in rows})
        # per tier: a mean over tiers hides what the small clients get
        self.outcome.accuracy_by_density = {
            f"{d:g}": _mean([r["accuracy"] for r in rows if r["budget_density"] == d])
            for d in densities} if len(densities) > 1 else {}
        if novel:
            accuracy["seen"] = _mean([r["accuracy"] for r in rows if not r["novel"]])
            accuracy["novel"] = _mean([r["accuracy"] for r in rows if r["novel"]])
        self.outcome.accuracy = accuracy
        self.outcome.evaluated_round = server_round
        self.outcome.client_rows = rows
        self.recorder.write_clients(rows)
        self.recorder.write_layers(self.layer_densities())
        return {"accuracy_mean": accuracy["mean"], "accuracy_bottom_decile": accuracy["bottom_decile"],
                "accuracy_global": accuracy["global"], "accuracy_val_mean": accuracy["val_mean"],
                "eval_train_flops": self.outcome.eval_flops[server_round],
                "loss_mean": _mean([r["loss"] for r in rows]),
                "clients_evaluated": len(rows),
                "eval_failed": len(messages) - len(rows) - rejected, "eval_rejected": rejected}

    def evaluation_row(self, reply: Message, novel: frozenset[int]) -> dict[str, Any]:
        """A validated evaluation reply: the node serves the partition it names, the example
        count is that partition's test split, accuracy in [0, 1], finite non-negative loss."""
        metrics = reply.content["metrics"]
        pid = whole_number(metrics[PARTITION_KEY], PARTITION_KEY)
        if self.strategy.node_of.get(pid) != reply.metadata.src_node_id:
            raise UpdateRejected(f"it names partition {pid}, which its node does not serve")
        split = self.federation.clients[pid]
        accuracy, loss = float(metrics["accuracy"]), float(metrics["loss"])
        if not 0.0 <= accuracy <= 1.0 or not (math.isfinite(loss) and loss >= 0):
            raise UpdateRejected(f"impossible accuracy {accuracy} or loss {loss}")
        if whole_number(metrics["num-examples"], "num-examples") != len(split.test):
            raise UpdateRejected(f"num-examples {metrics['num-examples']} is not the "
                                 f"{len(split.test)} test samples partition {pid} holds")
        if not is_share(accuracy, len(split.test)):
            raise UpdateRejected(f"accuracy {accuracy} is no share of {len(split.test)} test samples")
        scores = {"accuracy": accuracy, "loss": loss}
        if len(split.val):
            scores.update(validation_scores(metrics, len(split.val)))
        known = {PARTITION_KEY, NODE_INDEX_KEY, "num-examples", "val-num-examples",
                 *(k.replace("_", "-") for k in scores)}
        extra = {k.replace("-", "_"): float(v) for k, v in metrics.items()
                 if k not in known and isinstance(v, (int, float)) and math.isfinite(float(v))}
        for key in extra:
            if is_server_field(key):
                raise UpdateRejected(f"its metric '{key}' names a field the server writes")
        cost = self.method.evaluation_cost(self.strategy.context.budgets[pid], len(split.train),
                                           pid in novel)
        row = {"partition_id": pid, "num_train": len(split.train), "num_test": len(split.test),
               "novel": int(pid in novel), **scores,
               "eval_train_flops": cost.flops if cost is not None else 0.0}
        row.update(extra)
        return row

    def method_server_scores(self, arrays: ArrayRecord, rows: list[dict[str, Any]]
                             ) -> dict[str, tuple[float, int]]:
        """The method's ``server_scores`` of every evaluated client on the final global model,
        added to the client's row; their means (and how many clients each holds)."""
        pool = self.federation.pool
        model = build_model(self.config.model, pool.input_shape, pool.num_classes)
        model.load_state_dict(arrays.to_torch_state_dict())
        sums: dict[str, list[float]] = {}
        for row in rows:
            pid = row["partition_id"]
            split = self.federation.clients[pid]
            data = LocalData(*pool.tensors(split.train), *pool.tensors(split.val),
                             *pool.tensors(split.test))
            scores = self.method.server_scores(model, data, self.strategy.context.budgets[pid])
            for key, value in scores.items():
                row[f"server_{key.replace('-', '_')}"] = value
                sums.setdefault(key, []).append(value)
        return {key: (sum(v) / len(v), len(v)) for key, v in sorted(sums.items())}

    def layer_densities(self) -> dict[str, dict[str, float]]:
        """Mean share of each parameter tensor that accepted updates carried."""
        sizes = self.strategy.context.cost_model.param_sizes
        count = max(self.outcome.updates_accepted, 1)
        return {name: {"numel": numel,
                       "density": self.outcome.layer_sent.get(name, 0) / (numel * count)}
                for name, numel in sizes.items()}

    def client_costs(self, pid: int) -> dict[str, Any]:
        """The client's declared budget and its mean costs over the rounds it trained."""
        budget = self.strategy.context.budgets[pid]
        mine = self._costs_by_client.get(pid, [])
        row: dict[str, Any] = {f"budget_{k}": v for k, v in budget.as_dict().items()}
        row["rounds_trained"] = len(mine)
        row.update(mean_costs(mine, prefix=""))
        return row

    def global_accuracy(self, arrays: ArrayRecord, partitions: list[int] | None = None) -> float:
        """The global model on the pooled test splits of ``partitions`` (None or every client:
        all of them). Between the first and the final round only a sample of clients evaluates
        (``eval.fraction``), and the server scores the global model on their tests too: on the
        whole pool it would cost several training rounds' compute at every evaluation."""
        pool = self.federation.pool
        model = build_model(self.config.model, pool.input_shape, pool.num_classes)
        model.load_state_dict(arrays.to_torch_state_dict())
        if partitions is None or len(set(partitions)) >= self.federation.num_clients:
            x, y = self._global_test
        else:
            clients = self.federation.clients
            x, y = pool.tensors(np.concatenate([clients[p].test for p in sorted(set(partitions))]))
        return evaluate(model, x, y, self.config.eval.batch_size).accuracy


def whole_number(value: Any, key: str) -> int:
    """An integer the client reports (a partition id, a sample count): a float with a fraction
    is a lie, not something to round."""
    number = float(value)
    if not math.isfinite(number) or number != int(number):
        raise UpdateRejected(f"{key} {value!r} is not a whole number")
    return int(number)


def is_share(accuracy: float, count: int) -> bool:
    """Whether ``accuracy`` is k / ``count`` for a whole k (what counting correct answers gives)."""
    correct = accuracy * count
    return 0.0 <= accuracy <= 1.0 and abs(correct - round(correct)) <= 1e-6 * max(count, 1)


def validation_scores(metrics: Any, num_val: int) -> dict[str, float]:
    """A reply's validation accuracy and loss, checked like its test scores: the example count is
    the partition's validation split, the accuracy a share of it, the loss finite. A method that
    scores no validation split (a plug-in's own ``evaluate``) reports none: ``{}``."""
    if "val-accuracy" not in metrics:
        return {}
    try:
        accuracy, loss = float(metrics["val-accuracy"]), float(metrics["val-loss"])
        count = whole_number(metrics["val-num-examples"], "val-num-examples")
    except KeyError as exc:
        raise UpdateRejected(f"the reply lacks {exc.args[0]} (the partition holds {num_val} "
                             "validation samples)") from None
    if count != num_val:
        raise UpdateRejected(f"val-num-examples {count} is not the {num_val} validation samples "
                             "the partition holds")
    if not is_share(accuracy, num_val):
        raise UpdateRejected(f"val-accuracy {accuracy} is no share of {num_val} samples")
    if not (math.isfinite(loss) and loss >= 0):
        raise UpdateRejected(f"impossible val-loss {loss}")
    return {"val_accuracy": accuracy, "val_loss": loss}


def round_line(record: dict[str, Any], rounds: int) -> str:
    """One line per finished round for logs (``flwr run --stream`` shows the ServerApp's)."""
    parts = [f"round {record['round']}/{rounds}",
             f"{record['clients_accepted']}/{record['clients_sampled']} updates accepted"]
    if record.get("train_loss") is not None:
        parts.append(f"train loss {record['train_loss']:.4f}")
    if record.get("accuracy_mean") is not None:
        parts.append(f"accuracy {record['accuracy_mean']:.4f} over {record['clients_evaluated']} "
                     "clients")
    failed = record["clients_failed"] + record["updates_rejected"]
    if failed:
        parts.append(f"{record['clients_failed']} failed, {record['updates_rejected']} rejected")
    parts.append(f"{record['seconds']:.1f} s")
    return ", ".join(parts)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


COST_FIELDS = ("density", "train_flops", "memory_bytes", "activation_bytes", "upload_bytes",
               "download_bytes", "conv_linear_flops")
RATIO_FIELDS = ("train_flops", "memory_bytes", "activation_bytes", "upload_bytes", "download_bytes",
                "conv_linear_flops")

#: clients.csv fields the server writes (beside every ``budget_*`` and ``server_*`` one); a
#: client's own evaluation metrics may not use these names
SERVER_FIELDS = frozenset({
    "partition_id", "num_train", "num_test", "novel", "accuracy", "loss", "val_accuracy",
    "val_loss", "eval_train_flops", "rounds_trained", "sim_seconds", *COST_FIELDS,
    *(f"{name}_ratio" for name in RATIO_FIELDS)})


def is_server_field(key: str) -> bool:
    return key in SERVER_FIELDS or key.startswith(("budget_", "server_"))


def mean_costs(costs: list[ClientRoundCost], prefix: str = "cost_") -> dict[str, float | None]:
    """Mean over (client, round) of each cost, and each cost's ratio to dense doing the same work.

    Ratios are ratios of means (total sparse cost / total dense cost), so big clients weigh more.
    """
    out: dict[str, float | None] = {}
    for name in COST_FIELDS:
        values = [getattr(c, name) for c in costs]
        out[f"{prefix}{name}"] = float(sum(values) / len(values)) if values else None
    timed = [c.sim_seconds for c in costs if c.sim_seconds is not None]
    if timed:
        out[f"{prefix}sim_seconds"] = float(sum(timed) / len(timed))
    for name in RATIO_FIELDS:
        dense = sum(getattr(c, f"dense_{name}") for c in costs)
        out[f"{prefix}{name}_ratio"] = float(sum(getattr(c, name) for c in costs) / dense) \
            if costs and dense else None
    return out


def make_server_app(loop: ServerLoop) -> ServerApp:
    """Wrap the loop in a Flower ServerApp."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        loop.run(grid)

    return app
