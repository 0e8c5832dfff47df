"""FjORD: ordered dropout. Every batch trains the first ceil(pC) channels of every layer for a
width p drawn uniformly from the widths up to the client's own, so every prefix of channels is
a working submodel and a client can deploy whichever its device affords.

The client holds (and is sent) its widest submodel, the first channels as HeteroFL's; each
batch runs a prefix view of it (no copies: ``ChannelGraph.narrow_state``), so a narrower batch
really computes less. The widths are drawn from a seeded stream the server knows (seed, round,
client), so the server replays them and counts the round's FLOPs exactly. No scaler (FjORD has
none). Not built: FjORD's optional self-distillation from the widest submodel.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from fedsparse.budgets import Budget
from fedsparse.clients.width import WidthMethod, WidthOptions
from fedsparse.costs import BACKWARD_FACTOR, TrainingCost
from fedsparse.method import ClientTask, CostContext
from fedsparse.seeding import rng
from fedsparse.structured import ChannelGraph, channels_at
from fedsparse.training import batch_sizes, has_batchnorm, train_local


class FjORDOptions(WidthOptions):
    """FjORD's options (config section ``method.fjord``)."""

    widths: list[float] = Field([0.2, 0.4, 0.6, 0.8, 1.0], min_length=1,
                                description="the discrete widths P a batch may draw (a client "
                                            "draws those up to its own width, and its own)")

    @field_validator("widths")
    @classmethod
    def _in_unit_interval(cls, widths: list[float]) -> list[float]:
        if any(not 0.0 < w <= 1.0 for w in widths):
            raise ValueError("every width must lie in (0, 1]")
        return sorted(set(widths))


class OrderedDropout(nn.Module):
    """A prefix submodel run at the narrower widths ``active`` (None: its own width)."""

    def __init__(self, inner: nn.Module, graph: ChannelGraph) -> None:
        super().__init__()
        self.inner = inner
        self.graph = graph
        self.active: dict[str, int] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.active is None:
            return self.inner(x)
        tensors = {**dict(self.inner.named_parameters()), **dict(self.inner.named_buffers())}
        narrowed = self.graph.narrow_state(tensors, self.active)
        return torch.func.functional_call(self.inner, narrowed, (x,))


class FjORD(WidthMethod):
    """FjORD: ordered dropout, a width drawn per batch up to the client's, trained sliced."""

    name = "fjord"
    Options = FjORDOptions
    which_channels = "the first channels, at its own width"

    def candidates(self, ratio: float) -> list[float]:
        """The widths a client of width ``ratio`` draws from: P below its own, and its own."""
        return sorted({w for w in self.options.widths if w < ratio} | {ratio})

    def draws(self, partition_id: int, server_round: int, batches: int, count: int) -> np.ndarray:
        return rng(self.run.seed, "widths", server_round, partition_id).integers(0, count, batches)

    def batch_plan(self, num_examples: int, has_batchnorm: bool) -> list[int]:
        """Sizes of every batch of the round, all epochs."""
        return batch_sizes(num_examples, self.run.train.batch_size,
                           has_batchnorm) * self.run.train.local_epochs

    def train(self, small: nn.Module, task: ClientTask, graph: ChannelGraph,
              ratio: float) -> tuple[float, int]:
        model = OrderedDropout(small, graph)
        widths = self.candidates(ratio)
        plan = self.batch_plan(len(task.data.y_train), has_batchnorm(small))
        order = iter(self.draws(task.partition_id, task.server_round, len(plan), len(widths)))

        def sample_width() -> None:
            p = widths[int(next(order))]
            model.active = {name: channels_at(p, s.size) for name, s in graph.spaces.items()}

        loss, seen = train_local(model, task.data.x_train, task.data.y_train,
                                 self.train_settings(task),
                                 task.generator, before_batch=sample_width)
        model.active = None
        return loss, seen

    def round_cost(self, budget: Budget, computed: TrainingCost, density: float,
                   metrics: Mapping[str, float], context: CostContext | None = None
                   ) -> tuple[TrainingCost, float]:
        """FLOPs replayed batch by batch from the seeded widths; memory and activations of the
        client's widest submodel (what it holds)."""
        widest, _ = super().round_cost(budget, computed, density, metrics, context)
        if context is None:
            return widest, density
        ratio = self.ratio(budget.density)
        widths = self.candidates(ratio)
        assert self._model is not None
        plan = self.batch_plan(context.num_examples, has_batchnorm(self._model))
        draws = self.draws(context.partition_id, context.server_round, len(plan), len(widths))
        models = [self.cost_model(w) for w in widths]
        per_sample = [m.forward_flops_per_sample(m.dense_counts()) for m in models]
        multiplies = [m.multiply_flops_per_sample(m.dense_counts()) for m in models]
        pairs = list(zip(plan, draws, strict=True))
        flops = (1 + BACKWARD_FACTOR) * sum(size * per_sample[d] for size, d in pairs)
        conv_linear = (1 + BACKWARD_FACTOR) * sum(size * multiplies[d] for size, d in pairs)
        return TrainingCost(float(flops), widest.memory_bytes, widest.activation_bytes,
                            float(conv_linear)), density
