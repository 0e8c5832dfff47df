"""Dense reference method: train the whole shared model, deploy the global model as is."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedsparse.budgets import Budget
from fedsparse.config import ExperimentConfig
from fedsparse.errors import ConfigError
from fedsparse.masks import Masks
from fedsparse.training import EvalResult, evaluate, train_local


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
    """FedAvg client: local SGD on every weight it holds (all of them, for this method)."""

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
            raise ConfigError(f"method 'dense' trains every weight but {len(low)} clients declare "
                              f"density {min(low):g}: declare density 1 or use --method magnitude")

    def fit(self, model: nn.Module, masks: Masks | None, data: LocalData,
            generator: torch.Generator, server_config: Mapping[str, Any]) -> dict[str, float]:
        """Local training; honours FedProx's ``proximal-mu`` when the strategy sends it."""
        mu = float(server_config.get("proximal-mu", 0.0))
        loss, seen = train_local(model, data.x_train, data.y_train, self.config.train, generator,
                                 masks, proximal_mu=mu)
        return {"train-loss": loss, "num-examples": float(len(data.y_train)),
                "samples-seen": float(seen)}

    def evaluate(self, model: nn.Module, data: LocalData) -> EvalResult:
        """The deployed model (what the server sent) on the client's own test split."""
        return evaluate(model, data.x_test, data.y_test, self.config.eval.batch_size)
