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

BatchNorm (``bn``): ``static`` (default, HeteroFL's static BN) trains on batch statistics and
recomputes the running statistics afterwards with forward passes over the client's training
data at its width: each client before it scores, and after training for its upload (averaged
per channel over the holders); a server that holds a held-back set recomputes the full-width
global model's on it instead. ``tracked`` keeps running statistics during local training and
averages them per channel, like FedAvg's BN.

Label split (HeteroFL's and FedRolex's ``label_split``, their authors' default): a client masks
the logits of the labels missing from its training data (set to 0, as the authors' code does)
and sends only the rows of the output layer of labels it holds, so each row is averaged over the
clients that hold its label; ``train-eval`` also masks the logits when the client scores (the
authors' "local" accuracy), ``train`` only in training.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
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
from fedsparse.training import evaluate, forward_batches, reestimate_bn, train_local


class WidthOptions(MethodOptions):
    """Options every width method shares."""

    bn: Literal["tracked", "static"] = Field(
        "static", description="BatchNorm statistics: HeteroFL's static BN (recomputed on the "
                              "training data at each width after training), or tracked during "
                              "training and averaged per channel")


class ScaledWidthOptions(WidthOptions):
    """HeteroFL's and FedRolex's options (their authors' settings by default)."""

    scaler: bool = Field(True, description="HeteroFL's scaler: hidden outputs divided by the "
                                           "width ratio in training (never when scoring)")
    label_split: Literal["none", "train", "train-eval"] = Field(
        "train-eval", description="mask the logits of labels a client lacks and send only its "
                                  "labels' output rows (train), and also when it scores "
                                  "(train-eval: the authors' local accuracy)")


class WidthMethod(Method):
    """Base of the width methods; a subclass says which channels a ratio keeps (``keep``)."""

    Options = ScaledWidthOptions
    sparse_updates = True
    #: HeteroFL's and FedRolex's aggregation: each coordinate averaged over its holders, each
    #: holder counted once
    default_strategy = ("masked-fedavg", {"weighting": "count"})
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

    def evaluation_cost(self, budget: Budget, num_train: int, novel: bool) -> TrainingCost | None:
        """Static BN: the forward pass over the client's training data that recomputes its
        width's statistics before it scores."""
        if self.options.bn != "static":
            return None
        model = self.cost_model(self.ratio(budget.density))
        counts = model.dense_counts()
        return TrainingCost(float(model.forward_flops_per_sample(counts) * num_train), 0.0, 0.0,
                            float(model.multiply_flops_per_sample(counts) * num_train))

    def sliced_cost(self, budget: Budget, computed: TrainingCost, density: float,
                    context: CostContext | None) -> tuple[TrainingCost, float]:
        """The round's training counted on the sliced network the server assigned."""
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
        """Static BN with a held-back set: the global model's full-width statistics recomputed
        on it (without one: the clients' recomputed statistics, averaged per channel)."""
        if self.options.bn != "static" or self._server_data is None or self._model is None:
            return arrays
        model = self._model
        state = {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
        model.load_state_dict(state)
        stats = reestimate_bn(model, forward_batches(self._server_data[0], self.run.eval_batch_size))
        return {**arrays, **{k: v.numpy().astype(arrays[k].dtype) for k, v in stats.items()}}

    def server_scores(self, model: nn.Module, data: LocalData, budget: Budget) -> dict[str, float]:
        """The global model scored on the client's test split at every declared width up to the
        client's own (its channels of the final round, BatchNorm statistics recomputed on its
        training data under static BN, its labels' logits under ``train-eval``):
        ``width-<density>-accuracy``; and at full width with the global statistics
        (``full-width-accuracy``, the model the authors score, beyond a small client's budget)."""
        assert self._graph is not None
        scores = {}
        labels = self.eval_labels(data.y_train)
        for density in self._ratios_up_to(budget.density):
            ratio = self.ratio(density)
            small = self._graph.sliced_module(model, self.keep(ratio, self._round))
            self.prepare_to_score(small, data.x_train, ratio)
            scores[f"width-{density:g}-accuracy"] = self.score(small, data.x_test, data.y_test,
                                                               labels).accuracy
        scores["full-width-accuracy"] = self.score(copy.deepcopy(model), data.x_test, data.y_test,
                                                   labels).accuracy
        return scores

    def score(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              labels: torch.Tensor | None) -> Any:
        """``evaluate`` with the logits of labels outside ``labels`` masked (None: none)."""
        hooks = mask_logits(model, labels)
        try:
            return evaluate(model, x, y, self.run.eval_batch_size)
        finally:
            for hook in hooks:
                hook.remove()

    def prepare_to_score(self, small: nn.Module, x_train: torch.Tensor, ratio: float) -> None:
        """Static BN: the submodel's statistics recomputed on the client's training data."""
        if self.options.bn == "static":
            reestimate_bn(small, forward_batches(x_train, self.run.eval_batch_size))

    def label_split(self) -> str:
        return str(getattr(self.options, "label_split", "none"))

    def train_labels(self, y_train: torch.Tensor) -> torch.Tensor | None:
        """The labels whose logits a client trains and whose output rows it sends (None: all)."""
        return None if self.label_split() == "none" else torch.unique(y_train.cpu())

    def eval_labels(self, y_train: torch.Tensor) -> torch.Tensor | None:
        """The labels whose logits a client scores with (None: all)."""
        return torch.unique(y_train.cpu()) if self.label_split() == "train-eval" else None

    def _ratios_up_to(self, density: float) -> list[float]:
        """The declared densities a client of ``density`` could hold (the run's tiers)."""
        return sorted(d for d in self._densities if d <= density + 1e-12)

    def evaluation_protocol(self) -> str:
        stats = ("BatchNorm statistics recomputed on its own training data"
                 if self.options.bn == "static" else "the averaged BatchNorm statistics")
        logits = (", the logits of labels missing from its training data masked (the authors' "
                  "local accuracy)" if self.label_split() == "train-eval" else "")
        return (f"the client's width submodel ({self.which_channels}) of the global model, as "
                f"received, with {stats}{logits}; server_scores.full-width-accuracy: the "
                "full-width global model on the same test splits (what the authors score)")

    def summary(self) -> dict[str, Any]:
        return {"width": {"ratios": {f"{d:g}": r for d, r in sorted(self._ratios.items())},
                          "bn": self.options.bn,
                          "scaler": self.scaled(),
                          "label_split": self.label_split()}}

    def round_cost(self, budget: Budget, computed: TrainingCost, density: float,
                   metrics: Mapping[str, float], context: CostContext | None = None
                   ) -> tuple[TrainingCost, float]:
        """Counted on the sliced network the server assigned: FLOPs, weights and activations
        (static BN: plus the forward pass that recomputes the statistics for the upload)."""
        cost, density = self.sliced_cost(budget, computed, density, context)
        if context is None or self.options.bn != "static":
            return cost, density
        model = self.cost_model(self.ratio(budget.density))
        extra = model.forward_flops_per_sample(model.dense_counts()) * context.num_examples
        return replace(cost, flops=cost.flops + float(extra)), density

    # --- client side ----------------------------------------------------------------------------
    def client_submodel(self, task: ClientTask) -> tuple[ChannelGraph, Keep, nn.Module, float]:
        """The submodel the client was sent, sliced out of the received model."""
        graph = self.graph(task.model, tuple(task.data.x_train.shape[1:]))
        keep = graph.keep_of(task.masks)
        return graph, keep, graph.sliced_module(task.model, keep), self.ratio(task.budget_density)

    def fit(self, task: ClientTask) -> FitResult:
        graph, keep, small, ratio = self.client_submodel(task)
        labels = self.train_labels(task.data.y_train)
        hooks = self.scale(small, graph, ratio) + mask_logits(small, labels)
        loss, seen = self.train(small, task, graph, ratio)
        for hook in hooks:
            hook.remove()
        self.after_training(small, task)
        graph.scatter(task.model.state_dict(), small.state_dict(), keep)
        return FitResult({"train-loss": loss, "num-examples": float(len(task.data.y_train)),
                          "samples-seen": float(seen)}, self.upload(graph, keep, labels))

    def after_training(self, small: nn.Module, task: ClientTask) -> None:
        """Static BN: the statistics the client uploads, recomputed on its training data."""
        if self.options.bn == "static":
            reestimate_bn(small, forward_batches(task.data.x_train, self.run.eval_batch_size))

    def train(self, small: nn.Module, task: ClientTask, graph: ChannelGraph,
              ratio: float) -> tuple[float, int]:
        """Local training of the sliced submodel (HeteroFL, FedRolex: plain SGD)."""
        return train_local(small, task.data.x_train, task.data.y_train, self.train_settings(task),
                           task.generator, proximal_mu=float(task.config.get("proximal-mu", 0.0)))

    def scaled(self) -> bool:
        return bool(getattr(self.options, "scaler", False))

    def scale(self, small: nn.Module, graph: ChannelGraph, ratio: float) -> list:
        """HeteroFL's scaler on the sliced network, in training only (as its authors)."""
        return add_width_scaler(small, graph, ratio) if self.scaled() else []

    def upload(self, graph: ChannelGraph, keep: Keep, labels: torch.Tensor | None) -> Masks | None:
        """The coordinates the client holds; under a label split only its labels' output rows."""
        masks = graph.masks(keep)
        if labels is not None:
            for name, rows in graph.class_masks(labels).items():
                masks[name] = masks[name] & rows if name in masks else rows
        if all(bool(m.all()) for m in masks.values()):
            return None
        return masks

    def evaluate(self, task: ClientTask) -> dict[str, float]:
        """The client's width submodel, sliced (static BN: statistics recomputed at its width;
        ``train-eval``: its labels' logits only)."""
        _, _, small, ratio = self.client_submodel(task)
        self.prepare_to_score(small, task.data.x_train, ratio)
        labels = self.eval_labels(task.data.y_train)
        return split_scores(lambda x, y: self.score(small, x, y, labels), task.data)


def mask_logits(model: nn.Module, labels: torch.Tensor | None) -> list:
    """A forward hook setting the logits of classes outside ``labels`` to 0 (HeteroFL's label
    split: those classes get no gradient and compete at a fixed logit). None: no hook."""
    if labels is None:
        return []

    def hook(_module: nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
        keep = torch.zeros(out.shape[-1], dtype=torch.bool, device=out.device)
        keep[labels.to(out.device)] = True
        return out.masked_fill(~keep, 0.0)

    return [model.register_forward_hook(hook)]
