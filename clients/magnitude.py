"""Magnitude submodels: each client holds and trains the largest weights its budget allows.

Every round the server sends client i the layer-wise top-|w| submodel of the global model at
the client's declared density (biases and normalisation layers always kept), the client trains
only those weights and uploads only them, and the mask-aware FedAvg averages each weight over
the clients that hold it. This is the simplest budget-respecting sparse baseline (an
unstructured cousin of HeteroFL/Federated Dropout submodels): download, compute, memory and
upload all shrink with the budget.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from fedsparse.clients.dense import DenseClient

from fedsparse.budgets import Budget
from fedsparse.errors import ConfigError
from fedsparse.masks import Masks, layerwise_magnitude_masks


class MagnitudeClient(DenseClient):
    """Trains the magnitude submodel the server selected for its budget."""

    sparse_updates = True

    @classmethod
    def name(cls) -> str:
        return "magnitude"

    @staticmethod
    def server_masks(params: Mapping[str, torch.Tensor], budget: Budget) -> Masks | None:
        return layerwise_magnitude_masks(params, budget.density)

    @classmethod
    def check_budgets(cls, budgets: list[Budget], params: Mapping[str, torch.Tensor]) -> None:
        lowest = min(b.density for b in budgets)
        try:
            layerwise_magnitude_masks(params, lowest)
        except ValueError as exc:
            raise ConfigError(f"method 'magnitude': {exc}: declare a larger density") from None
