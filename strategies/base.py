"""The mask-aware base strategy: a Flower ``FedAvg`` subclass that owns everything but the math.

It composes small parts and knows no method: sampling (``fedsparse.sampling``), per-client
messages (``messages``), reply validation (``validation``), the method's checks of its own
records, budget checks (``fedsparse.budgets.over_budget``) and cost accounting
(``accounting``). A subclass overrides one method, ``aggregate_updates``, which gets the current
global arrays and the round's accepted updates and returns the new global arrays.
"""

from __future__ import annotations

import inspect
import math
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from flwr.supercore import log

from fedsparse.aggregation import clip_update, unusable
from fedsparse.budgets import Budget, over_budget
from fedsparse.clock import ClockSettings, RoundTiming, client_seconds, settle_round
from fedsparse.costs import ClientRoundCost, CostModel
from fedsparse.method import Method
from fedsparse.sampling import evaluation_sample, sample_clients
from fedsparse.strategies.accounting import CostAccountant
from fedsparse.strategies.messages import NODE_INDEX_KEY, MessageBuilder
from fedsparse.strategies.validation import (
    ClientUpdate,
    ReplyValidator,
    reply_partition,
    safe_partition,
)
from fedsparse.updates import Template, UpdateRejected

__all__ = ["ClientRoundCost", "ClientUpdate", "MaskAwareStrategy", "RoundReport", "StrategyContext",
           "reply_partition"]


@dataclass
class RoundReport:
    """The base strategy's account of the last training round."""

    costs: list[ClientRoundCost] = field(default_factory=list)
    violations: list[tuple[int, str]] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    failed: int = 0
    #: per accepted update: parameter name -> coordinates sent
    layer_kept: list[dict[str, int]] = field(default_factory=list)
    #: the simulated clock's verdict (None when it is off)
    timing: RoundTiming | None = None
    #: why the aggregated model was refused (None: it was used or nothing was aggregated)
    refused: str | None = None
    #: figures the aggregation adds to the round's record (updates clipped, coordinates a
    #: robust rule held back)
    notes: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StrategyContext:
    """What the base needs to know about the experiment."""

    seed: int
    clients_per_round: int
    budgets: list[Budget]
    cost_model: CostModel
    template: Template
    batch_size: int
    momentum: bool
    #: the method being run (its per-client submodels, records, checks and costs)
    method: Method
    #: training samples of each partition, as the server knows them (its own partitioning in
    #: simulation; the same seeded partitioning on a deployed server): a reply's example
    #: count must match, and training FLOPs are counted from it
    train_sizes: list[int]
    #: local epochs per round (the protocol every client follows)
    local_epochs: int = 1
    #: the simulated device clock (None: off)
    clock: ClockSettings | None = None
    #: clients evaluated at an intermediate evaluation round (None: every client)
    eval_clients: int | None = None
    #: the run's last round, where every client is evaluated whatever ``eval_clients`` says
    final_round: int | None = None
    #: L2 bound on each update's change to the model (None: no bound); larger ones are scaled
    max_update_norm: float | None = None


