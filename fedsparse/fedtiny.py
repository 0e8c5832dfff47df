"""FedTiny's algorithms (Huang et al., ICDCS 2023), plain torch and free of Flower.

- ``candidate_masks``: K coarse masks by layer-wise magnitude pruning of the warmed-up model, each
  layer's density drawn in [0.5 rho, 1.5 rho] and redrawn until the overall density of the
  prunable weights is within 2% of rho; the first conv layer, biases and norm layers never pruned.
- ``reestimate_bn`` / ``average_bn``: adaptive BN selection's statistics round (clients) and its
  sample-weighted average (server); ``mean_losses`` picks the lowest-loss candidate.
- ``adjustment_fraction``: alpha_t = alpha/2 (1 + cos(pi t / T_end)), using the round number.
- ``topk_pruned_gradients``: a client's top-K gradient entries at pruned positions of one layer.
- ``prune_and_grow``: the server's step: average reported gradients (missing = 0), prune the K
  smallest active weights, grow the K largest averaged gradients, keep each layer's density.
- ``nested_masks``: one mask per budget tier, each a subset of the next larger tier's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fedsparse.masks import Masks

DENSITY_TOLERANCE = 0.02


def prunable_weights(model: nn.Module) -> list[str]:
    """Conv/linear weights, except a first conv layer (FedTiny never prunes it: it is tiny and
    every feature flows through it). An MLP's first layer holds most of its weights: it is
    pruned like the others."""
    layers = [(prefix, m) for prefix, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if layers and isinstance(layers[0][1], nn.Conv2d):
        layers = layers[1:]
    return [f"{prefix}.weight" for prefix, _ in layers]


def _magnitude_mask(weight: torch.Tensor, density: float) -> torch.Tensor:
    k = max(1, min(weight.numel(), round(density * weight.numel())))
    order = torch.sort(weight.detach().abs().flatten(), descending=True, stable=True).indices
    flat = torch.zeros(weight.numel(), dtype=torch.bool)
    flat[order[:k]] = True
    return flat.view_as(weight)


def candidate_masks(model: nn.Module, rho: float, count: int, seed: int,
                    max_draws: int = 1000) -> list[Masks]:
    """``count`` coarse candidate masks over the prunable weights (see module docstring)."""
    if not 0 < rho <= 1:
        raise ValueError(f"target density must be in (0, 1], got {rho}")
    params = dict(model.named_parameters())
    names = prunable_weights(model)
    sizes = np.array([params[n].numel() for n in names], dtype=np.float64)
    rng = np.random.default_rng([seed, 31])
    candidates: list[Masks] = []
    for _ in range(count):
        for _draw in range(max_draws):
            densities = np.clip(rng.uniform(0.5 * rho, 1.5 * rho, len(names)), 0.0, 1.0)
            overall = float((densities * sizes).sum() / sizes.sum())
            if abs(overall - rho) <= DENSITY_TOLERANCE * rho:
                break
        else:
            raise ValueError(f"no per-layer densities within 2% of {rho} after {max_draws} draws")
        candidates.append({n: _magnitude_mask(params[n], float(d))
                           for n, d in zip(names, densities, strict=True)})
    return candidates


def masks_density(masks: Mapping[str, torch.Tensor]) -> float:
    kept = sum(int(m.sum()) for m in masks.values())
    return kept / max(sum(m.numel() for m in masks.values()), 1)


def _norm_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Recompute BatchNorm running statistics from scratch with forward passes (no gradients).

    Uses a cumulative average (momentum None) so the result is the plain mean over batches.
    """
    layers = _norm_layers(model)
    saved = [(m.momentum, m.training) for _, m in layers]
    for _, m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x in batches:
        model(x)
    stats = {}
    for (name, m), (momentum, _) in zip(layers, saved, strict=True):
        stats[f"{name}.running_mean"] = m.running_mean.clone()
        stats[f"{name}.running_var"] = m.running_var.clone()
        m.momentum = momentum
    return stats


