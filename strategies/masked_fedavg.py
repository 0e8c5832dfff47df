"""Mask-aware FedAvg: every coordinate averaged over the clients that sent it.

Weighted by sample counts; coordinates nobody sent keep their previous value. This is the rule
pFedGate's paper describes for sparse uploads and what FedDST-style methods need when clients'
masks differ.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedsparse.aggregation import masked_fedavg
from fedsparse.strategies.base import ClientUpdate, MaskAwareStrategy


class MaskedFedAvg(MaskAwareStrategy):
    """Per-coordinate, sample-weighted average over holders."""

    def aggregate_updates(self, global_arrays: Mapping[str, np.ndarray],
                          updates: list[ClientUpdate]) -> dict[str, np.ndarray]:
        return masked_fedavg(global_arrays, [u.update for u in updates],
                             [u.num_examples for u in updates])


class DenseZeroFillAvg(MaskAwareStrategy):
    """pFedGate authors' rule: average full models, counting unsent coordinates as zeros."""

    def aggregate_updates(self, global_arrays: Mapping[str, np.ndarray],
                          updates: list[ClientUpdate]) -> dict[str, np.ndarray]:
        total = float(sum(u.num_examples for u in updates))
        new_state = {}
        for name, old in global_arrays.items():
            if not np.issubdtype(old.dtype, np.floating):
                new_state[name] = old.copy()
                continue
            acc = np.zeros(old.size, dtype=np.float64)
            for u in updates:
                tensor = u.update.tensors.get(name)
                if tensor is None:
                    continue
                weighted = u.num_examples / total * tensor.values.astype(np.float64)
                if tensor.index is None:
                    acc += weighted
                else:
                    acc[tensor.index] += weighted
            new_state[name] = acc.astype(old.dtype).reshape(old.shape)
        return new_state
