"""The shared-mask family's method base: masked training of one server-held mask.

FedTiny, prune-at-init and FedDST share it: the server (``SharedMaskServer``) holds the mask of
the largest tier, each tier trains a nested subset of it, and the method decides when and how
the mask changes (``adjust``). Subclasses add what their adjustment rounds do on the client.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fedsparse.budgets import Budget
from fedsparse.clients.shared_mask.filter_server import FilterMaskServer
from fedsparse.clients.shared_mask.filters import keep_by_importance, random_keep
from fedsparse.clients.shared_mask.options import PruningOptions, Schedule
from fedsparse.clients.shared_mask.pruning import (
    layer_densities,
    magnitude_masks,
    random_masks,
    snip_masks,
)
from fedsparse.clients.shared_mask.server import AdjustMode, SharedMaskServer
from fedsparse.costs import TrainingCost
from fedsparse.masks import Masks, prunable_weights
from fedsparse.method import (
    Ask,
    ClientTask,
    CostContext,
    FitResult,
    LocalData,
    Method,
    RunInfo,
    ServerSetup,
    split_scores,
)
from fedsparse.structured import ChannelGraph, UnsupportedModel
from fedsparse.training import evaluate, train_local


def adjust_plan(config: Mapping[str, Any]) -> dict[str, int]:
    """This round's adjustment (layer -> K) from the round config; empty when none."""
    layers = list(config.get("adjust-layers", []))
    ks = list(config.get("adjust-k", []))
    return {str(n): int(k) for n, k in zip(layers, ks, strict=True)}


