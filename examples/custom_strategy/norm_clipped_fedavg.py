"""An example fedsparse plug-in: mask-aware FedAvg with per-client update clipping.

Each client's update (its values minus the current global values, on the coordinates it sent)
is scaled down to an L2 norm of at most ``max_norm`` before the per-coordinate average over
holders. Clipping bounds what one client can do to the model (the usual first step of DP-FedAvg
and a cheap defence against faulty clients) and works unchanged when masks differ.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedsparse.aggregation import masked_fedavg
from fedsparse.strategies import ClientUpdate, MaskAwareStrategy, StrategyContext
from fedsparse.updates import SparseUpdate, TensorUpdate


class NormClippedFedAvg(MaskAwareStrategy):
    """Masked FedAvg of client updates clipped to an L2 norm of at most max_norm."""

    def __init__(self, context: StrategyContext, max_norm: float = 1.0) -> None:
        super().__init__(context)
        if max_norm <= 0:
            raise ValueError("max_norm must be positive")
        self.max_norm = max_norm
        self.clipped_last_round = 0
        #: round -> how many updates were clipped in it
        self.clipped_by_round: dict[int, int] = {}

    def aggregate_updates(self, global_arrays: Mapping[str, np.ndarray],
                          updates: list[ClientUpdate], server_round: int = 0) -> dict[str, np.ndarray]:
        self.clipped_last_round = 0
        clipped = [self._clip(global_arrays, u.update) for u in updates]
        self.clipped_by_round[server_round] = self.clipped_last_round
        return masked_fedavg(global_arrays, clipped, [u.num_examples for u in updates])

    def _clip(self, global_arrays: Mapping[str, np.ndarray], update: SparseUpdate) -> SparseUpdate:
        deltas = {}
        for name, tensor in update.tensors.items():
            old = global_arrays[name].reshape(-1)
            if not np.issubdtype(old.dtype, np.floating):
                continue
            base = old if tensor.index is None else old[tensor.index]
            deltas[name] = tensor.values.astype(np.float64) - base
        norm = float(np.sqrt(sum(float(d @ d) for d in deltas.values())))
        scale = min(1.0, self.max_norm / norm) if norm > 0 else 1.0
        self.clipped_last_round += scale < 1.0
        tensors = {}
        for name, tensor in update.tensors.items():
            if name not in deltas:
                tensors[name] = tensor
                continue
            old = global_arrays[name].reshape(-1)
            base = old if tensor.index is None else old[tensor.index]
            values = (base + scale * deltas[name]).astype(tensor.values.dtype)
            tensors[name] = TensorUpdate(values=values, index=tensor.index, numel=tensor.numel)
        return SparseUpdate(tensors)
