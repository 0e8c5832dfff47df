"""A method's query rounds over Flower: ``Method.start``'s ``ask``, answered by ``Method.answer``.

Each query goes to the clients the strategy samples for round 0, as messages of type
``query.method`` carrying the model, the method's payload records and its config (with the
action); replies are validated (the node serves the partition it names, records readable) and
returned by partition id.
"""

from __future__ import annotations

from collections.abc import Mapping
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from fedsparse.codec import pack_records, to_record, unpack_records
from fedsparse.method import Ask, QueryReply, Records
from fedsparse.simulation.client_app import METHOD_QUERY
from fedsparse.simulation.grid_io import send_and_receive
from fedsparse.strategies.base import MaskAwareStrategy
from fedsparse.strategies.messages import virtual_client_config
from fedsparse.strategies.validation import reply_partition, safe_partition
from fedsparse.updates import UpdateRejected


def make_ask(grid: Grid, strategy: MaskAwareStrategy, timeout: float,
             window: int | None = None) -> Ask:
    """The ``ask`` a method's ``start`` uses on this grid."""

    def ask(action: str, model: Mapping[str, np.ndarray], records: Records,
            config: dict[str, Any]) -> list[QueryReply]:
        partitions = strategy.sample_partitions(0)
        shared = {"arrays": to_record(model), **pack_records(records)}
        messages = [Message(RecordDict({**shared, "config": ConfigRecord({
                                **config, "action": action,
                                **virtual_client_config(p, **strategy.routing)})}),
                            message_type=f"query.{METHOD_QUERY}", dst_node_id=strategy.node_of[p])
                    for p in partitions]
        answers = []
        for reply in sorted((r for r in send_and_receive(grid, messages, timeout,
                                                                   window=window)
                             if not r.has_error()), key=safe_partition):
            try:
                answers.append(_answer(reply, strategy.node_of))
            except (UpdateRejected, ValueError, KeyError, StopIteration) as exc:
                log(WARNING, "query %s: reply of node %d rejected: %s", action,
                    reply.metadata.src_node_id, exc)
        return answers

    return ask


def _answer(reply: Message, node_of: Mapping[int, int]) -> QueryReply:
    pid = reply_partition(reply)
    if node_of.get(pid) != reply.metadata.src_node_id:
        raise ValueError(f"it names partition {pid}, which its node does not serve")
    metrics = {k: float(v) for k, v in reply.content["metrics"].items() if isinstance(v, (int, float))}
    return QueryReply(pid, unpack_records(reply.content, skip=()), metrics)
