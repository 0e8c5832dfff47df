"""Aggregation math over validated (possibly sparse) updates: plain numpy, no Flower.

Loops run over clients and tensors only; every coordinate operation is vectorised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedsparse.wire import SparseUpdate


def masked_fedavg(global_state: Mapping[str, np.ndarray], updates: Sequence[SparseUpdate],
                  weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Average each coordinate over the clients that sent it, weighted by ``weights``.

    Coordinates nobody sent keep their previous value. Integer buffers (e.g. BatchNorm's
    ``num_batches_tracked``) are not averaged: they keep the server's value.
    """
    if len(updates) != len(weights):
        raise ValueError("one weight per update is required")
    new_state: dict[str, np.ndarray] = {}
    for name, old in global_state.items():
        if not np.issubdtype(old.dtype, np.floating):
            new_state[name] = old.copy()
            continue
        num = np.zeros(old.size, dtype=np.float64)
        den = np.zeros(old.size, dtype=np.float64)
        for update, weight in zip(updates, weights, strict=True):
            tensor = update.tensors.get(name)
            if tensor is None or weight <= 0:
                continue
            if tensor.index is None:
                num += weight * tensor.values.astype(np.float64)
                den += weight
            else:
                num[tensor.index] += weight * tensor.values.astype(np.float64)
                den[tensor.index] += weight
        flat = old.reshape(-1).astype(np.float64, copy=True)
        sent = den > 0
        flat[sent] = num[sent] / den[sent]
        new_state[name] = flat.astype(old.dtype).reshape(old.shape)
    return new_state
