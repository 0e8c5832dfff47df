"""A width method with its server side set up on a small cnn-bn, and tasks as a client gets them."""

from __future__ import annotations

import torch

from fedsparse.budgets import Budget
from fedsparse.config import load_config
from fedsparse.costs import CostModel
from fedsparse.experiment import build_method
from fedsparse.method import LocalData, Method, ServerSetup
from fedsparse.models import build_model

SHAPE = (1, 12, 12)


def image_data(seed: int = 0, n: int = 64) -> LocalData:
    """A learnable 4-class task on 12x12 images (class c brightens row block c)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, *SHAPE, generator=g) * 0.5
    for c in range(4):
        x[y == c, :, 3 * c:3 * c + 3, :] += 2.0
    return LocalData(x, y, x[:0], y[:0], x[: n // 2], y[: n // 2])


def width_method(name: str, *sets: str, densities=(0.1, 0.3, 1.0),
                 server_data=None) -> tuple[Method, torch.nn.Module]:
    cfg = load_config(None, [f"method.name={name}", "model.name=cnn-bn", "train.batch_size=16",
                             "train.local_epochs=1", *sets])
    torch.manual_seed(0)
    model = build_model(cfg.model, SHAPE, 4)
    method = build_method(cfg)
    method.setup(ServerSetup(model=model, budgets=[Budget(density=d) for d in densities],
                             cost_model=CostModel(model, SHAPE), server_data=server_data))
    return method, model


def received(model: torch.nn.Module, masks) -> torch.nn.Module:
    """The model as a client rebuilds it: zeros outside the submodel it was sent."""
    import copy

    copy_ = copy.deepcopy(model)
    with torch.no_grad():
        for name, tensor in [*copy_.named_parameters(), *copy_.named_buffers()]:
            if masks and name in masks:
                tensor.mul_(masks[name].to(tensor.dtype))
    return copy_
