"""Run Flower's own strategies (FedProx, FedAdam, FedMedian, Krum...) on dense fedsparse runs.

fedsparse keeps sampling, validation and cost accounting; the wrapped Flower strategy sees the
same ``configure_train`` / ``aggregate_train`` calls it would under ``Strategy.start`` and does
the aggregation. Its train config (e.g. FedProx's ``proximal-mu``) reaches the clients.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsparse.strategies.base import ClientUpdate, MaskAwareStrategy, StrategyContext


class _NodesOnly:
    """The part of a Grid that Flower strategies use while configuring a round."""

    def __init__(self, node_ids: list[int]) -> None:
        self._node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)


class FlowerStrategy(MaskAwareStrategy):
    """Adapter around an instance of a Flower ``Strategy`` subclass (dense updates only)."""

    accepts_sparse = False

    def __init__(self, context: StrategyContext, inner: Strategy) -> None:
        super().__init__(context)
        self.inner = inner

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        inner_messages = list(self.inner.configure_train(
            server_round, arrays, ConfigRecord(dict(config)), _NodesOnly(list(self.node_of.values()))))
        if inner_messages:
            inner_config = next(iter(inner_messages[0].content.config_records.values()))
            config = ConfigRecord({**inner_config, **config})
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_updates(self, global_arrays: Mapping[str, np.ndarray],
                          updates: list[ClientUpdate]) -> dict[str, np.ndarray]:
        arrays, _ = self.inner.aggregate_train(self.server_round, [u.reply for u in updates])
        if arrays is None:
            return dict(global_arrays)
        # Flower averages integer buffers in float: cast back so the template still holds
        return {name: arrays[name].numpy().astype(old.dtype) for name, old in global_arrays.items()}
