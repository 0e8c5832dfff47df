"""Aggregation math over validated (possibly sparse) updates: numpy and torch, no Flower.

Loops run over clients and tensors only; every coordinate operation is vectorised. Sparse
coordinates are added with torch's ``index_add_`` (one pass over the kept coordinates, where
numpy's ``a[i] += v`` gathers, adds and scatters), and the tensors of a model are averaged on
a thread per core: ``index_add_`` itself runs on one thread and releases the GIL.

Sums are kept in the tensor's own precision (float32 for float32 tensors, as Flower's FedAvg
averages them), with the weights normalised to sum to 1 so no sum grows large: float64
``index_add_`` is several times slower (``benchmarks/aggregate_sparse.py``), and the float32
mean of <= thousands of terms is within a few ulps of the float64 one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedsparse.parallel import thread_map
from fedsparse.updates import SparseUpdate, TensorUpdate


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A torch view of ``array`` (a copy only when it is read-only, as received bytes are)."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def holder_sums(old: np.ndarray, name: str, updates: Sequence[SparseUpdate],
                weights: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat sums over the clients that sent tensor ``name``, in ``old``'s float precision (at
    least float32): of weight x value, and of the weights (zero where nobody sent). Weights are
    normalised to sum to 1."""
    if len(updates) != len(weights):
        raise ValueError("one weight per update is required")
    dtype = torch.float64 if old.dtype == np.float64 else torch.float32
    num = torch.zeros(old.size, dtype=dtype)
    den = torch.zeros(old.size, dtype=dtype)
    one = torch.ones(1, dtype=dtype)
    total = float(sum(w for w in weights if w > 0)) or 1.0
    for update, weight in zip(updates, weights, strict=True):
        tensor = update.tensors.get(name)
        if tensor is None or weight <= 0:
            continue
        share = weight / total
        values = _tensor(tensor.values).to(dtype)
        if tensor.index is None:
            num.add_(values, alpha=share)
            den.add_(share)
        else:
            index = _tensor(tensor.index)
            num.index_add_(0, index, values, alpha=share)
            den.index_add_(0, index, one.expand(index.numel()), alpha=share)
    return num, den


def _holder_mean(old: np.ndarray, name: str, updates: Sequence[SparseUpdate],
                 weights: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat weighted mean over the holders, in the sums' precision (``old`` where nobody
    sent), and the boolean 'sent' mask."""
    num, den = holder_sums(old, name, updates, weights)
    sent = den > 0
    previous = torch.from_numpy(old.reshape(-1).astype(num.numpy().dtype))
    return torch.where(sent, num / den, previous), sent


def holder_average(old: np.ndarray, name: str, updates: Sequence[SparseUpdate],
                   weights: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate weighted mean over the clients that sent tensor ``name``.

    Returns the flat float64 result (``old`` where nobody sent) and the boolean 'sent' mask.
    """
    mean, sent = _holder_mean(old, name, updates, weights)
    return mean.to(torch.float64).numpy(), sent.numpy()


def masked_fedavg(global_state: Mapping[str, np.ndarray], updates: Sequence[SparseUpdate],
                  weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Average each coordinate over the clients that sent it, weighted by ``weights``.

    Coordinates nobody sent keep their previous value. Integer buffers (e.g. BatchNorm's
    ``num_batches_tracked``) are not averaged: they keep the server's value.
    """
    if len(updates) != len(weights):
        raise ValueError("one weight per update is required")

    def average(name: str) -> np.ndarray:
        old = global_state[name]
        if not np.issubdtype(old.dtype, np.floating):
            return old.copy()
        mean, _ = _holder_mean(old, name, updates, weights)
        return mean.numpy().astype(old.dtype, copy=False).reshape(old.shape)

    largest_first = sorted(global_state, key=lambda n: -global_state[n].size)
    averaged = dict(zip(largest_first, thread_map(average, largest_first), strict=True))
    return {name: averaged[name] for name in global_state}


def zero_delta_fedavg(global_state: Mapping[str, np.ndarray], updates: Sequence[SparseUpdate],
                      weights: Sequence[float], total_weight: float | None = None
                      ) -> dict[str, np.ndarray]:
    """FedAvg of whole local models, where a client's unsent coordinate is the value it was
    sent (a zero change): new = global + sum_k w_k (x_k - global) over each client's sent
    coordinates, with w_k = weights[k] / ``total_weight`` (default: the weights' sum).

    This is what pFedGate's authors' code does (it averages the clients' local models, whose
    unselected blocks still hold the broadcast value); unlike ``masked_fedavg`` a coordinate
    few clients trained moves only by their share of the round. ``total_weight`` larger than
    the sampled clients' (e.g. every client's samples) adds the unsampled clients as zero
    changes: a damped step. Integer buffers keep the server's value."""
    if len(updates) != len(weights):
        raise ValueError("one weight per update is required")
    total = float(sum(weights)) if total_weight is None else float(total_weight)
    if total <= 0:
        raise ValueError("the weights must sum to more than 0")
    new_state = {}
    for name, old in global_state.items():
        if not np.issubdtype(old.dtype, np.floating):
            new_state[name] = old.copy()
            continue
        flat = old.reshape(-1).astype(np.float64)
        step = np.zeros_like(flat)
        for update, weight in zip(updates, weights, strict=True):
            tensor = update.tensors.get(name)
            if tensor is None:
                continue
            where = slice(None) if tensor.index is None else tensor.index
            step[where] += weight / total * (tensor.values.astype(np.float64) - flat[where])
        new_state[name] = (flat + step).astype(old.dtype).reshape(old.shape)
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


def clip_update(global_state: Mapping[str, np.ndarray], update: SparseUpdate,
                max_norm: float) -> tuple[SparseUpdate, bool]:
    """Scale the update's change (its values minus the global ones at the same positions, over
    every floating tensor it sent) down to L2 norm ``max_norm``; whether it was clipped.

    Norm clipping is what robust and private aggregation expect of the server: one client
    cannot move the model further than the bound, however large the values it sends."""
    moves: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name -> (sent-at values, change)
    for name, tensor in update.tensors.items():
        old = global_state.get(name)
        if old is None or not np.issubdtype(old.dtype, np.floating):
            continue
        flat = old.reshape(-1)
        base = (flat if tensor.index is None else flat[tensor.index]).astype(np.float64)
        moves[name] = (base, tensor.values.astype(np.float64) - base)
    with np.errstate(over="ignore", invalid="ignore"):
        norm = float(np.sqrt(sum(float(np.square(d).sum()) for _, d in moves.values())))
    if np.isfinite(norm) and norm <= max_norm:
        return update, False
    scale = 0.0 if not np.isfinite(norm) else max_norm / norm  # overflowed: no usable direction
    tensors = dict(update.tensors)
    for name, (base, delta) in moves.items():
        tensor = update.tensors[name]
        tensors[name] = TensorUpdate(values=(base + delta * scale).astype(tensor.values.dtype),
                                     index=tensor.index, numel=tensor.numel)
    return SparseUpdate(tensors), True
