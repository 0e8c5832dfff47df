"""pFedGate's building blocks (Chen et al., ICML 2023), plain torch: blocks, gate, knapsack, STE.

- ``BlockLayout`` cuts every parameter tensor (flattened) into an always-kept ``sub0`` chunk and
  B gated chunks. Unlike the authors' code, sub0 shrinks with the client's budget s (it holds
  ``sub0_fraction * s`` of each tensor), so the declared density is a hard limit for every s.
- ``GateNet`` scores the L = B x tensors gated blocks from an input batch: pre-norm, flatten,
  Linear, BatchNorm1d, sigmoid, mean over the batch (or per sample); optional separate head for
  the block weights.
- ``knapsack`` picks blocks maximising the summed scores under the budget: exact dynamic
  programming when the table is small, greedy by score per parameter otherwise.
- ``gated_scales`` turns scores and picks into per-parameter scale tensors with the
  straight-through estimator, so the forward pass uses binary picks and the gate still learns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

EXACT_TABLE_LIMIT = 2_000_000  # cells of the DP table (items x capacity units) solved exactly


@dataclass(frozen=True)
class BlockLayout:
    """Where each tensor's sub0 ends and its gated chunks lie (flat offsets)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    sub0: tuple[int, ...]
    bounds: tuple[tuple[int, ...], ...]  # per tensor: B + 1 offsets from sub0 to numel
    #: per knapsack group, the parameters it may add on top of its tensors' sub0
    capacities: tuple[int, ...] = (0,)
    #: per tensor, its knapsack group (all 0: one joint knapsack)
    groups: tuple[int, ...] = ()
    #: how each knapsack is solved: ``exact`` (DP on the float scores where its table is small)
    #: or ``rounded-greedy`` (the authors' code: by value on round(10 x score), largest first)
    solver: str = "exact"

    @property
    def capacity(self) -> int:
        """Parameters the knapsacks may add on top of every sub0, all groups together."""
        return sum(self.capacities)

    def block_groups(self) -> np.ndarray:
        """The knapsack group of every gated block."""
        groups = self.groups or (0,) * len(self.names)
        return np.concatenate([np.full(len(b) - 1, g, dtype=np.int64)
                               for b, g in zip(self.bounds, groups, strict=True)])

    @property
    def num_blocks(self) -> int:
        return sum(len(b) - 1 for b in self.bounds)

    @property
    def total(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def block_sizes(self) -> np.ndarray:
        return np.concatenate([np.diff(np.asarray(b)) for b in self.bounds]).astype(np.int64)


def gate_has_choices(layout: BlockLayout) -> bool:
    """Whether the knapsack ever has to choose: some group's blocks that fit its capacity do
    not all fit together. Otherwise every batch of every client takes the same blocks (those
    that fit) and the gate only scales them: a fixed mask."""
    sizes, groups = layout.block_sizes(), layout.block_groups()
    for g, capacity in enumerate(layout.capacities):
        fitting = sizes[(groups == g) & (sizes > 0) & (sizes <= capacity)]
        if int(fitting.sum()) > capacity:
            return True
    return False


def make_layout(params: Mapping[str, torch.Tensor], density: float, split: int = 5,
                sub0_fraction: float = 0.5, groups: Mapping[str, str] | None = None,
                block_fit: int = 0, solver: str = "exact") -> BlockLayout:
    """Blocks for a client with budget ``density``: sub0 = floor(sub0_fraction * s * n) per tensor.

    ``groups`` (tensor name -> group label, e.g. linear vs other layers as in the authors' code):
    one knapsack per group, each with capacity floor(s * the group's parameters) minus its sub0,
    so every group, convolutions included, is thinned to the budget; None: one joint knapsack.
    ``block_fit`` > 0 cuts each tensor's gated part into at least ``split`` blocks and enough
    that ``block_fit`` of them fit its group's capacity, so the gate has blocks to choose among
    (with B = 5 a large layer's blocks may all exceed the capacity: the mask never changes).
    Either way the whole model keeps at most floor(s * d) parameters per batch.
    """
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if split < 1 or not 0 <= sub0_fraction <= 1 or block_fit < 0:
        raise ValueError("split must be >= 1, sub0_fraction in [0, 1] and block_fit >= 0")
    names = list(params)
    shapes = [tuple(params[n].shape) for n in names]
    sizes = [params[n].numel() for n in names]
    sub0s = [math.floor(sub0_fraction * density * n) for n in sizes]
    labels = [groups.get(n, "") if groups else "" for n in names]
    order = list(dict.fromkeys(labels))
    group_of = tuple(order.index(label) for label in labels)
    capacities = []
    for g in range(len(order)):
        members = [i for i, gi in enumerate(group_of) if gi == g]
        total = sum(sizes[i] for i in members)
        capacities.append(max(0, math.floor(density * total + 1e-9) - sum(sub0s[i] for i in members)))
    bounds = []
    for n, sub0, g in zip(sizes, sub0s, group_of, strict=True):
        blocks = split
        if block_fit and capacities[g] > 0 and n > sub0:
            blocks = min(max(split, math.ceil(block_fit * (n - sub0) / capacities[g])), n - sub0)
        bounds.append(tuple(int(e) for e in np.linspace(sub0, n, blocks + 1).round().astype(int)))
    return BlockLayout(tuple(names), tuple(shapes), tuple(sub0s), tuple(bounds), tuple(capacities),
                       group_of, solver)


def knapsack(scores: np.ndarray, sizes: np.ndarray, capacity: int,
             exact_limit: int = EXACT_TABLE_LIMIT) -> np.ndarray:
    """0/1 knapsack: maximise sum(scores[picked]) with sum(sizes[picked]) <= capacity.

    Exact DP over capacity (in units of the sizes' gcd) when items x units <= ``exact_limit``;
    otherwise greedy by score per parameter, then the best single item if that beats it
    (the classic 1/2-approximation). Either way the capacity is never exceeded.
    """
    scores = np.asarray(scores, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.int64)
    picked = (sizes == 0) & (scores > 0)  # free items cost nothing
    items = np.flatnonzero((sizes > 0) & (sizes <= capacity) & (scores > 0))
    if items.size == 0:
        return picked
    unit = int(np.gcd.reduce(sizes[items]))
    units, cap = sizes[items] // unit, capacity // unit
    if items.size * (cap + 1) <= exact_limit:
        picked[items[_knapsack_dp(scores[items], units, int(cap))]] = True
        return picked
    order = items[np.argsort(-scores[items] / sizes[items], kind="stable")]
    used = 0
    greedy = np.zeros(len(scores), dtype=bool)
    for i in order:
        if used + sizes[i] <= capacity:
            greedy[i] = True
            used += int(sizes[i])
    best_single = items[np.argmax(scores[items])]
    if scores[best_single] > scores[greedy].sum():
        greedy[:] = False
        greedy[best_single] = True
    return picked | greedy


def _knapsack_dp(values: np.ndarray, weights: np.ndarray, capacity: int) -> np.ndarray:
    """Exact 0/1 knapsack, vectorised over capacity; returns a boolean pick per item."""
    n = len(values)
    best = np.zeros(capacity + 1)
    take = np.zeros((n, capacity + 1), dtype=bool)
    for i in range(n):
        w = int(weights[i])
        if w > capacity:
            continue
        candidate = best[: capacity + 1 - w] + values[i]
        better = candidate > best[w:]
        take[i, w:] = better
        best[w:] = np.where(better, candidate, best[w:])
    picked = np.zeros(n, dtype=bool)
    c = capacity
    for i in range(n - 1, -1, -1):
        if take[i, c]:
            picked[i] = True
            c -= int(weights[i])
    return picked


class SwitchNorm(nn.Module):
    """Switchable normalisation (Luo et al., ICLR 2019), the authors' gate pre-norm: the mean and
    variance are softmax-weighted mixtures of instance (per sample and channel, over positions;
    images only), layer (per sample) and batch statistics (per channel; running averages when
    not training), with learned mixture weights and a per-channel affine."""

    def __init__(self, channels: int, spatial: bool, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.spatial, self.momentum, self.eps = spatial, momentum, eps
        kinds = 3 if spatial else 2  # (instance,) layer, batch
        self.mean_weight = nn.Parameter(torch.ones(kinds))
        self.var_weight = nn.Parameter(torch.ones(kinds))
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        h = x.reshape(n, c, -1)
        # per sample and channel: mean and E[x^2] over positions (one position without them)
        mean_in = h.mean(-1, keepdim=True)
        square_in = (h * h).mean(-1, keepdim=True)
        mean_ln = mean_in.mean(1, keepdim=True)
        var_ln = square_in.mean(1, keepdim=True) - mean_ln ** 2
        if self.training:
            mean_bn = mean_in.mean(0, keepdim=True)
            var_bn = square_in.mean(0, keepdim=True) - mean_bn ** 2
            with torch.no_grad():
                self.running_mean.lerp_(mean_bn.reshape(c), self.momentum)
                self.running_var.lerp_(var_bn.reshape(c), self.momentum)
        else:
            mean_bn = self.running_mean.view(1, c, 1)
            var_bn = self.running_var.view(1, c, 1)
        mw = torch.softmax(self.mean_weight, 0)
        vw = torch.softmax(self.var_weight, 0)
        if self.spatial:
            var_in = square_in - mean_in ** 2
            mean = mw[0] * mean_in + mw[1] * mean_ln + mw[2] * mean_bn
            var = vw[0] * var_in + vw[1] * var_ln + vw[2] * var_bn
        else:
            mean = mw[0] * mean_ln + mw[1] * mean_bn
            var = vw[0] * var_ln + vw[1] * var_bn
        out = (h - mean) / torch.sqrt(var.clamp(min=0) + self.eps)
        out = out * self.weight.view(1, c, 1) + self.bias.view(1, c, 1)
        return out.reshape(x.shape)


class GateNet(nn.Module):
    """Client-private gate: x -> pre-norm -> flatten -> Linear -> BN1d -> sigmoid (per sample).

    ``norm``: the pre-norm, BatchNorm or the authors' SwitchNorm. ``floor``: the authors' score
    clip, min(max(1/B, 0.1), s), applied to the batch's block scores before the knapsack (the
    block weights M stay unclipped, as in their code); 0: none."""

    def __init__(self, input_shape: tuple[int, ...], num_blocks: int, weight_head: bool = False,
                 norm: str = "batch") -> None:
        super().__init__()
        channels = input_shape[0]
        if norm == "switch":
            self.pre_norm: nn.Module = SwitchNorm(channels, spatial=len(input_shape) == 3)
        else:
            self.pre_norm = nn.BatchNorm2d(channels) if len(input_shape) == 3 else nn.BatchNorm1d(channels)
        width = math.prod(input_shape)
        self.score = nn.Sequential(nn.Linear(width, num_blocks), nn.BatchNorm1d(num_blocks))
        self.weight = nn.Sequential(nn.Linear(width, num_blocks), nn.BatchNorm1d(num_blocks)) \
            if weight_head else None
        self.floor = 0.0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample block scores G and block weights M (M = G without a weight head)."""
        h = torch.flatten(self.pre_norm(x), 1)
        g = torch.sigmoid(self.score(h))
        m = torch.sigmoid(self.weight(h)) if self.weight is not None else g
        return g, m

    def floored(self, g: torch.Tensor) -> torch.Tensor:
        """Scores with the floor applied (no gradient below it, as a clip)."""
        return g.clamp(min=self.floor) if self.floor > 0 else g

    def pooled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's block scores (floored) and block weights: means over the batch."""
        g, m = self(x)
        return self.floored(g.mean(dim=0)), m.mean(dim=0)


def score_floor(split: int, density: float) -> float:
    """The authors' lower bound on gate scores: min(max(1/B, 0.1), s)."""
    return min(max(1.0 / split, 0.1), density)


def clip_gradients(gate_params: list[torch.Tensor], model_params: list[torch.Tensor],
                   max_norm: float, separate: bool) -> None:
    """One clip over gate and model together, or (the authors) one each."""
    if separate:
        torch.nn.utils.clip_grad_norm_(gate_params, max_norm)
        if model_params:
            torch.nn.utils.clip_grad_norm_(model_params, max_norm)
    else:
        torch.nn.utils.clip_grad_norm_(gate_params + model_params, max_norm)


def rounded_greedy(scores: np.ndarray, sizes: np.ndarray, capacity: int,
                   scale: float = 10.0) -> np.ndarray:
    """The authors' knapsack: scores rounded to integers (round(scale x score)), items taken by
    that value, largest first (ties in index order), each one that still fits. It ignores
    the sizes when ranking, so it may fill the budget with one large block where the exact
    solution takes two smaller ones worth more."""
    values = np.rint(np.asarray(scores, dtype=np.float64) * scale)
    sizes = np.asarray(sizes, dtype=np.int64)
    picked = np.zeros(len(values), dtype=bool)
    used = 0
    for i in np.argsort(-values, kind="stable"):
        if used + sizes[i] <= capacity:
            picked[i] = True
            used += int(sizes[i])
    return picked


def pick_blocks(scores: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """Binary picks I for one score vector, one knapsack per group (no gradient)."""
    values = scores.detach().cpu().numpy()
    sizes, groups = layout.block_sizes(), layout.block_groups()
    chosen = np.zeros(len(values), dtype=bool)
    solve = rounded_greedy if layout.solver == "rounded-greedy" else knapsack
    for g, capacity in enumerate(layout.capacities):
        members = np.flatnonzero(groups == g)
        chosen[members] = solve(values[members], sizes[members], capacity)
    return torch.from_numpy(chosen).to(device=scores.device, dtype=scores.dtype)


def gated_scales(g: torch.Tensor, m: torch.Tensor, layout: BlockLayout,
                 ste: str = "full") -> dict[str, torch.Tensor]:
    """Per-parameter scale tensors: 1 on sub0, M'_k = M_k * I_ST_k on gated block k.

    When ``g`` and ``m`` hold one score more per tensor than there are gated blocks (the gate's
    ``sub0_scores``), those last scores scale each tensor's sub0, as the authors' code scales
    every block: sub0 is never dropped but it is personalised too.

    ``ste="full"`` (the paper): I_ST = I - G.detach() + G, so the forward value is the binary
    pick I while gradients reach G from every block, dropped ones too, which needs the dense
    gradient of the gated weights. ``ste="kept"`` (the authors' code): dropped blocks are 0 with
    no gradient; a kept block is M_k with gradients to G_k and M_k.
    """
    blocks = layout.num_blocks
    sub0_weight = m[blocks:] if len(g) > blocks else None
    g, m = g[:blocks], m[:blocks]
    picks = pick_blocks(g, layout)
    straight_through = picks - g.detach() + g  # forward: I; backward: through G
    block_weight = m * (picks * straight_through if ste == "kept" else straight_through)
    scales = {}
    offset = 0
    for t, (name, shape, sub0, bounds) in enumerate(zip(layout.names, layout.shapes, layout.sub0,
                                                        layout.bounds, strict=True)):
        k = len(bounds) - 1
        sizes = torch.as_tensor(np.diff(np.asarray(bounds)), device=g.device)
        per_coord = torch.repeat_interleave(block_weight[offset:offset + k], sizes)
        head = torch.ones(sub0, dtype=g.dtype, device=g.device) if sub0_weight is None \
            else sub0_weight[t].expand(sub0)
        flat = torch.cat([head, per_coord])
        scales[name] = flat.view(shape)
        offset += k
    return scales


def kept_from_scales(scales: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Non-zero coordinates per tensor under these scales."""
    return {n: int((s.detach() != 0).sum()) for n, s in scales.items()}


class WeightStep:
    """One training step of the gated model on one batch (blocks of flat weights): the model
    computes with theta * M' at full shape, so its time does not fall with s."""

    def __init__(self, model: nn.Module, layout: BlockLayout, lr: float, momentum: float,
                 weight_decay: float, train_model: bool, grad_clip: float, ste: str,
                 separate_clips: bool = False) -> None:
        self.model, self.layout, self.ste = model, layout, ste
        self.separate_clips = separate_clips
        self.params = dict(model.named_parameters())
        self.weight_decay, self.train_model, self.grad_clip = weight_decay, train_model, grad_clip
        self.optimizer = torch.optim.SGD(list(self.params.values()), lr=lr, momentum=momentum) \
            if train_model else None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, m: torch.Tensor,
                 gate_optimizer: torch.optim.Optimizer) -> tuple[float, dict[str, torch.Tensor]]:
        """Train on (x, y); returns the loss and the coordinates the batch computed with."""
        scales = gated_scales(g, m, self.layout, self.ste)
        effective = {name: p * scales[name] for name, p in self.params.items()}
        loss = nn.functional.cross_entropy(functional_call(self.model, effective, (x,)), y)
        used = {name: (s.detach() != 0) for name, s in scales.items()}
        objective = loss
        if self.train_model and self.weight_decay > 0:
            decay = sum(((p * used[name]) ** 2).sum() for name, p in self.params.items())
            objective = loss + 0.5 * self.weight_decay * decay
        gate_optimizer.zero_grad(set_to_none=True)
        gate_params = [p for group in gate_optimizer.param_groups for p in group["params"]]
        model_params: list[torch.Tensor] = []
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
            model_params = list(self.params.values())
        objective.backward()
        clip_gradients(gate_params, model_params, self.grad_clip, self.separate_clips)
        gate_optimizer.step()
        if self.optimizer is not None:
            self.optimizer.step()
        return float(loss.detach()), used

    @torch.no_grad()
    def logits(self, x: torch.Tensor, g: torch.Tensor, m: torch.Tensor
               ) -> tuple[torch.Tensor, dict[str, int]]:
        """Evaluation: logits of the gated model for these scores, and its kept weights."""
        scales = gated_scales(g, m, self.layout)
        logits = functional_call(self.model, {n: p * scales[n] for n, p in self.params.items()}, (x,))
        return logits, kept_from_scales(scales)
