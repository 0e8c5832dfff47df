"""Dense reference method: train the whole shared model, deploy the global model as is."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import RecordDict
from torch import nn

from fedsparse.budgets import Budget
from fedsparse.config import ExperimentConfig
from fedsparse.errors import ConfigError
from fedsparse.masks import Masks
from fedsparse.training import evaluate, train_local


@dataclass(frozen=True)
class Exchange:
    """Records beyond the model: what the server's message carried (``inbox``) and what a
    method adds to its reply (``outbox``, e.g. FedTiny's top-K gradient pairs)."""

    inbox: RecordDict
    outbox: RecordDict = field(default_factory=RecordDict)


@dataclass(frozen=True)
class LocalData:
    """One client's tensors; ``val`` may be empty."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


class DenseClient:
    """FedAvg client: local SGD on every weight it holds (all of them, for this method).

    The method interface every client method implements:
    ``fit`` trains and returns (metrics, masks of what to upload), ``evaluate`` scores the model
    the client would deploy. ``state`` is the node's private, persistent Flower RecordDict.
    """

    #: True when the client, not the server, measures FLOPs, memory and compute density
    reported_costs = False
    #: True when uploads may be sparse (then the strategy must be mask-aware)
    sparse_updates = False

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config

    @staticmethod
    def server_masks(params: Mapping[str, torch.Tensor], budget: Budget) -> Masks | None:
        """The submodel a client with ``budget`` receives; the dense method sends everything."""
        return None

    @classmethod
    def check_budgets(cls, budgets: list[Budget], params: Mapping[str, torch.Tensor]) -> None:
        low = [b.density for b in budgets if b.density < 1.0]
        if low:
            raise ConfigError(f"method '{cls.name()}' trains every weight but {len(low)} clients "
                              f"declare density {min(low):g}: declare density 1 or use a sparse "
                              "method (magnitude, pfedgate, fedtiny, prune-at-init, feddst)")

    @classmethod
    def name(cls) -> str:
        return "dense"

    def fit(self, model: nn.Module, masks: Masks | None, data: LocalData, generator: torch.Generator,
            server_config: Mapping[str, Any], state: RecordDict,
            exchange: Exchange | None = None) -> tuple[dict[str, float], Masks | None]:
        """Local training; honours FedProx's ``proximal-mu`` when the strategy sends it."""
        mu = float(server_config.get("proximal-mu", 0.0))
        loss, seen = train_local(model, data.x_train, data.y_train, self.config.train, generator,
                                 masks, proximal_mu=mu)
        return {"train-loss": loss, "num-examples": float(len(data.y_train)),
                "samples-seen": float(seen)}, masks

    def evaluate(self, model: nn.Module, masks: Masks | None, data: LocalData,
                 generator: torch.Generator, server_config: Mapping[str, Any],
                 state: RecordDict) -> dict[str, float]:
        """The deployed model (what the server sent) on the client's own test split."""
        result = evaluate(model, data.x_test, data.y_test, self.config.eval.batch_size)
        return {"accuracy": result.accuracy, "loss": result.loss,
                "num-examples": float(result.num_examples)}