def average_bn(reports: Sequence[tuple[Mapping[str, torch.Tensor], int]]) -> dict[str, torch.Tensor]:
    """Sample-weighted average of clients' BN statistics for one candidate."""
    total = sum(n for _, n in reports)
    if total <= 0:
        raise ValueError("no samples behind the BN statistics")
    keys = reports[0][0].keys()
    return {k: sum(stats[k] * (n / total) for stats, n in reports) for k in keys}


def mean_losses(reports: Sequence[Sequence[tuple[float, int]]]) -> list[float]:
    """Per candidate, the mean loss over all clients' (loss sum, count) reports."""
    return [sum(s for s, _ in rows) / max(sum(n for _, n in rows), 1) for rows in reports]


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
    """The client's upload for one adjusted layer: at most ``k`` (flat index, gradient) pairs,
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
                   reports: Sequence[tuple[np.ndarray, np.ndarray]], k: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's server step; returns the new (weight, mask). Density is unchanged.

    Reported gradients are averaged over all reporting clients (entries a client did not send
    count as 0). The k active weights of smallest magnitude are pruned (set to 0) and the k
    pruned positions with the largest averaged gradient magnitude are grown, starting at 0.
    """
    flat_mask = mask.flatten().clone()
    flat_weight = weight.detach().flatten().clone()
    avg = torch.zeros(flat_mask.numel(), dtype=torch.float64)
    for index, values in reports:
        avg[torch.from_numpy(index)] += torch.from_numpy(values.astype(np.float64))
    avg /= max(len(reports), 1)
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


def nested_masks(weights: Mapping[str, torch.Tensor], densities: Sequence[float]) -> dict[float, Masks]:
    """One magnitude mask per tier density; a smaller tier's mask is a subset of a larger one's.

    Ranking each layer's weights once by magnitude and keeping the top share per tier makes the
    masks nested by construction.
    """
    out: dict[float, Masks] = {}
    for density in sorted(set(densities)):
        out[density] = {n: _magnitude_mask(w, density) for n, w in weights.items()}
    return out


def local_batches(x: torch.Tensor, y: torch.Tensor, count: int, batch_size: int,
                  generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Up to ``count`` seeded mini-batches of a client's training data (ABNS uses the same ones
    for the statistics and the evaluation round)."""
    order = torch.randperm(len(y), generator=generator)[:count * batch_size]
    return [(x[order[i:i + batch_size]], y[order[i:i + batch_size]])
            for i in range(0, len(order), batch_size) if len(order[i:i + batch_size]) > 1]


@torch.no_grad()
def _load_candidate(model: nn.Module, weights: Mapping[str, torch.Tensor], masks: Masks) -> None:
    model.load_state_dict(weights, strict=True)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].dtype))


def candidate_bn_stats(model: nn.Module, candidates: Sequence[Masks],
                       batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
                       ) -> list[dict[str, torch.Tensor]]:
    """ABNS round A on a client: every candidate's BN statistics over the local batches."""
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    out = []
    for masks in candidates:
        _load_candidate(model, weights, masks)
        out.append(reestimate_bn(model, [x for x, _ in batches]))
    model.load_state_dict(weights)
    return out


@torch.no_grad()
def candidate_loss_sums(model: nn.Module, candidates: Sequence[Masks],
                        stats: Sequence[Mapping[str, torch.Tensor]],
                        batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """ABNS round B on a client: each candidate's summed loss with the averaged BN statistics."""
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    sums = []
    for masks, bn in zip(candidates, stats, strict=True):
        _load_candidate(model, {**weights, **bn}, masks)
        model.eval()
        sums.append(sum(float(nn.functional.cross_entropy(model(x), y, reduction="sum"))
                        for x, y in batches))
    model.load_state_dict(weights)
    return sums


def pruned_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Dense gradients of ``layers`` on one mini-batch at the current (masked) weights; only
    these layers' gradients are kept (a device materialises only the scored unit's)."""
    params = dict(model.named_parameters())
    model.train()
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    grads = {n: params[n].grad.detach().clone() for n in layers}
    model.zero_grad(set_to_none=True)
    return grads
