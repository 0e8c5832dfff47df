"""Shared-mask pruning algorithms (plain torch): densities, prune-at-init criteria, nested tier
masks, scored units and the memory each one needs, and the prune-and-grow steps FedTiny and
FedDST share.

Conventions shared by FedTiny, prune-at-init and FedDST here:
- a budget's ``density`` is the share of *all* parameters a client may hold; a first conv
  layer, biases and normalisation parameters are never pruned, so the prunable weights get the
  density that makes the whole model's density the budget (``prunable_density``);
- masks cover the prunable weights only (``masks.prunable_weights`` with the first conv layer
  kept dense); a tier's mask keeps,
  per layer, the largest-magnitude weights of the next larger tier's mask, so tiers nest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from fedsparse.masks import Masks, magnitude_mask, top_k_mask

PAIR_BYTES = 8  # an upload pair: int32 index + float32 value on a device
VALUE_BYTES = 4


def prunable_density(sizes: Mapping[str, int], prunable: Sequence[str], density: float) -> float:
    """Density of the prunable weights that makes the whole model's density ``density``.

    Raises ``ValueError`` when the never-pruned tensors alone exceed the budget.
    """
    fixed = sum(n for name, n in sizes.items() if name not in prunable)
    total = sum(sizes.values())
    allowed = density * total
    if allowed < fixed:
        raise ValueError(f"density {density:g} allows {int(allowed)} parameters but the first conv "
                         f"layer, biases and norm layers alone hold {fixed}: declare a larger density")
    return min(1.0, (allowed - fixed) / max(sum(sizes[n] for n in prunable), 1))


def layer_count(numel: int, density: float) -> int:
    """Weights a layer keeps at ``density`` (floor, so the budget is never exceeded; at least 1)."""
    return max(1, min(numel, math.floor(density * numel + 1e-9)))


Allocation = Literal["uniform", "er", "erk"]


def layer_densities(shapes: Mapping[str, Sequence[int]], density: float,
                    allocation: Allocation = "uniform") -> dict[str, float]:
    """Per-layer densities whose weighted mean is ``density``.

    ``uniform``: every layer the same. ``er`` (Erdős-Rényi, Mocanu et al. 2018): proportional to
    (n_in + n_out) / (n_in * n_out); ``erk`` (ER-Kernel, Evci et al. 2020, FedPruning's default):
    to the sum of all dimensions over their product, so small layers (a classifier, a narrow
    conv) keep more of their weights than large ones. A layer whose share would pass 1 stays
    dense and the rest are rescaled, as RigL does.
    """
    if allocation == "uniform":
        return {n: density for n in shapes}
    sizes = {n: math.prod(shape) for n, shape in shapes.items()}
    score = {n: (sum(shape) if allocation == "erk" else sum(shape[:2])) /
             (sizes[n] if allocation == "erk" else math.prod(shape[:2]))
             for n, shape in shapes.items()}
    dense: set[str] = set()
    total = sum(sizes.values())
    while True:
        rest = [n for n in shapes if n not in dense]
        budget = density * total - sum(sizes[n] for n in dense)
        scale = budget / max(sum(score[n] * sizes[n] for n in rest), 1e-30)
        over = [n for n in rest if scale * score[n] > 1.0]
        if not over:
            return {n: 1.0 if n in dense else scale * score[n] for n in shapes}
        dense.add(max(over, key=lambda n: score[n]))


def _densities(weights: Mapping[str, torch.Tensor], density: float | Mapping[str, float]
               ) -> dict[str, float]:
    return {n: density if isinstance(density, float | int) else density[n] for n in weights}


def magnitude_masks(weights: Mapping[str, torch.Tensor],
                    density: float | Mapping[str, float]) -> Masks:
    """Layer-wise magnitude pruning: every layer keeps its share (one density, or one per layer)
    of its largest weights."""
    shares = _densities(weights, density)
    return {n: magnitude_mask(w, layer_count(w.numel(), shares[n])) for n, w in weights.items()}


def random_masks(weights: Mapping[str, torch.Tensor], density: float | Mapping[str, float],
                 seed: int) -> Masks:
    """Layer-wise uniformly random masks (the random prune-at-init baseline)."""
    generator = torch.Generator().manual_seed(seed)
    shares = _densities(weights, density)
    return {n: top_k_mask(torch.rand(w.shape, generator=generator), layer_count(w.numel(), shares[n]))
            for n, w in weights.items()}


def snip_masks(model: nn.Module, names: Sequence[str], x: torch.Tensor, y: torch.Tensor,
               density: float) -> Masks:
    """SNIP (Lee et al. 2019): keep the weights of largest connection sensitivity |g * w|,
    ranked globally over the prunable layers, from one gradient on the server's set.

    Each layer keeps at least one weight so the network stays connected.
    """
    params = dict(model.named_parameters())
    model.zero_grad(set_to_none=True)
    model.train()
    nn.functional.cross_entropy(model(x), y).backward()
    scores = {n: (params[n].grad * params[n].detach()).abs() for n in names}
    model.zero_grad(set_to_none=True)
    flat = torch.cat([s.flatten() for s in scores.values()])
    k = max(1, math.floor(density * flat.numel() + 1e-9))
    keep = top_k_mask(flat, k)
    masks: Masks = {}
    start = 0
    for n, s in scores.items():
        layer = keep[start:start + s.numel()].view_as(s).clone()
        if not layer.any():
            layer.view(-1)[int(s.flatten().argmax())] = True
        masks[n] = layer
        start += s.numel()
    return masks


def subset_masks(weights: Mapping[str, torch.Tensor], top: Masks, fraction: float) -> Masks:
    """A smaller tier's masks: per layer, the ``fraction`` of ``top``'s kept weights with the
    largest magnitude. The result is a subset of ``top`` by construction."""
    if fraction >= 1.0:
        return {n: m.clone() for n, m in top.items()}
    out: Masks = {}
    for name, mask in top.items():
        kept = int(mask.sum())
        k = max(1, math.floor(fraction * kept + 1e-9)) if kept else 0
        scores = torch.where(mask, weights[name].detach().abs(), torch.full_like(weights[name], -1.0))
        out[name] = top_k_mask(scores, k) & mask
    return out


def prune_back(weights: Mapping[str, torch.Tensor], counts: Mapping[str, int]) -> Masks:
    """FedDST's server step: per layer keep the ``counts[name]`` largest averaged weights."""
    return {n: magnitude_mask(weights[n], counts[n]) for n in counts}


def scoring_units(prunable: Sequence[str], granularity: str) -> list[list[str]]:
    """The units adjusted in turn, from the output end backwards.

    ``model``: all prunable layers at once; ``block``: layers grouped by their first two
    name components (a ResNet BasicBlock, one layer of a plain CNN); ``layer`` and ``chunk``:
    one each (``chunk`` also scores a layer a few output rows at a time, never holding its
    dense gradient: ``streamed_topk_pruned_gradients``).
    """
    if granularity == "model":
        return [list(prunable)]
    if granularity in ("layer", "chunk"):
        return [[n] for n in reversed(prunable)]
    groups: dict[str, list[str]] = {}
    for name in prunable:
        groups.setdefault(".".join(name.split(".")[:2]), []).append(name)
    return list(reversed(list(groups.values())))


def adjustment_memory(unit: Sequence[str], sizes: Mapping[str, int], nnz: Mapping[str, int],
                      alpha: float, chunk: Mapping[str, int] | None = None) -> int:
    """Bytes a client needs on top of sparse training to score ``unit``: the unit's dense
    gradient (or, streamed, one chunk of it: ``chunk`` = coordinates per chunk) plus the largest
    top-K pair list (K = ceil(alpha * nnz), alpha_t <= alpha)."""
    held = chunk if chunk is not None else sizes
    dense_grad = sum(held[n] for n in unit) * VALUE_BYTES
    pairs = sum(math.ceil(alpha * nnz[n]) for n in unit) * PAIR_BYTES
    return dense_grad + pairs


def adjustment_fraction(server_round: int, end_round: int, alpha: float = 0.1) -> float:
    """alpha_t = alpha / 2 * (1 + cos(pi * t / T_end)); 0 after T_end."""
    if server_round >= end_round:
        return 0.0
    return alpha / 2 * (1 + math.cos(math.pi * server_round / end_round))


def adjustment_count(fraction: float, nnz: int) -> int:
    """K_l = ceil(alpha_t * nnz_l)."""
    return math.ceil(fraction * nnz)


def topk_pruned_gradients(grad: torch.Tensor, mask: torch.Tensor, k: int
                          ) -> tuple[np.ndarray, np.ndarray]:
    """A client's report for one adjusted layer: at most ``k`` (flat index, gradient) pairs,
    the largest gradient magnitudes among the currently pruned positions."""
    flat_grad = grad.detach().flatten()
    pruned = torch.nonzero(~mask.flatten()).flatten()
    k = min(k, pruned.numel())
    if k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    top = torch.topk(flat_grad[pruned].abs(), k, sorted=True).indices
    index = pruned[top]
    order = torch.argsort(index)
    return index[order].numpy().astype(np.int64), flat_grad[index[order]].numpy().astype(np.float32)


def prune_and_grow(weight: torch.Tensor, mask: torch.Tensor,
                   reports: Sequence[tuple[np.ndarray, np.ndarray]], k: int,
                   weights: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's prune-and-grow step; returns the new (weight, mask). Density is unchanged.

    Reported gradients are averaged over all reporting clients (entries a client did not send
    count as 0), equally or by ``weights`` (FedTiny's authors: the clients' samples). The k
    active weights of smallest magnitude are pruned (set to 0) and the k pruned positions with
    the largest averaged gradient magnitude are grown, starting at 0.
    """
    flat_mask = mask.flatten().clone()
    flat_weight = weight.detach().flatten().clone()
    avg = torch.zeros(flat_mask.numel(), dtype=torch.float64)
    shares = list(weights) if weights is not None else [1.0] * len(reports)
    if len(shares) != len(reports):
        raise ValueError("one weight per report is required")
    for (index, values), share in zip(reports, shares, strict=True):
        avg[torch.from_numpy(index)] += share * torch.from_numpy(values.astype(np.float64))
    avg /= max(sum(shares), 1e-12) if reports else 1.0
    pruned = torch.nonzero(~flat_mask).flatten()
    active = torch.nonzero(flat_mask).flatten()
    k = min(k, pruned.numel(), active.numel())
    if k <= 0:
        return weight.detach().clone(), mask.clone()
    grow = pruned[torch.topk(avg[pruned].abs(), k, sorted=True).indices]
    drop = active[torch.topk(flat_weight[active].abs(), k, largest=False, sorted=True).indices]
    flat_mask[drop] = False
    flat_weight[drop] = 0.0
    flat_mask[grow] = True
    flat_weight[grow] = 0.0
    return flat_weight.view_as(weight), flat_mask.view_as(mask)


def pruned_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Dense gradients of ``layers`` on one mini-batch at the current (masked) weights; only
    these layers' gradients are kept (a device materialises only the scored unit's). The batch
    normalises with its own statistics, as in training, but leaves the BatchNorm running
    statistics as they were: it only scores, and what the client uploads is what it trained."""
    params = dict(model.named_parameters())
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    model.train()
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    grads = {n: params[n].grad.detach().clone() for n in layers}
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    return grads


def chunk_rows(shape: Sequence[int], density: float) -> int:
    """Output rows per chunk when a layer is scored streamed: about ``density`` of its rows (at
    least one), so a chunk of the gradient is no larger than the layer's sparse weights."""
    return max(1, math.floor(density * shape[0]))


def streamed_topk_pruned_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                                   plan: Mapping[str, int], masks: Mapping[str, torch.Tensor],
                                   rows: Mapping[str, int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The same reports as ``pruned_gradients`` + ``topk_pruned_gradients``, without ever holding
    a layer's dense weight gradient: one backward pass gives each scored layer's output gradient
    (its input is kept from the forward), then the weight gradient is formed ``rows[name]``
    output rows at a time and merged into a running top-K over the pruned positions. Memory on
    top of sparse training: one chunk plus K pairs per layer. BatchNorm statistics are left as
    they were (see ``pruned_gradients``)."""
    modules = dict(model.named_modules())
    layers = {name: modules[name.rsplit(".", 1)[0]] for name in plan}
    inputs: dict[str, torch.Tensor] = {}
    output_grads: dict[str, torch.Tensor] = {}
    hooks = []
    for name, layer in layers.items():
        def keep(_module: nn.Module, args: tuple, out: torch.Tensor, name: str = name) -> None:
            inputs[name] = args[0].detach()
            out.register_hook(lambda g, name=name: output_grads.__setitem__(name, g.detach()))
        hooks.append(layer.register_forward_hook(keep))
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    needs = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)  # activation gradients only: no weight gradient is formed
        model.train()
        nn.functional.cross_entropy(model(x.clone().requires_grad_(True)), y).backward()
    finally:
        for hook in hooks:
            hook.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(needs[n])
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(buffers[n])
    return {name: _streamed_topk(layer, inputs[name], output_grads[name], masks[name], plan[name],
                                 rows[name]) for name, layer in layers.items()}


@torch.no_grad()
def _streamed_topk(layer: nn.Module, inp: torch.Tensor, grad_out: torch.Tensor, mask: torch.Tensor,
                   k: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    weight = layer.weight
    per_row = weight[0].numel()
    best_index = torch.zeros(0, dtype=torch.long)
    best_value = torch.zeros(0, dtype=weight.dtype)
    flat_mask = mask.flatten()
    for r0 in range(0, weight.shape[0], step):
        r1 = min(weight.shape[0], r0 + step)
        if isinstance(layer, nn.Linear):
            chunk = grad_out.reshape(-1, grad_out.shape[-1])[:, r0:r1].T @ inp.reshape(-1, inp.shape[-1])
        elif isinstance(layer, nn.Conv2d):
            chunk = torch.nn.grad.conv2d_weight(inp, (r1 - r0, *weight.shape[1:]), grad_out[:, r0:r1],
                                                layer.stride, layer.padding, layer.dilation, layer.groups)
        else:
            raise ValueError(f"streamed scoring knows Linear and Conv2d, not {type(layer).__name__}")
        offset = r0 * per_row
        flat = chunk.flatten()
        pruned = torch.nonzero(~flat_mask[offset:offset + flat.numel()]).flatten()
        index = torch.cat([best_index, pruned + offset])
        value = torch.cat([best_value, flat[pruned]])
        if len(index) > k:
            top = torch.topk(value.abs(), k, sorted=False).indices
            index, value = index[top], value[top]
        best_index, best_value = index, value
    order = torch.argsort(best_index)
    return best_index[order].numpy().astype(np.int64), best_value[order].numpy().astype(np.float32)
