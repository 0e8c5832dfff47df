"""Width-based submodels: the shared base of HeteroFL, FjORD and FedRolex.

A client of width ratio r holds, per channel space of the model, ceil(r * C) output channels
(Conv2d filters, Linear neurons) with the matching input channels of the next layer, its
BatchNorm features and residual shortcuts (``fedsparse.structured``). Which channels is the
method's choice (``keep``). The client trains that submodel *sliced*, as an ordinary smaller
network, so its time, memory and FLOPs really fall, and uploads exactly its coordinates; the
mask-aware FedAvg averages every coordinate over the clients that hold it (HeteroFL's rule).

Width from budget: the largest r whose submodel holds at most the declared density of the
weights (for chained layers density ~ r^2; the input and output layers are sliced on one side
only), found by bisection on the real counts, so the density limit is never exceeded.

Costs: the server knows every client's widths, so it counts FLOPs, memory and activations on
the sliced network it assigned (a ``CostModel`` of that network), not from the client's word.

BatchNorm (``bn``): ``tracked`` (default) keeps running statistics during local training and
averages them per channel over the clients that hold the channel, like FedAvg's BN, so
the global model is scored with them; ``static`` is HeteroFL's static BN: statistics are not
uploaded, every client recomputes them on its own training data at its own width before it
scores, and the server recomputes the full-width global model's on its held-back set.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from fedsparse.budgets import Budget
from fedsparse.costs import CostModel, TrainingCost
from fedsparse.masks import Masks
from fedsparse.method import (
    ClientTask,
    CostContext,
    FitResult,
    LocalData,
    Method,
    MethodOptions,
    ServerSetup,
    split_scores,
)
from fedsparse.structured import ChannelGraph, Keep, add_width_scaler
from fedsparse.training import evaluate, reestimate_bn, train_local

STAT_SUFFIXES = (".running_mean", ".running_var")


class WidthOptions(MethodOptions):
    """Options every width method shares."""

    bn: Literal["tracked", "static"] = Field(
        "tracked", description="BatchNorm statistics: tracked and averaged per channel, or "
                               "HeteroFL's static BN (recomputed per width before scoring)")


class ScaledWidthOptions(WidthOptions):
    """HeteroFL's and FedRolex's options."""

    scaler: bool = Field(False, description="HeteroFL's scaler: hidden outputs divided by the "
                                            "width ratio (off: on Fashion-MNIST it cost HeteroFL "
                                            "7 points with tracked BN)")


class WidthMethod(Method):
    """Base of the width methods; a subclass says which channels a ratio keeps (``keep``)."""

    Options = ScaledWidthOptions
    sparse_updates = True
    #: which channels a client holds, in words (``summary.json``'s evaluation protocol)
    which_channels = "the first channels"

    def __init__(self, options: Any, run: Any) -> None:
        super().__init__(options, run)
        self._graph: ChannelGraph | None = None
        self._params: list[str] = []
        self._ratios: dict[float, float] = {}
        self._round = 1
        self._model: nn.Module | None = None
        self._costs: dict[float, CostModel] = {}
        self._server_data: tuple[torch.Tensor, torch.Tensor] | None = None
        self._densities: list[float] = []

    @classmethod
    def uses_server_data(cls, options: Any) -> bool:
        return options.bn == "static"

    # --- shared by both sides -------------------------------------------------------------------
    def graph(self, model: nn.Module, input_shape: tuple[int, ...]) -> ChannelGraph:
        """The model's channel spaces (traced once per process)."""
        if self._graph is None:
            self._graph = ChannelGraph.trace(model, input_shape)
            self._params = [n for n, _ in model.named_parameters()]
        return self._graph

    def ratio(self, density: float) -> float:
        """The largest width ratio whose submodel holds at most ``density`` of the weights."""
        if density >= 1.0:
            return 1.0
        if density not in self._ratios:
            graph = self._graph
            assert graph is not None
            low, high = 0.0, 1.0
            for _ in range(40):
                mid = (low + high) / 2
                if graph.density(graph.prefix(mid), self._params) <= density + 1e-12:
                    low = mid
                else:
                    high = mid
            if graph.density(graph.prefix(low), self._params) > density + 1e-12:
                raise ValueError(f"density {density:g} is below the narrowest submodel (one "
                                 "channel per layer)")
            self._ratios[density] = low
        return self._ratios[density]

    def keep(self, ratio: float, server_round: int) -> Keep:
        """The channels a client of width ``ratio`` holds in ``server_round``."""
        assert self._graph is not None
        return self._graph.prefix(ratio)

    # --- server side ----------------------------------------------------------------------------
    def setup(self, setup: ServerSetup) -> None:
        try:
            self.graph(setup.model, setup.cost_model.input_shape)
            self._densities = sorted({b.density for b in setup.budgets})
            for density in self._densities:
                self.ratio(density)
        except ValueError as exc:
            raise ValueError(f"{exc}: use a model of Conv2d / Linear / BatchNorm layers, or "
                             "declare a larger density") from None
        if self.options.bn == "static" and setup.server_data is None:
            raise ValueError(f"static BN needs the server's held-back set: set "
                             f"partition.server_set true or method.{self.section()}.bn tracked")
        self._model = copy.deepcopy(setup.model)  # after_aggregate loads states into it
        self._server_data = setup.server_data

    def begin_round(self, server_round: int) -> dict[str, Any]:
        self._round = server_round
        return {}

    def client_masks(self, params: Mapping[str, torch.Tensor], budget: Budget) -> Masks | None:
        """The client's channels: its weights and BatchNorm statistics (sent and uploaded)."""
        ratio = self.ratio(budget.density)
        if ratio >= 1.0 and self.full_width_is_whole():
            return None
        assert self._graph is not None
        return self._graph.masks(self.keep(ratio, self._round))

    def full_width_is_whole(self) -> bool:
        return True

    def round_cost(self, budget: Budget, computed: TrainingCost, density: float,
                   metrics: Mapping[str, float], context: CostContext | None = None
                   ) -> tuple[TrainingCost, float]:
        """Counted on the sliced network the server assigned: FLOPs, weights and activations."""
        if context is None:
            return computed, density
        cost = self.cost_model(self.ratio(budget.density))
        samples = context.local_epochs * context.num_examples
        return cost.training_cost(cost.dense_counts(), samples, context.batch_size,
                                  context.momentum), density

    def cost_model(self, ratio: float) -> CostModel:
        """The cost model of the network a ratio assigns (counts do not depend on which
        channels, only on how many)."""
        if ratio not in self._costs:
            assert self._graph is not None and self._model is not None
            small = self._graph.sliced_module(self._model, self._graph.prefix(ratio))
            self._costs[ratio] = CostModel(small, self._graph.input_shape)
        return self._costs[ratio]

    def after_aggregate(self, arrays: dict[str, np.ndarray],
                        accepted: list[int]) -> dict[str, np.ndarray]:
        """Static BN: the global model's full-width statistics, from the server's own set."""
        if self.options.bn != "static" or self._server_data is None or self._model is None:
            return arrays
        model = self._model
        state = {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
        model.load_state_dict(state)
        x, _ = self._server_data
        size = self.run.eval_batch_size
        stats = reestimate_bn(model, [x[i:i + size] for i in range(0, len(x), size)])
        return {**arrays, **{k: v.numpy().astype(arrays[k].dtype) for k, v in stats.items()}}

    def server_scores(self, model: nn.Module, data: LocalData, budget: Budget) -> dict[str, float]:
        """The global model at every declared width up to the client's own (its channels of
        the final round, its BatchNorm statistics recomputed on its training data under static
        BN), scored on the client's test split: ``width-<density>-accuracy``."""
        assert self._graph is not None
        scores = {}
        for density in self._ratios_up_to(budget.density):
            ratio = self.ratio(density)
            small = self._graph.sliced_module(model, self.keep(ratio, self._round))
            self.scale(small, self._graph, ratio)
            if self.options.bn == "static":
                x, size = data.x_train, self.run.eval_batch_size
                reestimate_bn(small, [x[i:i + size] for i in range(0, len(x), size)])
            result = evaluate(small, data.x_test, data.y_test, self.run.eval_batch_size)
            scores[f"width-{density:g}-accuracy"] = result.accuracy
        return scores

    def _ratios_up_to(self, density: float) -> list[float]:
        """The declared densities a client of ``density`` could hold (the run's tiers)."""
        return sorted(d for d in self._densities if d <= density + 1e-12)

    def evaluation_protocol(self) -> str:
        stats = ("BatchNorm statistics recomputed on its own training data"
                 if self.options.bn == "static" else "the averaged BatchNorm statistics")
        return (f"the client's width submodel ({self.which_channels}) of the global model, as "
                f"received, with {stats}")

    def summary(self) -> dict[str, Any]:
        return {"width": {"ratios": {f"{d:g}": r for d, r in sorted(self._ratios.items())},
                          "bn": self.options.bn,
                          "scaler": self.scaled()}}

    # --- client side ----------------------------------------------------------------------------
    def client_submodel(self, task: ClientTask) -> tuple[ChannelGraph, Keep, nn.Module, float]:
        """The submodel the client was sent, sliced out of the received model."""
        graph = self.graph(task.model, tuple(task.data.x_train.shape[1:]))
        keep = graph.keep_of(task.masks)
        return graph, keep, graph.sliced_module(task.model, keep), self.ratio(task.budget_density)

    def fit(self, task: ClientTask) -> FitResult:
        graph, keep, small, ratio = self.client_submodel(task)
        hooks = self.scale(small, graph, ratio)
        loss, seen = self.train(small, task, graph, ratio)
        for hook in hooks:
            hook.remove()
        graph.scatter(task.model.state_dict(), small.state_dict(), keep)
        return FitResult({"train-loss": loss, "num-examples": float(len(task.data.y_train)),
                          "samples-seen": float(seen)}, self.upload(graph, keep))

    def train(self, small: nn.Module, task: ClientTask, graph: ChannelGraph,
              ratio: float) -> tuple[float, int]:
        """Local training of the sliced submodel (HeteroFL, FedRolex: plain SGD)."""
        return train_local(small, task.data.x_train, task.data.y_train, self.train_settings(task),
                           task.generator, proximal_mu=float(task.config.get("proximal-mu", 0.0)))

    def scaled(self) -> bool:
        return bool(getattr(self.options, "scaler", False))

    def scale(self, small: nn.Module, graph: ChannelGraph, ratio: float) -> list:
        """HeteroFL's scaler on the sliced network, in training and scoring alike."""
        return add_width_scaler(small, graph, ratio) if self.scaled() else []

    def upload(self, graph: ChannelGraph, keep: Keep) -> Masks | None:
        """The coordinates the client holds (no BatchNorm statistics under static BN)."""
        masks = graph.masks(keep)
        if self.options.bn == "static":
            masks = {n: (torch.zeros_like(m) if n.endswith(STAT_SUFFIXES) else m)
                     for n, m in masks.items()}
        elif all(bool(m.all()) for m in masks.values()):
            return None
        return masks

    def evaluate(self, task: ClientTask) -> dict[str, float]:
        """The client's width submodel, sliced (static BN: statistics recomputed at its width)."""
        graph, _, small, ratio = self.client_submodel(task)
        self.scale(small, graph, ratio)
        if self.options.bn == "static":
            x, size = task.data.x_train, self.run.eval_batch_size
            reestimate_bn(small, [x[i:i + size] for i in range(0, len(x), size)])
        size = self.run.eval_batch_size
        return split_scores(lambda x, y: evaluate(small, x, y, size), task.data)
