"""The mask-aware base strategy: a Flower ``FedAvg`` subclass that owns everything but the math.

Sampling (seeded by round, over partitions), per-client message building (each client gets its
own submodel and budget), decoding and validation of replies, budget enforcement and cost
accounting all live here. A subclass overrides one method, ``aggregate_updates``, which gets the
current global arrays and the round's accepted updates and returns the new global arrays.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from logging import WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from flwr.supercore import log

from fedsparse.budgets import Budget
from fedsparse.clock import ClockSettings, RoundTiming, client_seconds, is_online, sample_size, settle_round
from fedsparse.costs import ByteCounter, CostModel, TrainingCost
from fedsparse.masks import Masks
from fedsparse.pruning_wire import ADJUST_MASK_RECORD, PAIRS_RECORD, decode_pairs
from fedsparse.shared_mask_server import Pairs, PairsRejected, SharedMaskServer
from fedsparse.wire import SparseUpdate, Template, UpdateRejected, decode, encode

PARTITION_KEY = "partition-id"
MaskFn = Callable[[Mapping[str, torch.Tensor], Budget], Masks | None]


def reply_partition(msg: Message) -> int:
    """The partition id a client reported in its reply (first MetricRecord)."""
    metrics = next(iter(msg.content.metric_records.values()))
    return int(metrics[PARTITION_KEY])


@dataclass(frozen=True)
class ClientUpdate:
    """One accepted, validated reply, as ``aggregate_updates`` receives it."""

    partition_id: int
    update: SparseUpdate
    num_examples: int
    budget: Budget
    metrics: dict[str, float]
    reply: Message


@dataclass(frozen=True)
class ClientRoundCost:
    """What one client spent in one round, beside the dense model doing the same work."""

    partition_id: int
    density: float
    train_flops: float
    memory_bytes: float
    activation_bytes: float
    upload_bytes: int
    download_bytes: int
    dense_train_flops: float
    dense_memory_bytes: float
    dense_upload_bytes: int
    dense_download_bytes: int
    #: simulated seconds on the client's device (None when the clock is off)
    sim_seconds: float | None = None


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
    mask_fn: MaskFn | None = None
    #: clients that never train the global model (they only evaluate, e.g. pFedGate's novel)
    novel: frozenset[int] = frozenset()
    #: the method measures FLOPs, memory and compute density on the client (they are reported)
    reported_costs: bool = False
    #: shared-mask methods (FedTiny, prune-at-init, FedDST): the server's masks and adjustments
    mask_server: SharedMaskServer | None = None
    #: the simulated device clock (None: off)
    clock: ClockSettings | None = None


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
        self.report = RoundReport()
        self._global: dict[str, np.ndarray] = {}
        self._download: dict[int, tuple[int, int]] = {}
        self._dense_array_bytes: int | None = None
        self._masks_by_budget: dict[Budget, Masks | None] = {}
        self.count_bytes = ByteCounter()

    # --- the one method a plug-in overrides -------------------------------------------------
    @abstractmethod
    def aggregate_updates(self, global_arrays: Mapping[str, np.ndarray],
                          updates: list[ClientUpdate]) -> dict[str, np.ndarray]:
        """Return the new global arrays from the current ones and the accepted updates.

        ``global_arrays`` maps every tensor name to its current value; each update's
        ``update.tensors[name]`` holds the values a client sent (``index`` None: the whole
        tensor, else the flat positions) and may lack tensors the client did not send. Updates
        arrive validated, within budget, ordered by partition id. ``self.server_round`` is set.
        """

    def summary(self) -> None:
        """Flower's hook for logging the configuration; the run's config.yaml records it."""

    _INFRASTRUCTURE = frozenset({"context", "node_of", "report", "server_round", "_global",
                                 "_download", "_dense_array_bytes", "count_bytes", "_masks_by_budget",
                                 "_pairs_of"})

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint must keep of this strategy: by default every attribute that is not
        the base's per-round machinery (e.g. a server optimizer's moments, a plug-in's
        counters). Override with ``restore_state`` if some attribute cannot be pickled."""
        state = {k: v for k, v in vars(self).items() if k not in self._INFRASTRUCTURE}
        if self.context.mask_server is not None:
            state[_MASK_SERVER_KEY] = self.context.mask_server.state()
        return state

    def restore_state(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if key == _MASK_SERVER_KEY and self.context.mask_server is not None:
                self.context.mask_server.restore(value)
            elif key != _MASK_SERVER_KEY:
                setattr(self, key, value)

    # --- sampling and messages ----------------------------------------------------------------
    def bind_nodes(self, node_of_partition: dict[int, int]) -> None:
        """Tell the strategy which node serves each partition (learned from the handshake)."""
        self.node_of = dict(sorted(node_of_partition.items()))

    def sample_partitions(self, server_round: int) -> list[int]:
        """Seeded sample of the training clients; with the clock, only online ones, and
        ``clock.over_select`` times as many as needed."""
        clock = self.context.clock
        candidates = [p for p in self.node_of if p not in self.context.novel]
        k = min(self.context.clients_per_round, len(candidates))
        if clock is not None:
            if clock.availability:
                candidates = [p for p in candidates if is_online(
                    self.context.seed, server_round, p, clock.profiles[p].availability)]
            k = sample_size(self.context.clients_per_round, clock.over_select, len(candidates))
        partitions = np.array(candidates, dtype=np.int64)
        rng = np.random.default_rng([self.context.seed, 11, server_round])
        return sorted(int(p) for p in rng.choice(partitions, size=k, replace=False))

    def client_masks(self, partition_id: int) -> Masks | None:
        """The submodel this client holds this round (None: the whole model).

        The method's choice depends only on the global model and the budget, so clients with
        equal budgets share one computation per round.
        """
        if self.context.mask_fn is None:
            return None
        budget = self.context.budgets[partition_id]
        if budget not in self._masks_by_budget:
            params = {n: torch.from_numpy(self._global[n]) for n in self.context.cost_model.param_sizes}
            self._masks_by_budget[budget] = self.context.mask_fn(params, budget)
        return self._masks_by_budget[budget]

    def _messages(self, partitions: list[int], arrays: ArrayRecord, config: ConfigRecord,
                  server_round: int, message_type: str) -> list[Message]:
        self._global = {k: v.numpy() for k, v in arrays.items()}
        self._masks_by_budget: dict[Budget, Masks | None] = {}
        config["server-round"] = server_round
        messages = []
        for pid in partitions:
            masks = self.client_masks(pid)
            if masks is None:
                payload = arrays
            else:
                state = {k: torch.from_numpy(v) for k, v in self._global.items()}
                payload = encode(state, masks)
            budget = self.context.budgets[pid]
            client_config = ConfigRecord({**config, "budget-density": budget.density,
                                          "novel": int(pid in self.context.novel)})
            record = RecordDict({self.arrayrecord_key: payload,
                                 self.configrecord_key: client_config})
            server = self.context.mask_server
            if server is not None and message_type == MessageType.TRAIN:
                bits = server.adjust_mask_bits(budget)
                if bits:
                    record[ADJUST_MASK_RECORD] = ArrayRecord(
                        array_dict={n: Array(b) for n, b in bits.items()})
            messages.append(Message(content=record, message_type=message_type,
                                    dst_node_id=self.node_of[pid]))
        return messages

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        partitions = self.sample_partitions(server_round)
        if self.context.mask_server is not None:
            self.context.mask_server.plan_round(server_round)
            config = ConfigRecord({**config, **self.context.mask_server.train_config()})
        messages = self._messages(partitions, arrays, config, server_round, MessageType.TRAIN)
        self.count_bytes.forget()
        sizes = self.count_bytes.many([arrays, *(part for msg in messages for part in (
            msg.content, msg.content[self.arrayrecord_key]))])
        self._dense_array_bytes = sizes[0]
        self._download = {pid: (sent, sent - arrays_sent + self._dense_array_bytes)
                          for pid, sent, arrays_sent in zip(partitions, sizes[1::2], sizes[2::2],
                                                            strict=True)}
        return messages

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Every client evaluates the model it would deploy; none is skipped."""
        return self._messages(list(self.node_of), arrays, config, server_round, MessageType.EVALUATE)

    # --- replies --------------------------------------------------------------------------------
    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.server_round = server_round
        report = RoundReport()
        self._pairs_of: dict[int, Pairs | None] = {}  # FedTiny pairs of this round, decoded once
        accepted: list[ClientUpdate] = []
        losses: list[tuple[float, int]] = []
        # arrival order varies between runs; partition order keeps every float sum reproducible
        for reply in sorted(replies, key=_arrival_independent_key):
            if reply.has_error():
                report.failed += 1
                continue
            try:
                client, cost = self._check_reply(reply)
            except UpdateRejected as exc:
                pid = _safe_partition(reply)
                report.rejected.append((pid, str(exc)))
                log(WARNING, "round %d: update of client %s rejected: %s", server_round, pid, exc)
                continue
            problem = self._over_budget(client.budget, cost)
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
        if self.context.clock is not None:
            accepted, losses = self._keep_finishers(report, accepted, losses)
        self.report = report
        if not accepted:
            return None, None
        new_state = self.aggregate_updates(self._global, accepted)
        if self.context.mask_server is not None:
            new_state = self.context.mask_server.after_aggregate(
                dict(new_state), [self._pairs_of.get(c.partition_id) or {} for c in accepted])
        total = sum(n for _, n in losses)
        metrics = MetricRecord({"train-loss": sum(v * n for v, n in losses) / max(total, 1),
                                "num-examples": total})
        return ArrayRecord(array_dict=_as_arrays(new_state)), metrics

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

    def _check_reply(self, reply: Message) -> tuple[ClientUpdate, ClientRoundCost]:
        content = reply.content
        if self.arrayrecord_key not in content.array_records or "metrics" not in content.metric_records:
            raise UpdateRejected("reply lacks its arrays or metrics record")
        metrics = {k: float(v) for k, v in content["metrics"].items()
                   if isinstance(v, (int, float))}
        pid = int(metrics.get(PARTITION_KEY, -1))
        if pid not in self.node_of or self.node_of[pid] != reply.metadata.src_node_id:
            raise UpdateRejected(f"reply names partition {pid}, which its node does not serve")
        num_examples = metrics.get("num-examples", -1)
        samples = metrics.get("samples-seen", -1)
        if not (num_examples > 0 and samples >= 0 and math.isfinite(num_examples + samples)):
            raise UpdateRejected(f"absurd sample counts (num-examples={num_examples}, "
                                 f"samples-seen={samples})")
        update = decode(content[self.arrayrecord_key], self.context.template)
        if not self.accepts_sparse and (
                any(t.index is not None for t in update.tensors.values())
                or set(update.tensors) != set(self.context.template)):
            raise UpdateRejected(f"{type(self).__name__} cannot aggregate sparse updates: "
                                 "use strategy masked-fedavg")
        client = ClientUpdate(pid, update, int(num_examples), self.context.budgets[pid], metrics,
                              reply)
        if self.context.mask_server is not None:
            try:
                pairs = _pairs(reply)
                self.context.mask_server.check_pairs(pairs)
            except (PairsRejected, ValueError) as exc:
                raise UpdateRejected(str(exc)) from None
            self._pairs_of[pid] = pairs
        return client, self._cost(client, reply, int(samples))

    def _cost(self, client: ClientUpdate, reply: Message, samples: int) -> ClientRoundCost:
        model = self.context.cost_model
        kept = {n: client.update.tensors[n].nnz if n in client.update.tensors else 0
                for n in model.param_sizes}
        sparse = model.training_cost(kept, samples, self.context.batch_size, self.context.momentum)
        dense = model.training_cost(model.dense_counts(), samples, self.context.batch_size,
                                    self.context.momentum)
        density = client.update.density(model.param_sizes)
        if self.context.reported_costs:
            sparse, density = self._reported(client.metrics, sparse, dense)
        if self.context.mask_server is not None:
            server = self.context.mask_server
            sparse = TrainingCost(sparse.flops + server.extra_flops(client.budget),
                                  sparse.memory_bytes + server.extra_memory(client.budget),
                                  sparse.activation_bytes)
        upload, arrays_up = self.count_bytes.many([reply.content, reply.content[self.arrayrecord_key]])
        down, dense_down = self._download.get(client.partition_id, (0, 0))
        dense_arrays = self._dense_array_bytes or arrays_up
        return ClientRoundCost(
            partition_id=client.partition_id, density=density,
            train_flops=sparse.flops, memory_bytes=sparse.memory_bytes,
            activation_bytes=sparse.activation_bytes, upload_bytes=upload,
            download_bytes=down, dense_train_flops=dense.flops,
            dense_memory_bytes=dense.memory_bytes,
            dense_upload_bytes=upload - arrays_up + dense_arrays, dense_download_bytes=dense_down)

    @staticmethod
    def _reported(metrics: Mapping[str, float], computed: TrainingCost,
                  dense: TrainingCost) -> tuple[TrainingCost, float]:
        """Client-measured costs, refused when absent or implausible."""
        try:
            flops, memory = metrics["train-flops"], metrics["memory-bytes"]
            density = metrics["compute-density"]
        except KeyError as exc:
            raise UpdateRejected(f"reply lacks the cost metric {exc}") from None
        if not (0 <= density <= 1 and flops >= 0 and memory > 0 and math.isfinite(flops + memory)):
            raise UpdateRejected(f"implausible reported costs (train-flops={flops}, "
                                 f"memory-bytes={memory}, compute-density={density})")
        return TrainingCost(flops=flops, memory_bytes=memory,
                            activation_bytes=computed.activation_bytes), density

    @staticmethod
    def _over_budget(budget: Budget, cost: ClientRoundCost) -> str | None:
        checks = [("density", cost.density, budget.density),
                  ("train_flops", cost.train_flops, budget.train_flops),
                  ("memory_bytes", cost.memory_bytes, budget.memory_bytes),
                  ("upload_bytes", cost.upload_bytes, budget.upload_bytes)]
        for name, spent, limit in checks:
            if limit is not None and spent > limit * (1 + 1e-9):
                return f"{name} {spent:.6g} exceeds its declared {limit:.6g}"
        return None


_MASK_SERVER_KEY = "__mask_server__"


def _pairs(reply: Message) -> Pairs | None:
    """FedTiny's top-K pairs in a reply (None when it sent none); ValueError when malformed."""
    if PAIRS_RECORD not in reply.content.array_records:
        return None
    return decode_pairs(reply.content[PAIRS_RECORD])


def _arrival_independent_key(reply: Message) -> tuple[int, int, int]:
    return (reply.has_error(), _safe_partition(reply), reply.metadata.src_node_id)


def _safe_partition(reply: Message) -> int:
    try:
        return reply_partition(reply)
    except Exception:
        return -1


def _as_arrays(state: Mapping[str, np.ndarray]) -> dict[str, Array]:
    return {k: Array(np.array(v, order="C", copy=True)) for k, v in state.items()}
