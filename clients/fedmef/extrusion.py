"""FedMef's budget-aware extrusion (Huang et al., CVPR 2024), plain torch.

Before the server prunes the K smallest kept weights of a layer, the clients train with an extra
penalty lambda * ||w_low||_2 on exactly those K weights (the lowest-magnitude kept ones when the
round starts, as the authors' default fixes them), so what they carry moves into the weights
that stay and pruning them costs less. The norm is the plain L2 norm, not its square, as in the
authors' code: the pull on the group has the same size however small it gets, so it reaches 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from fedsparse.masks import Masks


def extrusion_targets(params: Mapping[str, torch.Tensor], masks: Masks | None,
                      plan: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """Per adjusted layer, the flat positions of its ``plan[layer]`` smallest kept weights."""
    out: dict[str, torch.Tensor] = {}
    for name, k in plan.items():
        weight = params[name].detach().reshape(-1)
        kept = (masks[name].reshape(-1) if masks and name in masks
                else torch.ones_like(weight, dtype=torch.bool)).nonzero().squeeze(1)
        count = min(int(k), len(kept))
        if count:
            lowest = weight[kept].abs().topk(count, largest=False, sorted=False).indices
            out[name] = kept[lowest]
    return out


def extrusion_penalty(params: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                      strength: float) -> Callable[[], torch.Tensor] | None:
    """``strength`` x the sum over layers of the L2 norm of the targeted weights (None: nothing
    to extrude)."""
    if strength <= 0 or not targets:
        return None

    def penalty() -> torch.Tensor:
        return strength * sum(torch.linalg.vector_norm(params[n].reshape(-1)[idx])
                              for n, idx in targets.items())
    return penalty
