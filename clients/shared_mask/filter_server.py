"""The server's side of filter-level shared masks (``granularity: filter``), free of Flower.

The same duties and interface as ``SharedMaskServer`` (the method base calls either), over
channels instead of weights: the top tier's kept channels per space (``keep``), nested tiers by
importance, one space adjusted per FedTiny adjustment round (cycled from the output end) by
``filters.prune_and_grow_channels`` from clients' (channel, score) reports, and the cost of each
tier counted on the sliced network it trains. ``fixed`` (prune-at-init) keeps the first mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from fedsparse.budgets import Budget
from fedsparse.clients.shared_mask.filters import (
    channel_params,
    counts_density,
    fit_counts,
    keep_by_importance,
    prune_and_grow_channels,
    uniform_counts,
)
from fedsparse.clients.shared_mask.options import PruningOptions
from fedsparse.clients.shared_mask.pruning import PAIR_BYTES, adjustment_count, adjustment_fraction
from fedsparse.clients.shared_mask.server import AdjustMode, AdjustPlan, Pairs, PairsRejected
from fedsparse.costs import BYTES_PER_VALUE, CostModel, TrainingCost
from fedsparse.masks import Masks
from fedsparse.structured import ChannelGraph, Keep


class FilterMaskServer:
    """Channel masks, adjustment plans and their application for one experiment."""

    granularity = "filter"

    def __init__(self, adjust: AdjustMode, cfg: PruningOptions, model: nn.Module,
                 input_shape: tuple[int, ...], budgets: Sequence[Budget], momentum: bool,
                 adjust_until: int, adjust_every: int, seed: int) -> None:
        if adjust == "local":
            raise ValueError("method.pruning.granularity filter is for fedtiny and prune-at-init; "
                             "feddst prunes single weights: choose another granularity")
        self.adjust = adjust
        self.cfg = cfg
        self.seed = seed
        self.graph = ChannelGraph.trace(model, input_shape)
        self.params = [n for n, _ in model.named_parameters()]
        #: what a channel mask covers (``SharedMask.start`` reports their density)
        self.prunable = channel_params(self.graph, self.params)
        self.shapes = {n: tuple(t.shape) for n, t in model.state_dict().items()}
        self.adjust_until = adjust_until
        self.adjust_every = adjust_every
        self.momentum = momentum
        self.history: list[dict[str, object]] = []
        self.info: dict[str, object] = {}
        self.adjustments = 0
        self.plan = AdjustPlan(0, {}, 0.0)
        self.batch_size = 1
        self.densities = sorted({b.density for b in budgets})
        self.top_density = max(self.densities)
        #: the top tier's kept channels per space (set by ``set_masks``)
        self.keep: Keep = self.graph.full()
        self._model = model
        self._tier_counts: dict[float, dict[str, int]] = {}
        self._costs: dict[tuple[tuple[str, int], ...], CostModel] = {}
        #: spaces adjusted in turn, from the output end backwards
        self.units = list(reversed(list(self.graph.spaces)))
        try:
            self.uniform = uniform_counts(self.graph, self.params, min(self.top_density, 1.0))
            for density in self.densities:  # every tier must fit one channel per space
                fit_counts(self.graph, self.uniform, self.params, density)
        except ValueError as exc:
            raise ValueError(f"{exc}: declare a larger density or choose another "
                             "method.pruning.granularity") from None

    # --- masks ----------------------------------------------------------------------------------
    def set_masks(self, masks: Masks) -> None:
        """Take the top tier's mask (channel-structured; ``ValueError`` otherwise)."""
        self.keep = self.graph.keep_of({n: masks[n] for n in self.prunable if n in masks})
        top = {s: len(k) for s, k in self.keep.items()}
        self._tier_counts = {d: (top if d == self.top_density else
                                 fit_counts(self.graph, top, self.params, d)) for d in self.densities}
        self.info["channels"] = {s: len(k) for s, k in self.keep.items()}
        self.info["channel_density"] = round(counts_density(self.graph, top, self.params), 6)

    @property
    def masks(self) -> Masks:
        return self.graph.masks(self.keep, self.prunable)

    def tier_keep(self, state: Mapping[str, torch.Tensor], density: float) -> Keep:
        if density == self.top_density:
            return self.keep
        return keep_by_importance(self.graph, state, self._tier_counts[density], within=self.keep)

    def masks_for(self, params: Mapping[str, torch.Tensor], budget: Budget) -> Masks | None:
        """The tier's channels (every tensor with a channel axis, BatchNorm statistics too);
        None when the tier holds the whole model."""
        keep = self.tier_keep(params, budget.density)
        if all(len(k) == self.graph.spaces[s].size for s, k in keep.items()):
            return None
        return self.graph.masks(keep)

    def apply(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Zero every parameter coordinate outside the top tier's channels."""
        out = dict(arrays)
        for name, mask in self.masks.items():
            out[name] = np.where(mask.numpy(), arrays[name], 0).astype(arrays[name].dtype)
        return out

    # --- adjustment plan --------------------------------------------------------------------
    def is_adjust_round(self, server_round: int) -> bool:
        return (self.adjust == "pairs" and server_round % self.adjust_every == 0
                and server_round < self.adjust_until)

    def plan_round(self, server_round: int) -> AdjustPlan:
        """One space per adjustment round, K = ceil(alpha_t x its kept channels)."""
        k: dict[str, int] = {}
        fraction = 0.0
        if self.is_adjust_round(server_round):
            fraction = adjustment_fraction(server_round, self.adjust_until, self.cfg.initial_alpha)
            space = self.units[self.adjustments % len(self.units)]
            count = min(adjustment_count(fraction, len(self.keep[space])),
                        self.graph.spaces[space].size - len(self.keep[space]),
                        len(self.keep[space]) - 1)
            k = {space: count} if count > 0 else {}
            if not k:
                self.adjustments += 1  # nothing to move in this space: the next one next time
        self.plan = AdjustPlan(server_round, k, fraction)
        return self.plan

    def train_config(self) -> dict[str, Any]:
        if not self.plan.k:
            return {}
        (space,) = self.plan.k
        return {"adjust-layers": [space], "adjust-k": list(self.plan.k.values()),
                "adjust-channels": [int(c) for c in self.keep[space]]}

    def adjust_mask_bits(self, budget: Budget) -> dict[str, np.ndarray]:
        return {}  # the top tier's channels of the adjusted space travel in the round config

    # --- costs ----------------------------------------------------------------------------------
    def cost_model(self, counts: Mapping[str, int]) -> CostModel:
        """The cost model of the sliced network with these channel counts (which channels does
        not change a count)."""
        key = tuple(sorted(counts.items()))
        if key not in self._costs:
            keep = {s: torch.arange(c) for s, c in counts.items()}
            small = self.graph.sliced_module(self._model, keep)
            self._costs[key] = CostModel(small, self.graph.input_shape)
        return self._costs[key]

    def tier_counts(self, density: float) -> dict[str, int]:
        return self._tier_counts.get(density) or {s: sp.size for s, sp in self.graph.spaces.items()}

    def training_cost(self, density: float, samples: int, batch_size: int) -> TrainingCost:
        cost = self.cost_model(self.tier_counts(density))
        return cost.training_cost(cost.dense_counts(), samples, batch_size, self.momentum)

    def _probe_counts(self, density: float) -> dict[str, int]:
        (space,) = self.plan.k
        return {**self.tier_counts(density), space: self.graph.spaces[space].size}

    def extra_memory(self, budget: Budget) -> float:
        """An adjustment round's probe: the sliced network with the adjusted space at full width
        (its weights, and the gradient of the weights that read the space) plus K pairs."""
        if not self.plan.k:
            return 0.0
        probe = self.cost_model(self._probe_counts(budget.density))
        (space,) = self.plan.k
        readers = {a.tensor for a in self.graph.spaces[space].axes if a.dim == 1}
        weights = sum(probe.param_sizes.values())
        grads = sum(probe.param_sizes.get(n, 0) for n in readers)
        return float((weights + grads) * BYTES_PER_VALUE + sum(self.plan.k.values()) * PAIR_BYTES)

    def extra_flops(self, budget: Budget) -> float:
        """One mini-batch forward and backward of the probe network."""
        if not self.plan.k:
            return 0.0
        probe = self.cost_model(self._probe_counts(budget.density))
        return float(self.batch_size * 3 * probe.forward_flops_per_sample(probe.dense_counts()))

    # --- reports and the server step ---------------------------------------------------------
    def check_pairs(self, pairs: Pairs | None) -> None:
        """Per adjusted space at most K unique channels the top tier prunes, finite scores >= 0."""
        if self.adjust != "pairs" or not self.plan.k:
            return
        if pairs is None:
            raise PairsRejected("reply lacks its top-K channel scores")
        extra = set(pairs) - set(self.plan.k)
        if extra:
            raise PairsRejected(f"scores for spaces not being adjusted: {sorted(extra)[:3]}")
        for space, k in self.plan.k.items():
            index, values = pairs.get(space, (np.zeros(0, np.int64), np.zeros(0, np.float32)))
            size = self.graph.spaces[space].size
            if index.ndim != 1 or index.shape != values.shape:
                raise PairsRejected(f"{space}: index and value arrays differ in shape")
            if len(index) > k:
                raise PairsRejected(f"{space}: {len(index)} channels, more than K={k}")
            if len(index) and (index.min() < 0 or index.max() >= size):
                raise PairsRejected(f"{space}: channel out of range")
            if len(np.unique(index)) != len(index):
                raise PairsRejected(f"{space}: repeated channels")
            if not np.all(np.isfinite(values)) or (values < 0).any():
                raise PairsRejected(f"{space}: scores must be finite and non-negative")
            if np.isin(index, self.keep[space].numpy()).any():
                raise PairsRejected(f"{space}: scores for channels that are not pruned")

    def after_aggregate(self, arrays: dict[str, np.ndarray], reports: Sequence[Pairs],
                        weights: Sequence[float] | None = None) -> dict[str, np.ndarray]:
        """Apply the round's adjustment to the aggregated model; return it masked. Channel
        scores are averaged equally (``weights`` must be None: refused at setup otherwise)."""
        if weights is not None:
            raise ValueError("channel scores are averaged equally at granularity filter")
        out = dict(arrays)
        if self.plan.k and self.adjust == "pairs":
            state = {n: torch.from_numpy(np.array(v)) for n, v in out.items()}
            (space, k), = self.plan.k.items()
            rows = [r[space] for r in reports if space in r]
            rows += [(np.zeros(0, np.int64), np.zeros(0, np.float32))] * (len(reports) - len(rows))
            before = self.keep[space]
            kept, grown = prune_and_grow_channels(self.graph, state, space, before, rows, k,
                                                  self.seed, self.plan.server_round)
            self.keep = {**self.keep, space: kept}
            out = {n: state[n].numpy().astype(arrays[n].dtype) for n in out}
            self.adjustments += 1
            self.history.append({"round": self.plan.server_round,
                                 "alpha": round(self.plan.fraction, 6), "k": dict(self.plan.k),
                                 "regrown": {space: grown} if grown else {}})
        return self.apply(out)

    # --- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict[str, object]:
        return {"keep": {s: k.numpy() for s, k in self.keep.items()},
                "adjustments": self.adjustments, "info": self.info, "history": self.history}

    def restore(self, state: Mapping[str, object]) -> None:
        keep = state["keep"]
        assert isinstance(keep, dict)
        self.set_masks(self.graph.masks({s: torch.as_tensor(v, dtype=torch.long)
                                         for s, v in keep.items()}, self.prunable))
        self.adjustments = int(state["adjustments"])  # type: ignore[arg-type]
        self.info = dict(state.get("info", {}))  # type: ignore[call-overload]
        self.history = list(state.get("history", []))  # type: ignore[call-overload]

