"""Mask-aware FedAvg: every coordinate averaged over the clients that sent it.

Weighted by sample counts; coordinates nobody sent keep their previous value. This is the rule
pFedGate's paper describes for sparse uploads and what FedDST-style methods need when clients'
masks differ.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from fedsparse.strategies.base import ClientUpdate, MaskAwareStrategy

from fedsparse.aggregation import masked_fedavg


class MaskedFedAvg(MaskAwareStrategy):
    """Per-coordinate, sample-weighted average over holders."""

    def aggregate_updates(self, global_arrays: Mapping[str, np.ndarray],
                          updates: list[ClientUpdate]) -> dict[str, np.ndarray]:
        return masked_fedavg(global_arrays, [u.update for u in updates],
                             [u.num_examples for u in updates])
