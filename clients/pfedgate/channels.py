"""pFedGate's channel-aligned blocks: the gate picks groups of output channels, and each batch
trains the physically smaller network they form (``fedsparse.structured``), so the time of a
batch falls with the budget s instead of staying dense as with blocks of flat weights.

- Every channel space keeps a prefix ``sub0`` of its channels (the widest prefix submodel
  holding at most ``sub0_fraction * s`` of every limited quantity) and cuts the rest into
  ``split`` contiguous blocks. The gate scores the blocks (and, with ``sub0_scaled``, each
  space's sub0).
- A block's cost depends on what else is kept (a conv's kept weights are its kept output x kept
  input channels), so the 0/1 knapsack has interacting costs. Blocks are picked greedily by
  score per *marginal* share of the limits under the exact count of the submodel: weights per
  knapsack group <= floor(s * d_group), Conv2d/Linear FLOPs <= s of dense and, with
  ``limit_activations``, normalised activation elements <= s of dense. Weights alone would keep
  early convolutions wide (few weights, most of the FLOPs); FLOPs still leave the first one wide
  (most of the activations, whose pooling and BatchNorm keep a small CNN's batch time high).
  The density stays a hard limit for every batch.
- A kept channel is weighted by its block's gate value M' = M * I_ST (straight-through on kept
  blocks only: a dropped channel is never computed, so it can send no gradient). The weight
  multiplies the channel's input columns in the layers that read it, i.e. the activation
  itself (BatchNorm after the producing layer would cancel a scale on its weights).
- Training updates only the sliced coordinates (SGD with momentum kept per coordinate), and
  BatchNorm statistics of the kept channels; no dense gradient is ever formed.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from fedsparse.clients.pfedgate.gating import clip_gradients
from fedsparse.structured import ChannelGraph, Keep

CACHED_STRUCTURES = 64  # sliced networks kept per layout (one per distinct set of widths)


@dataclass(frozen=True)
class ChannelBlocks:
    """Where the always-kept channels end and the gated channel blocks lie, per space."""

    graph: ChannelGraph
    params: tuple[str, ...]
    spaces: tuple[str, ...]
    sub0: tuple[int, ...]  # per space: the first sub0[i] channels are always kept
    block_space: tuple[int, ...]  # per block: its space's index
    block_channels: tuple[torch.Tensor, ...]  # per block: its channels
    #: per knapsack group: weights a batch may compute with, floor(s * the group's weights);
    #: then, per entry of ``costs``, what a sample may spend of it: s * the dense model's
    limits: tuple[float, ...]
    total: int  # weights of the whole model
    #: per parameter tensor, its knapsack group (all 0: one joint limit)
    groups: tuple[int, ...] = ()
    #: per limited cost (forward FLOPs, activation elements), per parameter tensor: what one
    #: kept coordinate costs per sample (empty: weights are the only limit)
    costs: tuple[tuple[float, ...], ...] = ()

    @property
    def num_blocks(self) -> int:
        return len(self.block_space)

    @cached_property
    def _terms(self) -> list[tuple[int, int, list[int], tuple[float, ...]]]:
        """Per parameter tensor: its group, its coordinates per kept channel combination, the
        spaces (by index) of its channel axes (kept = base * prod(widths of those spaces)) and
        what one kept coordinate costs per limited cost."""
        index = {s: i for i, s in enumerate(self.spaces)}
        groups = self.groups or (0,) * len(self.params)
        slopes = list(zip(*self.costs, strict=True)) if self.costs else [()] * len(self.params)
        terms = []
        for name, group, cost in zip(self.params, groups, slopes, strict=True):
            base = math.prod(self.graph.shapes[name])
            spaces = []
            for space, axis in self.graph.axes_of.get(name, ()):
                base = base // self.graph.shapes[name][axis.dim] * axis.group
                spaces.append(index[space])
            terms.append((group, base, spaces, cost))
        return terms

    def counts(self, widths: np.ndarray) -> np.ndarray:
        """Weights per group of the submodel whose spaces keep ``widths`` channels, then each
        limited cost per sample (``costs``): the quantities ``limits`` bounds."""
        out = np.zeros(len(self.limits), dtype=np.float64)
        first = len(self.limits) - len(self.costs)
        for group, base, spaces, cost in self._terms:
            kept = base * math.prod(int(widths[i]) for i in spaces)
            out[group] += kept
            for j, slope in enumerate(cost):
                out[first + j] += slope * kept
        return out

    def count(self, widths: np.ndarray) -> int:
        """Weights (parameters) of the submodel whose spaces keep ``widths`` channels."""
        counts = self.counts(widths)
        return int(np.rint(counts[:len(self.limits) - len(self.costs)].sum()))

    def select(self, scores: np.ndarray) -> np.ndarray:
        """Blocks to keep: greedy by score per marginal share of the groups' capacities, never
        past any group's limit. Within a space the best-scored block of a size goes first, so
        each step weighs one candidate per space and block size."""
        widths = np.asarray(self.sub0, dtype=np.int64)
        limits = np.asarray(self.limits, dtype=np.float64)
        full = np.array([self.graph.spaces[s].size for s in self.spaces], dtype=np.int64)
        if np.all(self.counts(full) <= limits):  # everything fits (s = 1)
            return scores > 0
        used = self.counts(widths)
        sizes = np.array([len(c) for c in self.block_channels], dtype=np.int64)
        picked = np.zeros(self.num_blocks, dtype=bool)
        open_ = scores > 0
        space = np.asarray(self.block_space)
        while True:
            best, best_value = -1, -math.inf
            for i, size in {(int(space[b]), int(sizes[b])) for b in np.flatnonzero(open_)}:
                members = np.flatnonzero(open_ & (space == i) & (sizes == size))
                b = int(members[np.argmax(scores[members])])
                grown = widths.copy()
                grown[i] += size
                after = self.counts(grown)
                if np.any(after > limits):
                    open_[members] = False  # no block of this size fits in this space any more
                    continue
                share = float(((after - used) / np.maximum(limits, 1)).sum())
                value = scores[b] / max(share, 1e-12)
                if value > best_value:
                    best, best_value = b, value
            if best < 0:
                return picked
            picked[best] = True
            open_[best] = False
            widths[self.block_space[best]] += sizes[best]
            used = self.counts(widths)

    def keep(self, picked: np.ndarray) -> Keep:
        """The channels of sub0 and of the picked blocks, per space (sorted)."""
        keep = {}
        for i, space in enumerate(self.spaces):
            parts = [torch.arange(self.sub0[i])]
            parts += [c for b, c in enumerate(self.block_channels)
                      if picked[b] and self.block_space[b] == i]
            keep[space] = torch.sort(torch.cat(parts)).values
        return keep


def make_channel_blocks(graph: ChannelGraph, params: Mapping[str, torch.Tensor], density: float,
                        split: int, sub0_fraction: float,
                        groups: Mapping[str, str] | None = None,
                        costs: Sequence[Mapping[str, float]] = ()) -> ChannelBlocks:
    """Channel blocks for a client with budget ``density``: a hard limit on the weights of every
    batch, per group when ``groups`` (tensor -> label, e.g. linear vs other layers as in the
    authors' knapsack) splits them, so that convolutions are thinned too, else overall; and on
    each of ``costs`` (tensor -> cost per kept coordinate per sample: Conv2d / Linear FLOPs,
    ``CostModel.flops_per_coordinate``; activation elements, ``activations_per_coordinate``):
    s of the dense model's. Without them a budget in weights keeps early convolutions wide (few
    weights, but most of the FLOPs and of the activations), and time hardly falls."""
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    names = tuple(params)
    spaces = tuple(graph.spaces)
    labels = [groups.get(n, "") if groups else "" for n in names]
    order = list(dict.fromkeys(labels))
    group_of = tuple(order.index(label) for label in labels)
    group_totals = [sum(params[n].numel() for n, g in zip(names, group_of, strict=True) if g == i)
                    for i in range(len(order))]
    limits = tuple(math.floor(density * t + 1e-9) for t in group_totals)
    totals = list(group_totals)
    per_coordinate = tuple(tuple(float(cost.get(n, 0.0)) for n in names) for cost in costs)
    for slopes in per_coordinate:
        dense = sum(c * params[n].numel() for n, c in zip(names, slopes, strict=True))
        limits += (density * dense,)
        totals.append(dense)
    total = sum(group_totals)
    blocks = ChannelBlocks(graph, names, spaces, (), (), (), limits, total, group_of, per_coordinate)
    sizes = np.array([graph.spaces[s].size for s in spaces], dtype=np.int64)
    smallest = blocks.counts(np.ones(len(spaces), dtype=np.int64))
    if np.any(smallest > np.asarray(limits)):
        raise ValueError(f"density {density:g} is below the smallest channel submodel (one "
                         "channel per layer); raise the budget or use method.pfedgate.blocks=weights")
    targets = np.array([sub0_fraction * density * t for t in totals])
    low, high = 0.0, 1.0  # widest prefix ratio whose submodel fits the sub0 share of every group
    for _ in range(40):
        mid = (low + high) / 2
        if np.all(blocks.counts(_widths(sizes, mid)) <= targets):
            low = mid
        else:
            high = mid
    sub0 = _widths(sizes, low)
    if np.any(blocks.counts(sub0) > targets):
        sub0 = np.ones_like(sizes)
    block_space, block_channels = [], []
    for i, size in enumerate(sizes):
        rest = torch.arange(int(sub0[i]), int(size))
        for chunk in torch.tensor_split(rest, min(split, len(rest))) if len(rest) else ():
            block_space.append(i)
            block_channels.append(chunk)
    return ChannelBlocks(graph, names, spaces, tuple(int(w) for w in sub0), tuple(block_space),
                         tuple(block_channels), limits, total, group_of, per_coordinate)


def _widths(sizes: np.ndarray, ratio: float) -> np.ndarray:
    return np.maximum(1, np.floor(ratio * sizes + 1e-9)).astype(np.int64)


class ChannelGating:
    """Forward passes of the gated, sliced network for one model and one block layout."""

    def __init__(self, model: nn.Module, blocks: ChannelBlocks) -> None:
        self.model = model
        self.blocks = blocks
        self.graph = blocks.graph
        self.tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        self._structures: OrderedDict[tuple[int, ...], nn.Module] = OrderedDict()
        self._shapes_only = copy.deepcopy(model).to("meta")  # slicing it copies no values

    def structure(self, keep: Keep) -> nn.Module:
        """A network of the kept widths, holding no values: every call passes its tensors."""
        key = tuple(len(keep[s]) for s in self.blocks.spaces)
        if key not in self._structures:
            self._structures[key] = self.graph.sliced_module(self._shapes_only, keep)
            if len(self._structures) > CACHED_STRUCTURES:
                self._structures.popitem(last=False)
        self._structures.move_to_end(key)
        return self._structures[key]

    def index(self, keep: Keep) -> dict[str, torch.Tensor]:
        """Per tensor with a channel axis that the keep narrows, the flat positions of its kept
        coordinates in row-major order (a tensor kept whole along every axis is absent)."""
        out = {}
        for name, axes in self.graph.axes_of.items():
            if name not in self.tensors:
                continue
            shape = self.graph.shapes[name]
            along = {axis.dim: axis.coordinates(keep[space]) for space, axis in axes
                     if len(keep[space]) < self.graph.spaces[space].size}
            if not along:
                continue
            index = torch.zeros((), dtype=torch.int64)
            for dim, size in enumerate(shape):
                coords = along.get(dim, torch.arange(size))
                index = index.unsqueeze(-1) * size + coords
            out[name] = index.to(self.tensors[name].device)  # where the tensor it indexes lives
        return out

    def sliced(self, index: Mapping[str, torch.Tensor], names: list[str], trainable: bool
               ) -> dict[str, torch.Tensor]:
        """The kept part of ``names``' tensors (leaves that collect gradients when
        ``trainable``, copies of the model's values)."""
        out = {}
        for name in names:
            tensor = self.tensors[name].detach()
            where = index.get(name)
            if where is not None:
                part = tensor.reshape(-1).index_select(0, where.reshape(-1)).view(where.shape)
            else:
                part = tensor.clone() if trainable else tensor
            out[name] = part.requires_grad_(True) if trainable else part
        return out

    def channel_weights(self, keep: Keep, picked: np.ndarray, block_weight: torch.Tensor,
                        sub0_weight: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Per space, the weight of every kept channel (in the keep's order): sub0 channels 1
        (or their space's sub0 score), then each picked block's weight over its channels."""
        out = {}
        for i, space in enumerate(self.blocks.spaces):
            sub0 = self.blocks.sub0[i]
            parts = [sub0_weight[i].expand(sub0) if sub0_weight is not None
                     else torch.ones(sub0, dtype=block_weight.dtype, device=block_weight.device)]
            for b in np.flatnonzero(picked):
                if self.blocks.block_space[b] == i:
                    parts.append(block_weight[b].expand(len(self.blocks.block_channels[b])))
            order = torch.argsort(torch.cat([torch.arange(sub0), *[
                self.blocks.block_channels[b] for b in np.flatnonzero(picked)
                if self.blocks.block_space[b] == i]]))
            out[space] = torch.cat(parts)[order]
        return out

    def scaled(self, name: str, tensor: torch.Tensor, weights: Mapping[str, torch.Tensor]
               ) -> torch.Tensor:
        """``tensor`` (sliced) with the input columns of each channel it reads weighted."""
        for space, axis in self.graph.axes_of.get(name, ()):
            if axis.dim != 1:
                continue  # an output axis: BatchNorm would cancel a scale there
            column = weights[space].repeat_interleave(axis.group) if axis.group > 1 else weights[space]
            shape = [1] * tensor.dim()
            shape[1] = len(column)
            tensor = tensor * column.view(shape)
        return tensor

    def forward(self, params: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor],
                keep: Keep, weights: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits of the sliced network; BatchNorm statistics update ``buffers`` in place."""
        scaled = {n: self.scaled(n, t, weights) for n, t in params.items()}
        return functional_call(self.structure(keep), {**scaled, **buffers}, (x,))


class ChannelStep:
    """One training step of the gated, sliced network on one batch: SGD with momentum on the
    sliced coordinates only (a coordinate's momentum moves it only in the batches that compute
    with it), BatchNorm statistics of the kept channels; no dense gradient is ever formed."""

    def __init__(self, gating: ChannelGating, lr: float, momentum: float, weight_decay: float,
                 train_model: bool, grad_clip: float, separate_clips: bool = False) -> None:
        self.gating, self.graph = gating, gating.graph
        self.separate_clips = separate_clips
        self.params = dict(gating.model.named_parameters())
        self.buffers = dict(gating.model.named_buffers())
        self.lr, self.momentum = lr, momentum
        self.weight_decay, self.train_model, self.grad_clip = weight_decay, train_model, grad_clip
        self.velocity = {n: torch.zeros_like(p) for n, p in self.params.items()} \
            if train_model and momentum > 0 else {}

    def picks(self, g: torch.Tensor, m: torch.Tensor, ste: bool
              ) -> tuple[Keep, dict[str, torch.Tensor]]:
        """The kept channels for these scores and each kept channel's weight (straight-through
        on kept blocks when ``ste``: forward value M * I, gradient to G and M)."""
        blocks = self.gating.blocks.num_blocks
        sub0_weight = m[blocks:] if len(g) > blocks else None
        g, m = g[:blocks], m[:blocks]
        picked = self.gating.blocks.select(g.detach().cpu().numpy())
        chosen = torch.from_numpy(picked).to(device=g.device, dtype=g.dtype)
        block_weight = m * chosen * ((chosen - g.detach() + g) if ste else chosen)
        keep = self.gating.blocks.keep(picked)
        return keep, self.gating.channel_weights(keep, picked, block_weight, sub0_weight)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, m: torch.Tensor,
                 gate_optimizer: torch.optim.Optimizer
                 ) -> tuple[float, Keep, dict[str, torch.Tensor]]:
        """Train on (x, y); returns the loss, the channels kept and their flat positions."""
        keep, weights = self.picks(g, m, ste=True)
        index = self.gating.index(keep)
        leaves = self.gating.sliced(index, list(self.params), trainable=self.train_model)
        stats = self.gating.sliced(index, list(self.buffers), trainable=False)
        loss = nn.functional.cross_entropy(self.gating.forward(leaves, stats, keep, weights, x), y)
        objective = loss
        if self.train_model and self.weight_decay > 0:
            objective = loss + 0.5 * self.weight_decay * sum((t ** 2).sum() for t in leaves.values())
        gate_optimizer.zero_grad(set_to_none=True)
        objective.backward()
        gate_params = [p for group in gate_optimizer.param_groups for p in group["params"]]
        model_params = list(leaves.values()) if self.train_model else []
        clip_gradients(gate_params, model_params, self.grad_clip, self.separate_clips)
        gate_optimizer.step()
        with torch.no_grad():
            if self.train_model:
                self._sgd(leaves, index)
            for name, part in stats.items():  # the kept channels' BatchNorm statistics moved
                if name in index:
                    self.buffers[name].view(-1).index_copy_(0, index[name].reshape(-1),
                                                            part.reshape(-1))
        return float(loss.detach()), keep, index

    def _sgd(self, leaves: Mapping[str, torch.Tensor], index: Mapping[str, torch.Tensor]) -> None:
        for name, leaf in leaves.items():
            if leaf.grad is None:
                continue
            step = leaf.grad.reshape(-1)
            where = index.get(name)
            where = where.reshape(-1) if where is not None else None
            if self.velocity:
                velocity = self.velocity[name].view(-1)
                if where is None:
                    step = velocity.mul_(self.momentum).add_(step)
                else:
                    moved = velocity.index_select(0, where).mul_(self.momentum).add_(step)
                    velocity.index_copy_(0, where, moved)
                    step = moved
            flat = self.params[name].data.view(-1)
            if where is None:
                flat.add_(step, alpha=-self.lr)
            else:
                flat.index_add_(0, where, step, alpha=-self.lr)

    @torch.no_grad()
    def logits(self, x: torch.Tensor, g: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, Keep]:
        """Evaluation: the sliced network's logits for these scores (statistics untouched)."""
        keep, weights = self.picks(g, m, ste=False)
        index = self.gating.index(keep)
        leaves = self.gating.sliced(index, list(self.params), trainable=False)
        stats = self.gating.sliced(index, list(self.buffers), trainable=False)
        return self.gating.forward(leaves, stats, keep, weights, x), keep
