"""Flower's FedAvg with seeded, partition-aware client sampling.

Flower samples with the global ``random`` module over node ids that change every run; fedsparse
samples partition ids from a generator seeded by (seed, round), so one seed fixes who trains when.
Replies are aggregated in partition order so the float sums are reproducible bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

PARTITION_KEY = "partition-id"


def _aggregate_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Flower's weighted average, minus the partition id that every reply carries."""
    metrics = aggregate_metricrecords(records, weight_key)
    metrics.pop(PARTITION_KEY, None)
    return metrics


def reply_partition(msg: Message) -> int:
    """The partition id a client reported in its reply (first MetricRecord)."""
    metrics = next(iter(msg.content.metric_records.values()))
    return int(metrics[PARTITION_KEY])


class SeededFedAvg(FlowerFedAvg):
    """FedAvg (McMahan et al. 2017) sampling ``clients_per_round`` partitions per round."""

    def __init__(self, *, seed: int, clients_per_round: int) -> None:
        super().__init__(
            fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=1, min_evaluate_nodes=1,
            min_available_nodes=1, train_metrics_aggr_fn=_aggregate_metrics,
            evaluate_metrics_aggr_fn=_aggregate_metrics)
        self.seed = seed
        self.clients_per_round = clients_per_round
        self.node_of: dict[int, int] = {}

    def bind_nodes(self, node_of_partition: dict[int, int]) -> None:
        """Tell the strategy which node serves each partition (learned from the handshake)."""
        self.node_of = dict(sorted(node_of_partition.items()))

    def sample_partitions(self, server_round: int) -> list[int]:
        partitions = np.fromiter(self.node_of, dtype=np.int64)
        k = min(self.clients_per_round, len(partitions))
        rng = np.random.default_rng([self.seed, 11, server_round])
        return sorted(int(p) for p in rng.choice(partitions, size=k, replace=False))

    def _messages(self, partitions: list[int], arrays: ArrayRecord, config: ConfigRecord,
                  server_round: int, message_type: str) -> list[Message]:
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return [Message(content=record, message_type=message_type, dst_node_id=self.node_of[p])
                for p in partitions]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self._messages(self.sample_partitions(server_round), arrays, config, server_round,
                              MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Every client evaluates: fedsparse reports per-client accuracy, so none is skipped."""
        return self._messages(list(self.node_of), arrays, config, server_round, MessageType.EVALUATE)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        ordered = sorted(replies, key=lambda m: (m.has_error(), 0 if m.has_error()
                                                 else reply_partition(m)))
        return super().aggregate_train(server_round, ordered)
