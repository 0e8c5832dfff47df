"""Mask-aware server optimizers and robust aggregators (plain numpy, no Flower).

Server optimizers follow Reddi et al., "Adaptive Federated Optimization" (ICLR 2021): the
pseudo-gradient is the per-coordinate average over holders minus the current model, and the
server applies momentum / Adam / Yogi to it. With sparse updates, a coordinate nobody sent
has no pseudo-gradient this round: its optimizer state is neither created nor decayed and the
weight does not move ("state only where coordinates were updated").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedsparse.aggregation import holder_average
from fedsparse.updates import SparseUpdate


@dataclass
class ServerOptimizer:
    """FedAvgM / FedAdam / FedYogi over sparse pseudo-gradients.

    ``kind``: "avgm" (x += lr * v, v = momentum * v + delta), "adam" or "yogi"
    (x += lr * m / (sqrt(v) + tau)); m and v start at 0.
    """

    kind: str
    lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    state: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("avgm", "adam", "yogi"):
            raise ValueError(f"unknown server optimizer '{self.kind}'")

    def step(self, global_state: Mapping[str, np.ndarray], updates: Sequence[SparseUpdate],
             weights: Sequence[float]) -> dict[str, np.ndarray]:
        new_state = {}
        for name, old in global_state.items():
            if not np.issubdtype(old.dtype, np.floating):
                new_state[name] = old.copy()
                continue
            mean, sent = holder_average(old, name, updates, weights)
            x = old.reshape(-1).astype(np.float64, copy=True)
            delta = mean[sent] - x[sent]
            slots = self.state.setdefault(name, {"m": np.zeros(old.size), "v": np.zeros(old.size)})
            m, v = slots["m"], slots["v"]
            if self.kind == "avgm":
                m[sent] = self.momentum * m[sent] + delta
                x[sent] += self.lr * m[sent]
            else:
                m[sent] = self.beta1 * m[sent] + (1 - self.beta1) * delta
                sq = delta * delta
                if self.kind == "adam":
                    v[sent] = self.beta2 * v[sent] + (1 - self.beta2) * sq
                else:
                    v[sent] = v[sent] - (1 - self.beta2) * sq * np.sign(v[sent] - sq)
                x[sent] += self.lr * m[sent] / (np.sqrt(v[sent]) + self.tau)
            new_state[name] = x.astype(old.dtype).reshape(old.shape)
        return new_state

    def forget_where_changed(self, stepped: Mapping[str, np.ndarray],
                             adjusted: Mapping[str, np.ndarray]) -> None:
        """Zero the state of coordinates a method set after the step (pruned to zero, regrown at
        zero, or otherwise overwritten): a regrown weight starts fresh instead of inheriting the
        momentum of the weight that was pruned there."""
        for name, slots in self.state.items():
            if name not in adjusted:
                continue
            after = np.asarray(adjusted[name]).reshape(-1)
            reset = (after == 0) | (after != np.asarray(stepped[name]).reshape(-1))
            for slot in slots.values():
                slot[reset] = 0.0


def _stacked(old: np.ndarray, name: str, updates: Sequence[SparseUpdate]) -> np.ndarray:
    """(clients, numel) float32 with NaN where a client did not send the coordinate."""
    stack = np.full((len(updates), old.size), np.nan, dtype=np.float32)
    for row, update in enumerate(updates):
        tensor = update.tensors.get(name)
        if tensor is None:
            continue
        if tensor.index is None:
            stack[row] = tensor.values
        else:
            stack[row, tensor.index] = tensor.values
    return stack


def robust_aggregate(global_state: Mapping[str, np.ndarray], updates: Sequence[SparseUpdate],
                     trim: float | None = None, min_holders: int = 3,
                     stats: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """Coordinate-wise median (``trim=None``) or trimmed mean over each coordinate's holders.

    The trimmed mean drops floor(trim * k) of the largest and of the smallest values among the k
    clients holding a coordinate (Yin et al. 2018); if that would drop everything, the median
    is used. Coordinates nobody sent keep their value. Unweighted, as robust statistics are.
    A coordinate held by fewer than ``min_holders`` clients also keeps its value: the median of
    two values is their mean, which one attacker moves at will. ``stats`` (when given) gets
    ``coordinates_held_back``, how many such coordinates were sent but not updated.
    """
    if trim is not None and not 0.0 <= trim < 0.5:
        raise ValueError("trim must be in [0, 0.5)")
    new_state = {}
    for name, old in global_state.items():
        if not np.issubdtype(old.dtype, np.floating) or not updates:
            new_state[name] = old.copy()
            continue
        stack = _stacked(old, name, updates)
        holders = np.sum(~np.isnan(stack), axis=0)
        flat = old.reshape(-1).astype(np.float64, copy=True)
        sent = holders >= max(min_holders, 1)
        if stats is not None:
            thin = int(np.count_nonzero((holders > 0) & ~sent))
            stats["coordinates_held_back"] = stats.get("coordinates_held_back", 0) + thin
        ordered = np.sort(stack[:, sent], axis=0)  # NaN sorts last
        k = holders[sent]
        position = np.arange(len(updates))[:, None]
        if trim is None:
            middle = np.take_along_axis(ordered, np.stack([(k - 1) // 2, k // 2]), axis=0)
            flat[sent] = middle.astype(np.float64).mean(axis=0)
        else:
            cut = np.floor(trim * k).astype(np.int64)
            cut = np.where(k - 2 * cut > 0, cut, (k - 1) // 2)
            keep = (position >= cut) & (position < k - cut)
            total = np.where(keep, ordered, 0.0).astype(np.float64).sum(axis=0)
            flat[sent] = total / keep.sum(axis=0)
        new_state[name] = flat.astype(old.dtype).reshape(old.shape)
    return new_state
