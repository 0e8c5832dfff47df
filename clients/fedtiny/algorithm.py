"""FedTiny's algorithms (Huang et al., ICDCS 2023), plain torch and free of Flower.

- ``candidate_masks``: K coarse masks by layer-wise magnitude pruning of the warmed-up model, each
  layer's density drawn in [0.5, 1.5] x its allocated density (rho, or its ER / ERK share) and
  redrawn until the overall density of the prunable weights is within 2% of rho; the first conv
  layer, biases and norm layers never pruned.
- ``reestimate_bn`` / ``average_bn``: adaptive BN selection's statistics round (clients) and its
  sample-weighted average (server); ``mean_losses`` picks the lowest-loss candidate.
- ``candidate_bn_stats`` / ``candidate_loss_sums``: a client's side of the two ABNS rounds.

The prune-and-grow steps FedTiny shares with FedDST are in ``clients/shared_mask/pruning.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fedsparse.masks import Masks, magnitude_mask, prunable_weights
from fedsparse.seeding import rng
from fedsparse.training import reestimate_bn

DENSITY_TOLERANCE = 0.02


def candidate_masks(model: nn.Module, rho: float | Mapping[str, float], count: int, seed: int,
                    max_draws: int = 1000) -> list[Masks]:
    """``count`` coarse candidate masks over the prunable weights (see module docstring).

    ``rho``: the target density, or each prunable layer's (an ER / ERK allocation); every
    candidate draws each layer's density in [0.5, 1.5] x its own, within 2% of the overall.
    """
    params = dict(model.named_parameters())
    names = prunable_weights(params, keep_first_conv=True)
    base = np.array([rho if isinstance(rho, float | int) else rho[n] for n in names], dtype=np.float64)
    if not ((base > 0) & (base <= 1)).all():
        raise ValueError(f"target densities must be in (0, 1], got {rho}")
    sizes = np.array([params[n].numel() for n in names], dtype=np.float64)
    target = float((base * sizes).sum() / sizes.sum())
    draw = rng(seed, "candidates")
    candidates: list[Masks] = []
    for _ in range(count):
        for _draw in range(max_draws):
            densities = np.clip(base * draw.uniform(0.5, 1.5, len(names)), 0.0, 1.0)
            overall = float((densities * sizes).sum() / sizes.sum())
            if abs(overall - target) <= DENSITY_TOLERANCE * target:
                break
        else:
            raise ValueError(f"no per-layer densities within 2% of {target} after {max_draws} draws")
        candidates.append({n: magnitude_mask(params[n], max(1, round(float(d) * params[n].numel())))
                           for n, d in zip(names, densities, strict=True)})
    return candidates


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


