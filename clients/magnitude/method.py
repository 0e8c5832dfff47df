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

from fedsparse.budgets import Budget
from fedsparse.clients.dense import Dense
from fedsparse.masks import Masks, layerwise_magnitude_masks
from fedsparse.method import Method, ServerSetup


class Magnitude(Dense):
    """Each client trains the layer-wise largest weights of the global model at its density."""

    name = "magnitude"
    sparse_updates = True
    compare_with = Method.compare_with
    full_model_only = False

    def setup(self, setup: ServerSetup) -> None:
        lowest = min(b.density for b in setup.budgets)
        try:
            layerwise_magnitude_masks(dict(setup.model.named_parameters()), lowest)
        except ValueError as exc:
            raise ValueError(f"{exc}: declare a larger density") from None

    def evaluation_protocol(self) -> str:
        return "the client's magnitude submodel of the global model, as received"

    def client_masks(self, params: Mapping[str, torch.Tensor], budget: Budget) -> Masks | None:
        return layerwise_magnitude_masks(params, budget.density)
