"""An example fedsparse method plug-in: Federated Dropout (Caldas et al., 2018).

"Expanding the Reach of Federated Learning by Reducing Client Resource Requirements": instead
of the whole model, each round the server sends a client a random submodel that fits its
budget; the client trains it and uploads only it; the server averages each weight over the
clients that held it. Here the submodel is drawn per budget tier each round (every prunable
weight tensor keeps the same random share, biases and normalisation layers stay whole), so
download, compute, memory and upload shrink with the budget, as with ``magnitude``, but with
no bias towards large weights.

The method keeps server-side state: the generator it draws submodels with and, per weight, the
number of rounds it was in a trained submodel, so a resumed run draws what the uninterrupted run
would have drawn, and the summary reports the share of weights ever trained
(``federated_dropout.coverage``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from pydantic import Field

from fedsparse.budgets import Budget
from fedsparse.masks import Masks, layerwise_masks, prunable_weights, uniform_layer_density
from fedsparse.method import ClientTask, FitResult, Method, MethodOptions, ServerSetup
from fedsparse.training import train_local


class DropoutOptions(MethodOptions):
    redraw_every: int = Field(1, ge=1, description="rounds between fresh random submodels")


class FederatedDropout(Method):
    """Federated Dropout: each round every budget tier trains a fresh random submodel."""

    name = "federated-dropout"
    Options = DropoutOptions
    sparse_updates = True
    options: DropoutOptions

    # --- server side ----------------------------------------------------------------------------
    def setup(self, setup: ServerSetup) -> None:
        params = dict(setup.model.named_parameters())
        uniform_layer_density(params, min(b.density for b in setup.budgets))  # ValueError if too small
        self._rng = np.random.default_rng([self.run.seed, 1729])  # the plug-in's own stream
        self._sent = {n: np.zeros(params[n].numel(), dtype=np.int64) for n in prunable_weights(params)}
        self._masks: dict[float, Masks] = {}

    def begin_round(self, server_round: int) -> dict[str, Any]:
        if (server_round - 1) % self.options.redraw_every == 0:
            self._masks = {}  # fresh submodels this round
        return {}

    def client_masks(self, params: Mapping[str, torch.Tensor], budget: Budget) -> Masks | None:
        if budget.density not in self._masks:
            scores = {n: torch.from_numpy(self._rng.random(p.numel())).view(p.shape)
                      for n, p in params.items()}
            self._masks[budget.density] = layerwise_masks(params, budget.density, scores)
        return self._masks[budget.density]

    def after_aggregate(self, arrays: dict[str, np.ndarray], accepted: list[int]) -> dict[str, np.ndarray]:
        for masks in self._masks.values():
            for name, count in self._sent.items():
                count += masks[name].numpy().reshape(-1)
        return arrays

    def summary(self) -> dict[str, Any]:
        total = sum(c.size for c in self._sent.values())
        trained = sum(int((c > 0).sum()) for c in self._sent.values())
        return {"federated_dropout": {"coverage": trained / max(total, 1)}}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.bit_generator.state, "sent": self._sent, "masks": self._masks}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._rng.bit_generator.state = state["rng"]
        self._sent, self._masks = dict(state["sent"]), dict(state["masks"])

    # --- client side ----------------------------------------------------------------------------
    def fit(self, task: ClientTask) -> FitResult:
        """Masked SGD on the submodel received; uploads exactly that submodel."""
        loss, seen = train_local(task.model, task.data.x_train, task.data.y_train,
                                 self.train_settings(task),
                                 task.generator, task.masks)
        return FitResult({"train-loss": loss, "num-examples": float(len(task.data.y_train)),
                          "samples-seen": float(seen)}, task.masks)
