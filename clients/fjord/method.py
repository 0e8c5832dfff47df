"""FjORD: ordered dropout. Every batch trains the first ceil(pC) channels of every layer for a
width p drawn uniformly from the widths up to the client's own, so every prefix of channels is
a working submodel and a client can deploy whichever its device affords.

The client holds (and is sent) its widest submodel, the first channels as HeteroFL's; each
batch runs a prefix view of it (no copies: ``ChannelGraph.narrow_state``), so a narrower batch
really computes less. The widths are drawn from a seeded stream the server knows (seed, round,
client), so the server replays them and counts the round's FLOPs exactly. No scaler (FjORD has
none). ``distill: true`` is the paper's optional self-distillation, as Flower Baselines' FjORD
runs it: every batch also trains the client's widest submodel on the labels, and the drawn
width learns the widest one's softened prediction instead of the labels (both passes counted).

BatchNorm (``bn: per-width``, the default, as the authors' and Flower Baselines' ODBatchNorm):
one set of running statistics per width, the affine parameters shared. The statistics are not
part of the model's upload: the server keeps them per width, sends a client those of the widths
it may draw (and, to score, those of its own width), and averages each width's over the clients
that trained batches at it, weighted by those batches' samples; a width nobody trained keeps its
statistics. The global model's BatchNorm buffers hold the full width's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from fedsparse.budgets import Budget
from fedsparse.clients.fjord.width_stats import WidthStats
from fedsparse.clients.width import WidthMethod, WidthOptions
from fedsparse.costs import BACKWARD_FACTOR, TrainingCost
from fedsparse.masks import Masks
from fedsparse.method import ClientTask, CostContext, FitResult, Records, ServerSetup, split_scores
from fedsparse.seeding import rng
from fedsparse.structured import ChannelGraph, Keep, channels_at
from fedsparse.training import batch_sizes, has_batchnorm, train_local
from fedsparse.updates import UpdateRejected


class FjORDOptions(WidthOptions):
    """FjORD's options (config section ``method.fjord``)."""

    bn: Literal["per-width", "static", "tracked"] = Field(  # type: ignore[assignment]
        "per-width", description="BatchNorm statistics: one set per width with shared affine "
                                 "parameters (the authors' ODBatchNorm), HeteroFL's static BN, "
                                 "or one set tracked by every width")

    distill: bool = Field(False, description="self-distillation: each batch also trains the "
                                             "client's widest submodel on the labels, and the "
                                             "drawn width learns its prediction")
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
    """A prefix submodel run at the narrower widths ``active`` (None: its own width); with
    ``stats`` (per-width BatchNorm) the running statistics of ``width`` replace the shared ones."""

    def __init__(self, inner: nn.Module, graph: ChannelGraph,
                 stats: Mapping[float, dict[str, torch.Tensor]] | None = None,
                 teacher_width: float | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.graph = graph
        self.active: dict[str, int] | None = None
        self.width: float | None = None
        self.stats = stats
        #: self-distillation: the width of the whole submodel, whose output in training is the
        #: one returned (scored on the labels), the drawn width's loss against it kept apart
        self.teacher_width = teacher_width
        self.distill_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.teacher_width is not None and self.training:
            teacher = self._run(x, None, self.teacher_width)
            student = self._run(x, self.active, self.width)
            target = teacher.detach().softmax(dim=1)
            self.distill_loss = nn.functional.cross_entropy(student, target)
            return teacher
        return self._run(x, self.active, self.width)

    def _run(self, x: torch.Tensor, active: dict[str, int] | None, width: float | None) -> torch.Tensor:
        if active is None and self.stats is None:
            return self.inner(x)
        tensors = {**dict(self.inner.named_parameters()), **dict(self.inner.named_buffers())}
        if active is not None:
            tensors = self.graph.narrow_state(tensors, active)
        if self.stats is not None:
            assert width is not None
            tensors.update(self.stats[width])
        return torch.func.functional_call(self.inner, tensors, (x,))


class FjORD(WidthMethod):
    """FjORD: ordered dropout, a width drawn per batch up to the client's, trained sliced."""

    name = "fjord"
    Options = FjORDOptions
    which_channels = "the first channels, at its own width"
    default_strategy = None

    def __init__(self, options: Any, run: Any) -> None:
        super().__init__(options, run)
        self._stats: WidthStats | None = None
        self._reports: dict[int, Records] = {}
        self._trained_stats: Records | None = None

    def per_width(self) -> bool:
        return self.options.bn == "per-width"

    # --- server side: per-width statistics -----------------------------------------------------
    def setup(self, setup: ServerSetup) -> None:
        super().setup(setup)
        if self.per_width():
            assert self._graph is not None
            ratios = {self.ratio(d) for d in self._densities}
            widths = sorted(ratios | {w for r in ratios for w in self.candidates(r)})
            self._stats = WidthStats.initial(self._graph, setup.model, widths)

    def begin_round(self, server_round: int) -> dict[str, Any]:
        self._reports = {}
        return super().begin_round(server_round)

    def client_records(self, budget: Budget) -> Records:
        """Per-width BN: the statistics of every width the client may draw."""
        if self._stats is None:
            return {}
        return self._stats.records(self.candidates(self.ratio(budget.density)))

    def evaluation_records(self, budget: Budget) -> Records:
        """Per-width BN: the statistics of the client's own width."""
        if self._stats is None:
            return {}
        return self._stats.records([self.ratio(budget.density)])

    def check_reply(self, partition_id: int, budget: Budget, records: Records,
                    metrics: Mapping[str, float]) -> None:
        if self._stats is None:
            super().check_reply(partition_id, budget, records, metrics)
            return
        try:
            self._stats.check(records, self.candidates(self.ratio(budget.density)))
        except ValueError as exc:
            raise UpdateRejected(str(exc)) from None
        self._reports[partition_id] = dict(records)

    def after_aggregate(self, arrays: dict[str, np.ndarray],
                        accepted: list[int]) -> dict[str, np.ndarray]:
        """Per-width BN: each width's statistics averaged over the clients that trained it; the
        global model's buffers take the full width's."""
        if self._stats is None:
            return super().after_aggregate(arrays, accepted)
        self._stats.merge([self._reports[p] for p in accepted if p in self._reports])
        return self._stats.into_full(arrays)

    def prepare_to_score(self, small: nn.Module, x_train: torch.Tensor, ratio: float) -> None:
        if self._stats is None:
            super().prepare_to_score(small, x_train, ratio)
            return
        self._stats.load(small, ratio)

    def state_dict(self) -> dict[str, Any]:
        return {"width-stats": self._stats.state() if self._stats is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self._stats is not None and state.get("width-stats") is not None:
            self._stats.restore(state["width-stats"])

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
        widths = self.candidates(ratio)
        stats = WidthStats.received(task.inbox, widths) if self.per_width() else None
        model = OrderedDropout(small, graph, stats, ratio if self.options.distill else None)
        plan = self.batch_plan(len(task.data.y_train), has_batchnorm(small))
        draws = self.draws(task.partition_id, task.server_round, len(plan), len(widths))
        order = iter(draws)
        trained = dict.fromkeys(widths, 0)
        sizes = iter(plan)

        def sample_width() -> None:
            p = widths[int(next(order))]
            model.width = p
            size = next(sizes)
            trained[p] += size
            if self.options.distill:
                trained[ratio] += size  # the teacher's pass trains its width's statistics
            model.active = {name: channels_at(p, s.size) for name, s in graph.spaces.items()}

        def distill_loss() -> torch.Tensor:
            assert model.distill_loss is not None
            return model.distill_loss

        # with self-distillation the loss train_local reports is the widest submodel's
        loss, seen = train_local(model, task.data.x_train, task.data.y_train,
                                 self.train_settings(task), task.generator,
                                 before_batch=sample_width,
                                 penalty=distill_loss if self.options.distill else None)
        model.active = None
        if stats is not None:
            self._trained_stats = WidthStats.report(stats, trained)
        return loss, seen

    def fit(self, task: ClientTask) -> FitResult:
        """Per-width BN: the weights, and each trained width's statistics as records."""
        self._trained_stats = None
        result = super().fit(task)
        if self._trained_stats is not None:
            result.outbox.update(self._trained_stats)
        return result

    def upload(self, graph: ChannelGraph, keep: Keep, labels: torch.Tensor | None) -> Masks | None:
        """Per-width BN: the weights only (the statistics travel per width in the records)."""
        masks = super().upload(graph, keep, labels)
        if not self.per_width():
            return masks
        masks = masks if masks is not None else graph.masks(keep)
        return {n: (torch.zeros_like(m) if n.endswith((".running_mean", ".running_var")) else m)
                for n, m in masks.items()}

    def evaluate(self, task: ClientTask) -> dict[str, float]:
        """Per-width BN: the client's width submodel with its width's statistics."""
        if not self.per_width():
            return super().evaluate(task)
        _, _, small, ratio = self.client_submodel(task)
        WidthStats.load_received(small, task.inbox, ratio)
        return split_scores(lambda x, y: self.score(small, x, y, None), task.data)

    def round_cost(self, budget: Budget, computed: TrainingCost, density: float,
                   metrics: Mapping[str, float], context: CostContext | None = None
                   ) -> tuple[TrainingCost, float]:
        """FLOPs replayed batch by batch from the seeded widths; memory and activations of the
        client's widest submodel (what it holds); static BN adds the widest submodel's forward
        pass that recomputes the statistics."""
        widest, _ = self.sliced_cost(budget, computed, density, context)
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
        if self.options.distill:  # the widest submodel's pass on every batch
            flops += (1 + BACKWARD_FACTOR) * sum(plan) * per_sample[-1]
            conv_linear += (1 + BACKWARD_FACTOR) * sum(plan) * multiplies[-1]
        if self.options.bn == "static":
            flops += per_sample[-1] * context.num_examples
        return TrainingCost(float(flops), widest.memory_bytes, widest.activation_bytes,
                            float(conv_linear)), density
