"""Mask algebra: one boolean mask per parameter tensor (plain torch, no Flower).

A ``Masks`` mapping holds masks for parameters only; a parameter without an entry is dense.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

Masks = dict[str, torch.Tensor]


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero every masked-out weight in place."""
    for name, param in model.named_parameters():
        if name in masks:
            param.mul_(masks[name].to(param.dtype))


def mask_gradients(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero gradients at masked-out positions so the optimizer never updates them."""
    for name, param in model.named_parameters():
        if name in masks and param.grad is not None:
            param.grad.mul_(masks[name].to(param.grad.dtype))


def prunable_weights(params: Mapping[str, torch.Tensor], keep_first_conv: bool = False) -> list[str]:
    """The weights sparse methods may prune: conv and linear weights (2-D and up), never biases
    or normalisation parameters. ``keep_first_conv``: a first conv layer stays dense too (FedTiny
    never prunes it: it is tiny and every feature flows through it); an MLP's first layer holds
    most of its weights and is pruned like the others."""
    names = [n for n, t in params.items() if t.dim() >= 2 and n.endswith("weight")]
    if keep_first_conv and names and params[names[0]].dim() == 4:
        names = names[1:]
    return names


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` highest scores as a boolean mask; ties go to the lower position (stable)."""
    flat = torch.zeros(scores.numel(), dtype=torch.bool)
    k = max(0, min(k, scores.numel()))
    if k:
        order = torch.sort(scores.detach().flatten(), descending=True, stable=True).indices
        flat[order[:k]] = True
    return flat.view_as(scores)


def magnitude_mask(weight: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` largest-magnitude weights."""
    return top_k_mask(weight.detach().abs(), k)


def pack_mask(mask: torch.Tensor | np.ndarray) -> np.ndarray:
    """1 bit per coordinate (numpy's "big" bit order, row-major), ceil(n/8) bytes."""
    array = mask.numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    return np.packbits(array.reshape(-1).astype(bool))


def unpack_mask(bits: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``pack_mask`` for a tensor of ``shape``."""
    numel = math.prod(shape)
    return torch.from_numpy(np.unpackbits(np.asarray(bits, dtype=np.uint8))[:numel].astype(bool)
                            ).view(shape)


def uniform_layer_density(params: Mapping[str, torch.Tensor], density: float) -> float:
    """The density every prunable weight tensor gets so that the *overall* density is at most
    ``density`` when biases and normalisation parameters are kept whole: (d * total - fixed) /
    prunable. Raises ``ValueError`` when the fixed tensors alone exceed the budget."""
    prunable = set(prunable_weights(params))
    fixed = sum(t.numel() for n, t in params.items() if n not in prunable)
    total = sum(t.numel() for t in params.values())
    allowed = int(density * total + 1e-9)
    if allowed < fixed:
        raise ValueError(f"density {density:g} allows {allowed} parameters but biases and norm "
                         f"layers alone need {fixed}")
    return min(1.0, (allowed - fixed) / max(total - fixed, 1))


def layerwise_masks(params: Mapping[str, torch.Tensor], density: float,
                    scores: Mapping[str, torch.Tensor]) -> Masks:
    """Per prunable tensor, the ``uniform_layer_density`` share of highest ``scores``; the other
    tensors whole. Ties are broken by position, so the result is deterministic."""
    layer_density = uniform_layer_density(params, density)
    prunable = set(prunable_weights(params))
    return {name: top_k_mask(scores[name], int(layer_density * tensor.numel())) if name in prunable
            else torch.ones_like(tensor, dtype=torch.bool) for name, tensor in params.items()}


def layerwise_magnitude_masks(params: Mapping[str, torch.Tensor], density: float) -> Masks:
    """Keep the largest-magnitude weights so that the *overall* density is at most ``density``
    (biases and normalisation parameters whole, every prunable tensor at one density)."""
    return layerwise_masks(params, density, {n: t.detach().abs() for n, t in params.items()})