class MaskAwareStrategy(FlowerFedAvg):
    """Base for strategies that aggregate updates whose masks and key sets differ."""

    #: whether ``aggregate_updates`` can handle updates that are not fully dense
    accepts_sparse = True

    def __init__(self, context: StrategyContext) -> None:
        super().__init__(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=1,
                         min_evaluate_nodes=1, min_available_nodes=1)
        self.context = context
        self.server_round = 0
        self.node_of: dict[int, int] = {}
        #: the nodes this round's training messages went to (virtual clients move between nodes)
        self.train_routes: dict[int, int] = {}
        #: node id -> the index at which Flower registered it, learned from replies (scheduling)
        self.node_order: dict[int, int] = {}
        #: the clients asked to evaluate in the latest evaluation round (None: not known, e.g. a
        #: plug-in's own ``configure_evaluate``): the server scores the global model on their tests
        self.evaluation_partitions: list[int] | None = None
        #: config each message adds when nodes serve virtual clients (the client's id, the folder
        #: of client states); empty when every node is one client
        self.routing: dict[str, Any] = {}
        self.report = RoundReport()
        self.messages = MessageBuilder(context.method, context.budgets,
                                       context.cost_model.param_sizes, self.arrayrecord_key,
                                       self.configrecord_key)
        self.validator = ReplyValidator(context.template, context.budgets, context.train_sizes,
                                        context.local_epochs, self.arrayrecord_key,
                                        self.accepts_sparse, type(self).__name__)
        self.accountant = CostAccountant(context.cost_model, context.method, context.batch_size,
                                         context.momentum, self.arrayrecord_key)

    # --- the one method a plug-in overrides -------------------------------------------------
    @abstractmethod
    def aggregate_updates(self, global_arrays: Mapping[str, np.ndarray],
                          updates: list[ClientUpdate]) -> dict[str, np.ndarray]:
        """Return the new global arrays from the current ones and the accepted updates.

        ``global_arrays`` maps every tensor name to its current value; each update's
        ``update.tensors[name]`` holds the values a client sent (``index`` None: the whole
        tensor, else the flat positions) and may lack tensors the client did not send. Updates
        arrive validated, within budget, ordered by partition id. An override that declares a
        ``server_round`` parameter is also given the round number (``self.server_round`` holds
        it too); one written without it keeps working.
        """

    def _round_argument(self, server_round: int) -> dict[str, int]:
        """``server_round=`` for an ``aggregate_updates`` that takes it."""
        parameters = inspect.signature(self.aggregate_updates).parameters
        return {"server_round": server_round} if "server_round" in parameters else {}

    def summary(self) -> None:
        """Flower's hook for logging the configuration; the run's config.yaml records it."""

    _INFRASTRUCTURE = frozenset({"context", "node_of", "routing", "report", "server_round", "messages",
                                 "validator", "accountant", "train_routes", "node_order"})

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint must keep of this strategy: by default every attribute that is not
        the base's per-round machinery (e.g. a server optimizer's moments, a plug-in's
        counters). Override with ``restore_state`` if some attribute cannot be pickled."""
        return {k: v for k, v in vars(self).items() if k not in self._INFRASTRUCTURE}

    def restore_state(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    # --- sampling and messages ----------------------------------------------------------------
    def bind_nodes(self, node_of_partition: dict[int, int], state_dir: str | None = None,
                   virtual: bool = False) -> None:
        """Tell the strategy which node serves each partition (learned from the handshake, or
        the routes of virtual clients: then each message names its client and, when given, the
        folder where clients keep their private state)."""
        self.node_of = dict(sorted(node_of_partition.items()))
        self.train_routes = self.node_of
        self.routing = {"virtual": virtual, "state_dir": state_dir}

    def sample_partitions(self, server_round: int) -> list[int]:
        """Seeded sample of the training clients (never the method's novel clients)."""
        novel = self.context.method.novel_clients()
        return sample_clients(self.context.seed, server_round,
                              [p for p in self.node_of if p not in novel],
                              self.context.clients_per_round, self.context.clock)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        partitions, self.train_routes = self.schedule(self.sample_partitions(server_round))
        planned = self.context.method.begin_round(server_round)
        if planned:
            config = ConfigRecord({**config, **planned})
        messages = self.messages.build(partitions, self.train_routes, arrays, config, server_round,
                                       MessageType.TRAIN, **self.routing)
        self.accountant.downloads(arrays, partitions, messages)
        return messages

    def schedule(self, partitions: list[int]) -> tuple[list[int], dict[int, int]]:
        """The round's clients largest first, and (virtual clients) the nodes that serve them.

        Flower's simulation hands queued messages to its workers in the order its nodes
        registered, and a worker takes the next as it frees up: largest first is the classic
        longest-processing-time rule, which shortens the round's slowest worker. Virtual clients
        can be served by any node, so once replies have told the nodes' order (``node_order``),
        the largest client goes to the first node; before that, and for clients with a node of
        their own, the order is the nodes' and nothing changes."""
        if not self.routing.get("virtual"):  # a node per client: Flower's order is the nodes'
            return partitions, self.node_of
        sizes = self.context.train_sizes
        order = sorted(partitions, key=lambda p: (-sizes[p], p))
        known = sorted(self.node_order, key=lambda node: (self.node_order[node], node))
        if len(known) < len(order):
            return order, self.node_of
        return order, {**self.node_of, **dict(zip(order, known, strict=False))}

    def train_reply_arrived(self, reply: Message) -> None:
        """A training reply arrived while the round runs: do now what needs no other reply."""
        self.accountant.arrived(reply)

    def note_node_order(self, replies: Iterable[Message]) -> None:
        """Learn where nodes registered from their replies (only a scheduling hint: a wrong
        index costs time, never a result)."""
        for reply in replies:
            if reply.has_error() or "metrics" not in reply.content.metric_records:
                continue
            index = reply.content["metrics"].get(NODE_INDEX_KEY)
            if isinstance(index, int) and index >= 0:
                self.node_order[reply.metadata.src_node_id] = index

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Clients evaluate the model they would deploy: every client at the final round, a
        seeded sample of ``context.eval_clients`` at the rounds between (a cheap curve)."""
        partitions = list(self.node_of)
        wanted = self.context.eval_clients
        if wanted is not None and server_round != self.context.final_round:
            partitions = evaluation_sample(self.context.seed, server_round, partitions, wanted)
        self.evaluation_partitions = partitions
        return self.messages.build(partitions, self.node_of, arrays, config, server_round,
                                   MessageType.EVALUATE, **self.routing)

    # --- replies --------------------------------------------------------------------------------
    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.server_round = server_round
        report = RoundReport()
        accepted: list[ClientUpdate] = []
        losses: list[tuple[float, int]] = []
        # arrival order varies between runs; partition order keeps every float sum reproducible
        for reply in sorted(replies, key=_arrival_independent_key):
            if reply.has_error():
                report.failed += 1
                continue
            try:
                client, cost = self._accept(reply)
            except UpdateRejected as exc:
                pid = safe_partition(reply)
                report.rejected.append((pid, str(exc)))
                log(WARNING, "round %d: update of client %s rejected: %s", server_round, pid, exc)
                continue
            problem = over_budget(client.budget, {
                "density": cost.density, "train_flops": cost.train_flops,
                "memory_bytes": cost.memory_bytes, "upload_bytes": cost.upload_bytes})
            if problem:
                report.violations.append((client.partition_id, problem))
                log(WARNING, "round %d: client %d over budget: %s", server_round,
                    client.partition_id, problem)
                continue
            accepted.append(client)
            report.costs.append(cost)
            report.layer_kept.append({n: t.nnz for n, t in client.update.tensors.items()
                                      if n in self.context.cost_model.param_sizes})
            losses.append((client.metrics.get("train-loss", math.nan), client.num_examples))
        self.accountant.forget_arrivals()
        if self.context.clock is not None:
            accepted, losses = self._keep_finishers(report, accepted, losses)
        self.report = report
        if not accepted:
            return None, None
        global_arrays = self.messages.global_arrays
        if self.context.max_update_norm is not None:
            accepted = self._clipped(global_arrays, accepted, self.context.max_update_norm)
        stepped = self.aggregate_updates(global_arrays, accepted, **self._round_argument(server_round))
        new_state = self.context.method.after_aggregate(dict(stepped),
                                                        [c.partition_id for c in accepted])
        if any(not np.array_equal(stepped[k], new_state[k]) for k in stepped if k in new_state):
            self.after_method(stepped, new_state)
        problem = unusable(new_state)
        if problem:  # a strategy's or a method's bug, or an attack that passed the checks
            report.refused = problem
            log(WARNING, "round %d: the aggregated model is refused (%s): the previous model is "
                "kept", server_round, problem)
            return None, None
        total = sum(n for _, n in losses)
        metrics = MetricRecord({"train-loss": sum(v * n for v, n in losses) / max(total, 1),
                                "num-examples": total})
        return ArrayRecord(array_dict=_as_arrays(new_state)), metrics

    def _clipped(self, global_arrays: Mapping[str, np.ndarray], accepted: list[ClientUpdate],
                 bound: float) -> list[ClientUpdate]:
        """Every update with its change scaled to at most ``bound`` (``strategy.max_update_norm``),
        before any strategy sees it; how many were clipped goes into the round's record."""
        out, clipped = [], 0
        for client in accepted:
            update, was = clip_update(global_arrays, client.update, bound)
            clipped += int(was)
            out.append(replace(client, update=update) if was else client)
        self.report.notes["updates_clipped"] = clipped
        return out

    def after_method(self, stepped: Mapping[str, np.ndarray],
                     adjusted: Mapping[str, np.ndarray]) -> None:
        """The method changed the aggregated model (e.g. a new mask): a stateful strategy
        reconciles its state with it. Default: nothing to do."""
        return None

    def _accept(self, reply: Message) -> tuple[ClientUpdate, ClientRoundCost]:
        """Generic checks, the coordinates it may update, the method's checks of its records,
        then the round's cost."""
        checked = self.validator.check(reply, self.train_routes)
        client = checked.client
        method = self.context.method
        method.check_upload(client.budget, self.messages.client_masks(client.partition_id),
                            client.update, client.num_examples)
        method.check_reply(client.partition_id, client.budget, checked.records, client.metrics)
        return client, self.accountant.cost(client, self.server_round, self.context.local_epochs)

    def _keep_finishers(self, report: RoundReport, accepted: list[ClientUpdate],
                        losses: list[tuple[float, int]]
                        ) -> tuple[list[ClientUpdate], list[tuple[float, int]]]:
        """Time every accepted client on its device; keep those the server waits for."""
        clock = self.context.clock
        assert clock is not None
        costs = [replace(c, sim_seconds=client_seconds(
            c.train_flops, c.download_bytes, c.upload_bytes, clock.profiles[c.partition_id]))
            for c in report.costs]
        timing = settle_round({c.partition_id: c.sim_seconds or 0.0 for c in costs},
                              self.context.clients_per_round, clock.deadline)
        kept = set(timing.kept)
        keep = [i for i, c in enumerate(costs) if c.partition_id in kept]
        report.timing = timing
        report.costs = [costs[i] for i in keep]
        report.layer_kept = [report.layer_kept[i] for i in keep]
        return [accepted[i] for i in keep], [losses[i] for i in keep]


def _arrival_independent_key(reply: Message) -> tuple[int, int, int]:
    return (reply.has_error(), safe_partition(reply), reply.metadata.src_node_id)


def _as_arrays(state: Mapping[str, np.ndarray]) -> dict[str, Array]:
    return {k: Array(np.array(v, order="C", copy=True)) for k, v in state.items()}
