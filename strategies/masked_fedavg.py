"""Mask-aware FedAvg: every coordinate averaged over the clients that sent it.

Weighted by sample counts; coordinates nobody sent keep their previous value. This is the rule
pFedGate's paper describes for sparse uploads and what FedDST-style methods need when clients'
masks differ.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedsparse.aggregation import masked_fedavg, zero_delta_fedavg
from fedsparse.strategies.base import ClientUpdate, MaskAwareStrategy, StrategyContext


class MaskedFedAvg(MaskAwareStrategy):
    """Per-coordinate, sample-weighted average over holders."""

    def aggregate_updates(self, global_arrays: Mapping[str, np.ndarray],
                          updates: list[ClientUpdate]) -> dict[str, np.ndarray]:
        return masked_fedavg(global_arrays, [u.update for u in updates],
                             [u.num_examples for u in updates])


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
