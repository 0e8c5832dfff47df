"""Mask-aware FedAvg: every coordinate averaged over the clients that sent it.

Weighted by sample counts (``weighting: count``: each holder counts once, HeteroFL's and
FedRolex's rule); coordinates nobody sent keep their previous value. This is the rule pFedGate's
paper describes for sparse uploads and what FedDST-style methods need when clients' masks differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np

from fedsparse.aggregation import masked_fedavg, zero_delta_fedavg
from fedsparse.strategies.base import ClientUpdate, MaskAwareStrategy, StrategyContext


class MaskedFedAvg(MaskAwareStrategy):
    """Per-coordinate average over holders, weighted by samples or by count."""

    def __init__(self, context: StrategyContext,
                 weighting: Literal["samples", "count"] = "samples") -> None:
        super().__init__(context)
        if weighting not in ("samples", "count"):
            raise ValueError(f"weighting '{weighting}' is not one of samples, count")
        self.weighting = weighting

    def aggregate_updates(self, global_arrays: Mapping[str, np.ndarray],
                          updates: list[ClientUpdate]) -> dict[str, np.ndarray]:
        weights = [1.0 if self.weighting == "count" else float(u.num_examples) for u in updates]
        return masked_fedavg(global_arrays, [u.update for u in updates], weights)


class ZeroDeltaAvg(MaskAwareStrategy):
    """pFedGate authors' rule: whole local models averaged, an unsent coordinate a zero change."""

    def __init__(self, context: StrategyContext, all_clients: bool = False) -> None:
        super().__init__(context)
        #: weight by every client's samples, the unsampled ones contributing no change (the
        #: authors' code with ``aggregate_sampled_clients`` off); default: the sampled clients
        self.all_clients = all_clients

    def aggregate_updates(self, global_arrays: Mapping[str, np.ndarray],
                          updates: list[ClientUpdate]) -> dict[str, np.ndarray]:
        total = float(sum(self.context.train_sizes)) if self.all_clients else None
        return zero_delta_fedavg(global_arrays, [u.update for u in updates],
                                 [u.num_examples for u in updates], total)
