"""Reply validation: what every reply must satisfy before a method or a strategy sees it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from flwr.app import Message

from fedsparse.budgets import PARTITION_KEY, Budget
from fedsparse.codec import decode, unpack_records
from fedsparse.method import Records
from fedsparse.updates import SparseUpdate, Template, UpdateRejected

__all__ = ["PARTITION_KEY", "CheckedReply", "ClientUpdate", "ReplyValidator", "reply_partition",
           "safe_partition"]


def reply_partition(msg: Message) -> int:
    """The partition id a client reported in its reply (first MetricRecord)."""
    metrics = next(iter(msg.content.metric_records.values()))
    return int(metrics[PARTITION_KEY])


def safe_partition(reply: Message) -> int:
    """``reply_partition``, or -1 when the reply does not say."""
    try:
        return reply_partition(reply)
    except Exception:
        return -1


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
class CheckedReply:
    """A reply that passed the generic checks: its update, its samples and its extra records."""

    client: ClientUpdate
    samples_seen: int
    records: Records


class ReplyValidator:
    """Refuses replies that name a partition their node does not serve, an example count other
    than the partition's training set, more samples than the local epochs allow, a malformed
    update or impossible BatchNorm statistics (``UpdateRejected`` says why)."""

    def __init__(self, template: Template, budgets: list[Budget], train_sizes: list[int],
                 local_epochs: int, arrays_key: str, accepts_sparse: bool, strategy_name: str) -> None:
        self.template = template
        self.budgets = budgets
        self.train_sizes = train_sizes
        self.local_epochs = local_epochs
        self.arrays_key = arrays_key
        self.accepts_sparse = accepts_sparse
        self.strategy_name = strategy_name

    def check(self, reply: Message, node_of: dict[int, int]) -> CheckedReply:
        content = reply.content
        if self.arrays_key not in content.array_records or "metrics" not in content.metric_records:
            raise UpdateRejected("reply lacks its arrays or metrics record")
        metrics: dict[str, Any] = {k: float(v) for k, v in content["metrics"].items()
                                   if isinstance(v, (int, float))}
        pid = int(metrics.get(PARTITION_KEY, -1))
        if pid not in node_of or node_of[pid] != reply.metadata.src_node_id:
            raise UpdateRejected(f"reply names partition {pid}, which its node does not serve")
        num_examples = metrics.get("num-examples", -1)
        samples = metrics.get("samples-seen", -1)
        if not (num_examples > 0 and samples >= 0 and math.isfinite(num_examples + samples)):
            raise UpdateRejected(f"absurd sample counts (num-examples={num_examples}, "
                                 f"samples-seen={samples})")
        held = self.train_sizes[pid]
        if num_examples != held:  # it is the aggregation weight: a client must not choose it
            raise UpdateRejected(f"num-examples {num_examples:g} is not the {held} training samples "
                                 f"partition {pid} holds")
        if samples > self.local_epochs * held:
            raise UpdateRejected(f"samples-seen {samples:g} exceeds {self.local_epochs} epochs over "
                                 f"{held} samples")
        update = decode(content[self.arrays_key], self.template)
        for name, tensor in update.tensors.items():
            if name.endswith("running_var") and (tensor.values < 0).any():
                raise UpdateRejected(f"'{name}' holds negative variances")
        if not self.accepts_sparse and (
                any(t.index is not None for t in update.tensors.values())
                or set(update.tensors) != set(self.template)):
            raise UpdateRejected(f"{self.strategy_name} cannot aggregate sparse updates: "
                                 "use strategy masked-fedavg")
        client = ClientUpdate(pid, update, int(num_examples), self.budgets[pid], metrics, reply)
        return CheckedReply(client, int(samples), unpack_records(content, skip={self.arrays_key}))
