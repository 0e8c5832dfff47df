"""Clients of shared-mask sparse training: FedTiny, prune-at-init and FedDST.

All three train the mask the server sent (masked weights stay zero, only kept weights are
uploaded). In an adjustment round (the server's config names ``adjust-layers`` and their
``adjust-k``):

- a FedTiny client, after training, takes one mini-batch gradient of the scored layers and
  uploads only its top-K entries at pruned positions as (index, value) pairs;
- a FedDST client first prunes its K smallest kept weights and grows the K pruned positions of
  largest gradient per layer (new weights start at 0), then trains and uploads under its own
  new mask, so masks differ between clients.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from fedsparse.clients.dense import DenseClient, Exchange, LocalData
from flwr.app import RecordDict
from torch import nn

from fedsparse.budgets import Budget
from fedsparse.fedtiny import prune_and_grow, pruned_gradients, topk_pruned_gradients
from fedsparse.masks import Masks
from fedsparse.pruning_wire import ADJUST_MASK_RECORD, PAIRS_RECORD, encode_pairs


def adjust_plan(server_config: Mapping[str, Any]) -> dict[str, int]:
    layers = list(server_config.get("adjust-layers", []))
    ks = list(server_config.get("adjust-k", []))
    return {str(n): int(k) for n, k in zip(layers, ks, strict=True)}


def one_batch(data: LocalData, batch_size: int, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
    pick = torch.randperm(len(data.y_train), generator=generator)[:batch_size]
    return data.x_train[pick], data.y_train[pick]


class SharedMaskClient(DenseClient):
    """Trains the server's mask; subclasses add what adjustment rounds ask."""

    sparse_updates = True

    @classmethod
    def check_budgets(cls, budgets: list[Budget], params: Mapping[str, torch.Tensor]) -> None:
        """The server's ``SharedMaskServer`` checks budgets when it is built."""


class PruneAtInitClient(SharedMaskClient):
    """Fixed mask chosen by the server before training (magnitude, SNIP or random)."""

    @classmethod
    def name(cls) -> str:
        return "prune-at-init"


class FedTinyClient(SharedMaskClient):
    """FedTiny: trains the shared mask; reports top-K pruned gradients when asked."""

    @classmethod
    def name(cls) -> str:
        return "fedtiny"

    def fit(self, model: nn.Module, masks: Masks | None, data: LocalData, generator: torch.Generator,
            server_config: Mapping[str, Any], state: RecordDict,
            exchange: Exchange | None = None) -> tuple[dict[str, float], Masks | None]:
        metrics, upload = super().fit(model, masks, data, generator, server_config, state, exchange)
        plan = adjust_plan(server_config)
        if plan and exchange is not None:
            x, y = one_batch(data, self.config.train.batch_size, generator)
            grads = pruned_gradients(model, x, y, list(plan))
            pruned = self._adjust_masks(model, masks, exchange, plan)
            exchange.outbox[PAIRS_RECORD] = encode_pairs(
                {n: topk_pruned_gradients(grads[n], pruned[n], k) for n, k in plan.items()})
        return metrics, upload

    @staticmethod
    def _adjust_masks(model: nn.Module, masks: Masks | None, exchange: Exchange,
                      plan: Mapping[str, int]) -> Masks:
        """The top tier's mask of the scored layers: sent when it differs from the client's own."""
        params = dict(model.named_parameters())
        if ADJUST_MASK_RECORD in exchange.inbox.array_records:
            record = exchange.inbox[ADJUST_MASK_RECORD]
            return {n: torch.from_numpy(np.unpackbits(record[n].numpy())[:params[n].numel()]
                                        .astype(bool)).view(params[n].shape) for n in plan}
        own = masks or {}
        return {n: own.get(n, torch.ones_like(params[n], dtype=torch.bool)) for n in plan}


class FedDSTClient(SharedMaskClient):
    """FedDST: local prune-and-grow at the start of an adjustment round, then masked training."""

    @classmethod
    def name(cls) -> str:
        return "feddst"

    def fit(self, model: nn.Module, masks: Masks | None, data: LocalData, generator: torch.Generator,
            server_config: Mapping[str, Any], state: RecordDict,
            exchange: Exchange | None = None) -> tuple[dict[str, float], Masks | None]:
        plan = adjust_plan(server_config)
        if plan and masks:
            masks = self._readjust(model, dict(masks), data, generator, plan)
        return super().fit(model, masks, data, generator, server_config, state, exchange)

    def _readjust(self, model: nn.Module, masks: Masks, data: LocalData, generator: torch.Generator,
                  plan: Mapping[str, int]) -> Masks:
        x, y = one_batch(data, self.config.train.batch_size, generator)
        layers = [n for n in plan if n in masks]
        grads = pruned_gradients(model, x, y, layers)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name in layers:
                report = topk_pruned_gradients(grads[name], masks[name], plan[name])
                weight, masks[name] = prune_and_grow(params[name], masks[name], [report], plan[name])
                params[name].copy_(weight)
        return masks
