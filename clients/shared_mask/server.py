"""The server's side of shared-mask sparse training (FedTiny, prune-at-init, FedDST), free of Flower.

The server holds one mask over the prunable weights for the largest budget tier; smaller tiers
train nested subsets of it (``pruning.subset_masks``). Every round it plans whether and what to
adjust, checks what clients report for the adjustment, and applies the adjustment to the
aggregated weights:

- ``pairs`` (FedTiny): every Delta T rounds until T_end one scored unit (cycled from the output
  end by an adjustment counter) gets K_l = ceil(alpha_t * nnz_l) prune-and-grow steps from the
  clients' top-K gradient pairs at pruned positions;
- ``local`` (FedDST): clients prune-and-grow locally (their masks differ); the server averages each
  weight over its holders (the mask-aware FedAvg) and prunes every layer back to its count;
- ``fixed`` (prune-at-init): the mask never changes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from fedsparse.budgets import Budget
from fedsparse.clients.shared_mask.options import PruningOptions
from fedsparse.clients.shared_mask.pruning import (
    PAIR_BYTES,
    VALUE_BYTES,
    adjustment_count,
    adjustment_fraction,
    adjustment_memory,
    chunk_rows,
    layer_count,
    prunable_density,
    prune_and_grow,
    prune_back,
    scoring_units,
    subset_masks,
)
from fedsparse.costs import CostModel
from fedsparse.masks import Masks, pack_mask, unpack_mask

GRANULARITIES = ("model", "block", "layer", "chunk")
#: how the mask changes: never (prune-at-init), by the server from clients' top-K gradient pairs
#: over scored units (FedTiny), or by clients locally with the server pruning back (FedDST)
AdjustMode = Literal["fixed", "pairs", "local"]
Pairs = dict[str, tuple[np.ndarray, np.ndarray]]


class PairsRejected(ValueError):
    """A client's top-K report breaks the adjustment's rules."""


@dataclass(frozen=True)
class AdjustPlan:
    """What one round adjusts: layer -> K (empty when the round does not adjust)."""

    server_round: int
    k: dict[str, int]
    fraction: float


class SharedMaskServer:
    """Masks, adjustment plans and their application for one experiment."""

    def __init__(self, adjust: AdjustMode, cfg: PruningOptions, prunable: Sequence[str],
                 shapes: Mapping[str, tuple[int, ...]], budgets: Sequence[Budget],
                 cost_model: CostModel, momentum: bool, adjust_until: int) -> None:
        self.adjust = adjust
        self.cfg = cfg
        self.prunable = list(prunable)
        self.shapes = {n: tuple(s) for n, s in shapes.items()}
        self.sizes = {n: math.prod(s) for n, s in self.shapes.items()}
        self.adjust_until = adjust_until
        #: every adjustment: round, alpha_t and, per layer, K and the positions that changed
        self.history: list[dict[str, object]] = []
        self.tier_density = {b.density: prunable_density(self.sizes, self.prunable, b.density)
                             for b in budgets}
        self.top_density = max(self.tier_density.values())
        self.masks: Masks = {}
        self.adjustments = 0
        self.plan = AdjustPlan(0, {}, 0.0)
        #: how the first mask was chosen (ABNS losses, criterion), for ``summary.json``
        self.info: dict[str, object] = {}
        self.cost_model = cost_model
        self.batch_size = 1
        #: per tier, forward FLOPs of one sample of its sparse model (fixed for the run)
        self._forward_flops = {d: cost_model.forward_flops_per_sample(self.tier_kept(d))
                               for d in self.tier_density}
        self._positions = {layer.weight: layer.positions for layer in cost_model.layers if layer.weight}
        self._top_bits: dict[str, np.ndarray] = {}
        #: streamed scoring (granularity chunk): output rows, and coordinates, per chunk
        self.chunk_rows = {n: chunk_rows(self.shapes[n], self.top_density) for n in self.prunable}
        self.chunk_sizes = {n: self.chunk_rows[n] * (self.sizes[n] // self.shapes[n][0])
                            for n in self.prunable}
        self.granularity = self._choose_granularity(budgets, cost_model, momentum)
        self.units = scoring_units(self.prunable, self.granularity)
        #: rounds between adjustments; by default so that each unit gets ~8 (``PruningOptions.every``)
        self.adjust_every = cfg.every_until(adjust_until, len(self.units))

    # --- start-up checks ---------------------------------------------------------------------
    def tier_kept(self, density: float) -> dict[str, int]:
        """Kept weights per tensor of a tier's sparse model (the layers never pruned count whole)."""
        rho = self.tier_density[density]
        return {n: layer_count(s, rho) if n in self.prunable else s for n, s in self.sizes.items()}

    def training_memory(self, density: float, cost_model: CostModel, momentum: bool) -> float:
        """Weights + gradients (+ momentum) of a tier's sparse model, in bytes."""
        return cost_model.training_cost(self.tier_kept(density), 1, 1, momentum).memory_bytes

    def _choose_granularity(self, budgets: Sequence[Budget], cost_model: CostModel,
                            momentum: bool) -> str:
        """The coarsest scored unit every client's memory holds (FedTiny only): its declared
        ``memory_bytes``, or, when it declares none, twice its sparse training memory (memory
        first: scoring must not cost a tiny model more than the model itself)."""
        wanted = self.cfg.granularity
        if self.adjust != "pairs":
            return "model"
        # ABNS may give a layer up to 1.5x the target density: size K for that worst case
        nnz = {n: min(self.sizes[n], math.ceil(1.5 * self.top_density * self.sizes[n]))
               for n in self.prunable}
        options = GRANULARITIES if wanted == "auto" else (wanted,)
        training = {b.density: self.training_memory(b.density, cost_model, momentum) for b in budgets}

        def limit(b: Budget) -> float:
            if b.memory_bytes is not None:
                return b.memory_bytes
            return 2 * training[b.density] if wanted == "auto" else math.inf

        for granularity in options:
            extra = self.scoring_memory(granularity, nnz)
            short = [b for b in budgets if training[b.density] + extra > limit(b)]
            if not short:
                return granularity
        if wanted == "auto" and all(b.memory_bytes is None for b in short):
            return options[-1]  # no declared budget is broken: the finest unit, streamed
        worst = next(b for b in short if b.memory_bytes is not None)
        need = training[worst.density] + self.scoring_memory(options[-1], nnz)
        raise ValueError(
            f"a client declaring memory_bytes={worst.memory_bytes or 0:.6g} cannot train density "
            f"{worst.density:g} and score its largest {options[-1]} ({need:.6g} bytes needed): raise "
            "its memory budget, lower its density or choose a finer method.pruning.granularity")

    def scoring_memory(self, granularity: str, nnz: Mapping[str, int]) -> int:
        """Bytes the largest unit of ``granularity`` needs on top of sparse training."""
        chunk = self.chunk_sizes if granularity == "chunk" else None
        return max(adjustment_memory(u, self.sizes, nnz, self.cfg.initial_alpha, chunk)
                   for u in scoring_units(self.prunable, granularity))

    # --- masks --------------------------------------------------------------------------------
    def set_masks(self, masks: Masks) -> None:
        missing = set(self.prunable) - set(masks)
        if missing:
            raise ValueError(f"masks lack prunable layers {sorted(missing)[:3]}")
        self.masks = {n: masks[n].clone().bool() for n in self.prunable}

    def masks_for(self, params: Mapping[str, torch.Tensor], budget: Budget) -> Masks:
        """The nested mask of ``budget``'s tier over the current weights."""
        fraction = self.tier_density[budget.density] / self.top_density
        return subset_masks({n: params[n] for n in self.prunable}, self.masks, fraction)

    def apply(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Zero every prunable weight outside the top mask (a server optimizer's momentum must
        not bring pruned weights back)."""
        out = dict(arrays)
        for name, mask in self.masks.items():
            out[name] = np.where(mask.numpy(), arrays[name], 0).astype(arrays[name].dtype)
        return out

    # --- adjustment plan --------------------------------------------------------------------
    def is_adjust_round(self, server_round: int) -> bool:
        return (self.adjust != "fixed" and server_round % self.adjust_every == 0
                and server_round < self.adjust_until)

    def plan_round(self, server_round: int) -> AdjustPlan:
        """Decide (deterministically from round and counter) what this round adjusts."""
        k: dict[str, int] = {}
        fraction = 0.0
        if self.is_adjust_round(server_round):
            fraction = adjustment_fraction(server_round, self.adjust_until, self.cfg.initial_alpha)
            layers = (self.units[self.adjustments % len(self.units)] if self.adjust == "pairs"
                      else self.prunable)
            k = {n: adjustment_count(fraction, int(self.masks[n].sum())) for n in layers}
            k = {n: v for n, v in k.items() if v > 0}
        self.plan = AdjustPlan(server_round, k, fraction)
        self._top_bits = {n: pack_mask(self.masks[n]) for n in k} \
            if self.adjust == "pairs" else {}
        return self.plan

    def train_config(self) -> dict[str, list[str] | list[int]]:
        if not self.plan.k:
            return {}
        config: dict[str, list[str] | list[int]] = {
            "adjust-layers": list(self.plan.k), "adjust-k": list(self.plan.k.values())}
        if self.granularity == "chunk":
            config["adjust-rows"] = [self.chunk_rows[n] for n in self.plan.k]
        return config

    def adjust_mask_bits(self, budget: Budget) -> dict[str, np.ndarray]:
        """FedTiny clients below the top tier need the top mask of the scored layers to know
        which positions are pruned; the top tier's own mask is that mask."""
        if not self._top_bits or budget.density == max(self.tier_density):
            return {}
        return self._top_bits

    def extra_memory(self, budget: Budget) -> float:
        """Bytes beyond sparse training a client needs this round (0 unless it adjusts)."""
        if not self.plan.k:
            return 0.0
        held = self.chunk_sizes if self.granularity == "chunk" and self.adjust == "pairs" else self.sizes
        dense_grad = sum(held[n] for n in self.plan.k) * VALUE_BYTES
        if self.adjust == "local":
            return float(dense_grad)
        bits = sum(len(b) for b in self.adjust_mask_bits(budget).values())
        return float(dense_grad + sum(self.plan.k.values()) * PAIR_BYTES + bits)

    def extra_flops(self, budget: Budget) -> float:
        """FLOPs beyond masked training in an adjustment round: one extra mini-batch forward and
        backward of the tier's sparse model plus the dense weight gradient of the scored layers."""
        if not self.plan.k:
            return 0.0
        dense_grad = sum(2 * self.sizes[n] * self._positions.get(n, 1) for n in self.plan.k)
        return float(self.batch_size * (3 * self._forward_flops[budget.density] + dense_grad))

    # --- reports and the server step ---------------------------------------------------------
    def check_pairs(self, pairs: Pairs | None) -> None:
        """A FedTiny report must hold, per scored layer, at most K unique in-range indices at
        positions the top mask prunes, with finite values."""
        if self.adjust != "pairs" or not self.plan.k:
            return
        if pairs is None:
            raise PairsRejected("reply lacks its top-K gradient pairs")
        extra = set(pairs) - set(self.plan.k)
        if extra:
            raise PairsRejected(f"pairs for layers not being adjusted: {sorted(extra)[:3]}")
        for name, k in self.plan.k.items():
            index, values = pairs.get(name, (np.zeros(0, np.int64), np.zeros(0, np.float32)))
            if index.ndim != 1 or index.shape != values.shape:
                raise PairsRejected(f"{name}: index and value arrays differ in shape")
            if len(index) > k:
                raise PairsRejected(f"{name}: {len(index)} pairs, more than K={k}")
            if len(index) and (index.min() < 0 or index.max() >= self.sizes[name]):
                raise PairsRejected(f"{name}: index out of range")
            if len(np.unique(index)) != len(index):
                raise PairsRejected(f"{name}: repeated indices")
            if not np.all(np.isfinite(values)):
                raise PairsRejected(f"{name}: non-finite gradient values")
            if self.masks[name].flatten()[torch.from_numpy(index.astype(np.int64))].any():
                raise PairsRejected(f"{name}: pairs at positions that are not pruned")

    def after_aggregate(self, arrays: dict[str, np.ndarray], reports: Sequence[Pairs],
                        weights: Sequence[float] | None = None) -> dict[str, np.ndarray]:
        """Apply the round's adjustment to the aggregated weights; return the masked weights.
        ``weights``: each report's share of the gradient average (None: equal)."""
        out = dict(arrays)
        before = {n: m.clone() for n, m in self.masks.items()} if self.plan.k else {}
        if self.plan.k and self.adjust == "pairs":
            empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
            for name, k in self.plan.k.items():
                rows = [r.get(name, empty) for r in reports]
                weight, mask = prune_and_grow(torch.from_numpy(out[name]), self.masks[name], rows, k,
                                              weights)
                out[name] = weight.numpy().astype(arrays[name].dtype)
                self.masks[name] = mask
            self.adjustments += 1
        elif self.plan.k and self.adjust == "local":
            counts = {n: int(m.sum()) for n, m in self.masks.items()}
            self.masks = prune_back({n: torch.from_numpy(out[n]) for n in counts}, counts)
            self.adjustments += 1
        if before:
            self.history.append({
                "round": self.plan.server_round, "alpha": round(self.plan.fraction, 6),
                "k": dict(self.plan.k),
                # weights regrown (each replacing one pruned), per layer that changed
                "regrown": {n: int((self.masks[n] & ~m).sum()) for n, m in before.items()
                            if bool((self.masks[n] & ~m).any())}})
        return self.apply(out)

    # --- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict[str, object]:
        return {"masks": {n: pack_mask(m) for n, m in self.masks.items()},
                "adjustments": self.adjustments, "info": self.info, "history": self.history}

    def restore(self, state: Mapping[str, object]) -> None:
        bits = state["masks"]
        assert isinstance(bits, dict)
        self.masks = {n: unpack_mask(b, self.shapes[n]) for n, b in bits.items()}
        self.adjustments = int(state["adjustments"])  # type: ignore[arg-type]
        self.info = dict(state.get("info", {}))  # type: ignore[call-overload]
        self.history = list(state.get("history", []))  # type: ignore[call-overload]
