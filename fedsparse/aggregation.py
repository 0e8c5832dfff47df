"""Aggregation math over validated (possibly sparse) updates: plain numpy, no Flower.

Loops run over clients and tensors only; every coordinate operation is vectorised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedsparse.updates import SparseUpdate


def holder_average(old: np.ndarray, name: str, updates: Sequence[SparseUpdate],
                   weights: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate weighted mean over the clients that sent tensor ``name``.

    Returns the flat float64 result (``old`` where nobody sent) and the boolean 'sent' mask.
    """
    if len(updates) != len(weights):
        raise ValueError("one weight per update is required")
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
    sent = den > 0
    mean = old.reshape(-1).astype(np.float64, copy=True)
    mean[sent] = num[sent] / den[sent]
    return mean, sent


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
        mean, _ = holder_average(old, name, updates, weights)
        new_state[name] = mean.astype(old.dtype).reshape(old.shape)
    return new_state


def unusable(state: Mapping[str, np.ndarray]) -> str | None:
    """Why a new global model must not be used (a NaN or Inf value, a negative BatchNorm
    variance), or None when it is fine."""
    for name, array in state.items():
        if np.issubdtype(array.dtype, np.floating):
            if not np.isfinite(array).all():
                return f"'{name}' holds NaN or Inf values"
            if name.endswith("running_var") and (array < 0).any():
                return f"'{name}' holds negative variances"
    return None
