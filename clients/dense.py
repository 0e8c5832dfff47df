"""Dense reference method: train the whole shared model, deploy the global model as is."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedsparse.config import ExperimentConfig
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
    """FedAvg client: local SGD on every weight of the shared model."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config

    def fit(self, model: nn.Module, data: LocalData, generator: torch.Generator) -> dict[str, float]:
        loss = train_local(model, data.x_train, data.y_train, self.config.train, generator)
        return {"train-loss": loss, "num-examples": float(len(data.y_train))}

    def evaluate(self, model: nn.Module, data: LocalData) -> EvalResult:
        """The model this client would deploy is the global one, evaluated on its own test split."""
        return evaluate(model, data.x_test, data.y_test, self.config.eval.batch_size)
