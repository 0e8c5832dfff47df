"""Building a method and a client task the way the Flower layer does, without Flower."""

from __future__ import annotations

from typing import Any

import torch

from fedsparse.config import load_config
from fedsparse.experiment import build_method
from fedsparse.method import ClientTask, LocalData, Method
from fedsparse.models import build_model


def make_data(seed: int = 0, n: int = 96) -> LocalData:
    """A learnable 4-class task on 12 features (class c lights up feature c)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 12, generator=g) + torch.nn.functional.one_hot(y, 12).float() * 3
    return LocalData(x, y, x[:0], y[:0], x[: n // 3], y[: n // 3])


def make_method(name: str, *sets: str) -> tuple[Method, torch.nn.Module]:
    """The method ``name`` configured by ``--set`` items, and a seeded model for 12 -> 4."""
    cfg = load_config(None, [f"method.name={name}", *sets])
    torch.manual_seed(0)
    return build_method(cfg), build_model(cfg.model, (12,), 4)


def make_task(model: torch.nn.Module, data: LocalData, density: float = 1.0, seed: int = 0,
              partition_id: int = 0, masks: Any = None, state: Any = None, inbox: Any = None,
              **config: Any) -> ClientTask:
    return ClientTask(model=model, masks=masks, data=data,
                      generator=torch.Generator().manual_seed(seed), partition_id=partition_id,
                      server_round=int(config.get("server-round", 1)), budget_density=density,
                      config={"server-round": 1, "budget-density": density, **config},
                      inbox=inbox if inbox is not None else {},
                      state=state if state is not None else {})