def one_batch(data: LocalData, batch_size: int, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
    pick = torch.randperm(len(data.y_train), generator=generator)[:batch_size]
    return data.x_train[pick], data.y_train[pick]


class SharedMask(Method):
    """Base of the shared-mask family (not a method by itself)."""

    Options = PruningOptions
    options_key = "pruning"
    sparse_updates = True
    #: how the mask changes after the first one
    adjust: ClassVar[AdjustMode] = "fixed"
    #: what ``preset: authors`` sets (None: the method has no authors' schedule beyond the defaults)
    authors: ClassVar[Schedule | None] = None
    options: PruningOptions

    def __init__(self, options: PruningOptions, run: RunInfo) -> None:
        if options.preset == "authors" and self.authors is not None:
            options = self.authors.apply(options, run.rounds)
        super().__init__(options, run)
        self.server: SharedMaskServer | FilterMaskServer | None = None
        self._graph: ChannelGraph | None = None
        self._model: nn.Module | None = None
        self._server_data: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def uses_server_data(cls, options: PruningOptions) -> bool:  # type: ignore[override]
        return options.criterion == "snip"

    @classmethod
    def default_warmup_epochs(cls, options: PruningOptions) -> int:  # type: ignore[override]
        """The FedTiny family warms the dense model up before choosing its first mask (so a
        magnitude mask ranks trained weights, not the initialisation)."""
        return options.warmup_epochs

    # --- server side ------------------------------------------------------------------------
    def setup(self, setup: ServerSetup) -> None:
        """Build the mask server; budgets it cannot serve fail here, before anything starts."""
        model = setup.model
        if self.filters:
            self.server = self._filter_server(setup)
            self._model = copy.deepcopy(model)
            self._server_data = setup.server_data
            return
        self.server = SharedMaskServer(
            self.adjust, self.options, prunable_weights(dict(model.named_parameters()), True),
            {n: tuple(p.shape) for n, p in model.named_parameters()}, setup.budgets,
            setup.cost_model, self.run.train.momentum > 0, self.options.end_round(self.run.rounds))
        self.server.batch_size = self.run.train.batch_size
        self._model = copy.deepcopy(model)
        self._server_data = setup.server_data

    @property
    def filters(self) -> bool:
        """Whole channels are pruned and grown (``granularity: filter``)."""
        return self.options.granularity == "filter"

    def _filter_server(self, setup: ServerSetup) -> FilterMaskServer:
        if self.options.criterion == "snip" and self.adjust == "fixed":
            raise ValueError("SNIP ranks single weights: with method.pruning.granularity filter "
                             "use criterion magnitude or random")
        try:
            server = FilterMaskServer(
                self.adjust, self.options, setup.model, setup.cost_model.input_shape,
                setup.budgets, self.run.train.momentum > 0, self.options.end_round(self.run.rounds),
                self.options.every(self.run.rounds), self.run.seed)
        except UnsupportedModel as exc:
            raise ValueError(f"{exc}: granularity filter needs a model of Conv2d / Linear / "
                             "BatchNorm layers") from None
        server.batch_size = self.run.train.batch_size
        return server

    def channel_graph(self, model: nn.Module, input_shape: tuple[int, ...]) -> ChannelGraph:
        """The model's channel spaces (traced once per process)."""
        if self._graph is None:
            self._graph = ChannelGraph.trace(model, input_shape)
        return self._graph

    @property
    def mask_server(self) -> SharedMaskServer | FilterMaskServer:
        if self.server is None:
            raise RuntimeError("setup() has not run")
        return self.server

    def start(self, state: dict[str, np.ndarray], ask: Ask) -> dict[str, np.ndarray]:
        """Choose the first shared mask; the server's ``info`` records how."""
        server = self.mask_server
        model = self._model
        assert model is not None
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        rho = server.top_density
        server.info = {"granularity": server.granularity, "prunable_density": rho}
        if rho >= 1.0:
            masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()
                     if n in server.prunable}
        else:
            masks = self.first_masks(model, rho, ask)
        server.set_masks(masks)
        server.info["density_of_prunable"] = float(
            sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values()))
        return server.apply({k: v.detach().numpy() for k, v in model.state_dict().items()})

    def first_masks(self, model: nn.Module, rho: float, ask: Ask) -> Masks:
        """The first mask by ``criterion`` (magnitude, SNIP on the server's set, random)."""
        server = self.mask_server
        criterion = self.options.criterion
        server.info["criterion"] = criterion
        if isinstance(server, FilterMaskServer):
            keep = (random_keep(server.graph, server.uniform, self.run.seed) if criterion == "random"
                    else keep_by_importance(server.graph, model.state_dict(), server.uniform))
            return server.graph.masks(keep, server.prunable)
        params = dict(model.named_parameters())
        weights = {n: params[n].detach() for n in server.prunable}
        if criterion == "snip":  # SNIP ranks all weights together: its own allocation
            x, y = self.server_data()
            return snip_masks(model, server.prunable, x, y, rho)
        densities = self.allocate(weights, rho)
        if criterion == "random":
            return random_masks(weights, densities, self.run.seed)
        return magnitude_masks(weights, densities)

    def allocate(self, weights: Mapping[str, torch.Tensor], rho: float) -> dict[str, float]:
        """Each prunable layer's density at overall ``rho`` (``allocation``), in the summary."""
        densities = layer_densities({n: tuple(w.shape) for n, w in weights.items()}, rho,
                                    self.options.allocation)
        self.mask_server.info["allocation"] = self.options.allocation
        self.mask_server.info["layer_densities"] = {n: round(d, 5) for n, d in densities.items()}
        return densities

    def server_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._server_data is None:
            raise RuntimeError(f"method '{self.name}' needs the server's data set")
        return self._server_data

    def begin_round(self, server_round: int) -> dict[str, Any]:
        self.mask_server.plan_round(server_round)
        return self.mask_server.train_config()

    def client_masks(self, params: Mapping[str, torch.Tensor], budget: Budget) -> Masks | None:
        return self.mask_server.masks_for(params, budget)

    def round_cost(self, budget: Budget, computed: TrainingCost, density: float,
                   metrics: Mapping[str, float], context: CostContext | None = None
                   ) -> tuple[TrainingCost, float]:
        """Masked training plus, in adjustment rounds, the extra mini-batch, the scored unit's
        dense gradient and the K pairs (or FedDST's local prune-and-grow)."""
        server = self.mask_server
        if isinstance(server, FilterMaskServer) and context is not None:
            computed = server.training_cost(budget.density,
                                            context.local_epochs * context.num_examples,
                                            context.batch_size)
        return TrainingCost(computed.flops + server.extra_flops(budget),
                            computed.memory_bytes + server.extra_memory(budget),
                            computed.activation_bytes), density

    def after_aggregate(self, arrays: dict[str, np.ndarray],
                        accepted: list[int]) -> dict[str, np.ndarray]:
        return self.mask_server.after_aggregate(dict(arrays), [])

    def evaluation_protocol(self) -> str:
        if self.filters:
            return ("the client's tier of the shared channel mask, as received, sliced to a "
                    "narrower network")
        return "the global model under the client's tier of the shared mask, as received"

    def summary(self) -> dict[str, Any]:
        server = self.mask_server
        return {"pruning": {**server.info, "adjustments": server.adjustments,
                            "adjust_every": server.adjust_every,
                            "adjust_until": server.adjust_until, "alpha": self.options.initial_alpha,
                            "history": server.history}}

    def state_dict(self) -> dict[str, Any]:
        return self.mask_server.state()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.mask_server.restore(state)

    # --- client side ------------------------------------------------------------------------
    def fit(self, task: ClientTask) -> FitResult:
        """Train the mask the server sent: masked weights stay zero, only kept ones are uploaded.
        At filter level the kept channels are trained as an ordinary narrower network."""
        if self.filters:
            return self._fit_sliced(task)
        loss, seen = self.train(task)
        return FitResult({"train-loss": loss, "num-examples": float(len(task.data.y_train)),
                          "samples-seen": float(seen)}, task.masks)

    def _fit_sliced(self, task: ClientTask) -> FitResult:
        graph = self.channel_graph(task.model, tuple(task.data.x_train.shape[1:]))
        keep = graph.keep_of(task.masks)
        small = graph.sliced_module(task.model, keep)
        loss, seen = train_local(small, task.data.x_train, task.data.y_train,
                                 self.train_settings(task), task.generator,
                                 proximal_mu=float(task.config.get("proximal-mu", 0.0)))
        graph.scatter(task.model.state_dict(), small.state_dict(), keep)
        upload = graph.masks(keep) if task.masks else None
        return FitResult({"train-loss": loss, "num-examples": float(len(task.data.y_train)),
                          "samples-seen": float(seen)}, upload)

    def evaluate(self, task: ClientTask) -> dict[str, float]:
        """The client's tier as received (at filter level, sliced: the same function, less work)."""
        model = task.model
        if self.filters and task.masks:
            graph = self.channel_graph(task.model, tuple(task.data.x_test.shape[1:]))
            model = graph.sliced_module(task.model, graph.keep_of(task.masks))
        size = self.run.eval_batch_size
        return split_scores(lambda x, y: evaluate(model, x, y, size), task.data)

    def train(self, task: ClientTask, penalty: Callable[[], torch.Tensor] | None = None
              ) -> tuple[float, int]:
        """The round's masked local training (``penalty`` added to every batch's objective);
        (mean loss, samples seen)."""
        return train_local(task.model, task.data.x_train, task.data.y_train,
                           self.train_settings(task), task.generator, task.masks,
                           proximal_mu=float(task.config.get("proximal-mu", 0.0)),
                           penalty=penalty)
