"""FedAvg-FT: FedAvg training; each client fine-tunes the global model before evaluating it.

The baseline pFedGate's paper compares against: personalization by local fine-tuning
(``method.finetune_epochs`` epochs, 1 by default) of the received global model.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from fedsparse.clients.dense import DenseClient, LocalData
from flwr.app import RecordDict
from torch import nn

from fedsparse.masks import Masks
from fedsparse.training import train_local


class FedAvgFTClient(DenseClient):
    """Dense training; evaluation after local fine-tuning of a copy of the global model."""

    @classmethod
    def name(cls) -> str:
        return "fedavg-ft"

    def evaluate(self, model: nn.Module, masks: Masks | None, data: LocalData,
                 generator: torch.Generator, server_config: Mapping[str, Any],
                 state: RecordDict) -> dict[str, float]:
        tuned = copy.deepcopy(model)
        train_cfg = self.config.train.model_copy(update={"local_epochs": self.config.method.finetune_epochs})
        train_local(tuned, data.x_train, data.y_train, train_cfg, generator, masks)
        return super().evaluate(tuned, masks, data, generator, server_config, state)
