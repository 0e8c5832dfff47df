"""FedMef (Huang et al., CVPR 2024): memory-efficient federated dynamic pruning.

FedTiny's authors' answer to its memory cost. The server starts from a magnitude (or random)
mask of the ERK allocation, without adaptive BN selection, and adjusts it as FedTiny does
(clients' top-K gradients at pruned positions grow what the server's magnitude step prunes, new
weights start at 0). On top:

- budget-aware extrusion: in an adjustment round clients train with a penalty on the K weights
  of each adjusted layer that the server is about to prune (``extrusion``);
- scaled activation pruning: every Conv2d / Linear input but the first layer's is kept for
  backward only in part (``activation_keep``), the rest never stored; the cost model counts the
  activations it saves by measuring them (saved-tensor hooks on one training step at setup).

Where this differs from the authors' code, and why (see also the two modules' docstrings): the
penalised share is the adjustment's own K (their code decays it with the activation-pruning rate
gamma, which looks like a slip for the adjustment's alpha); lambda is applied (their code parses
``lambda_l2`` and adds the norm unscaled, so the default here is 1, what runs there); their
learning-rate rescaling by the penalised weights' L1 norm is not built, because at their defaults
(``psi_of_lr`` 1, ``max_lr`` = lr) it leaves the rate unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from fedsparse.budgets import Budget
from fedsparse.clients.fedmef.activations import pruned_activations, saved_bytes
from fedsparse.clients.fedmef.extrusion import extrusion_penalty, extrusion_targets
from fedsparse.clients.fedtiny import FedTiny
from fedsparse.clients.shared_mask import PruningOptions, SharedMask
from fedsparse.clients.shared_mask.method import adjust_plan
from fedsparse.costs import TrainingCost
from fedsparse.masks import Masks
from fedsparse.method import Ask, ClientTask, CostContext, ServerSetup

#: samples in the batch whose saved activations are measured at setup
MEASURE_BATCH = 8


class FedMef(FedTiny):
    """FedMef: FedTiny's server-side prune-and-grow with extrusion and pruned activations."""

    name = "fedmef"
    adjust = "pairs"

    @classmethod
    def uses_server_data(cls, options: PruningOptions) -> bool:  # type: ignore[override]
        return options.criterion == "snip"

    def setup(self, setup: ServerSetup) -> None:
        if self.filters:
            raise ValueError("fedmef extrudes and prunes single weights: method.pruning."
                             "granularity filter is for fedtiny and prune-at-init")
        super().setup(setup)
        self.activation_ratio = activation_ratio(setup.model, setup.cost_model.input_shape,
                                                 self.options.activation_keep, self.run.seed)

    def first_masks(self, model: nn.Module, rho: float, ask: Ask) -> Masks:
        """The ``criterion``'s mask (magnitude of the warmed-up weights by default), no ABNS."""
        return SharedMask.first_masks(self, model, rho, ask)

    def round_cost(self, budget: Budget, computed: TrainingCost, density: float,
                   metrics: Mapping[str, float], context: CostContext | None = None
                   ) -> tuple[TrainingCost, float]:
        """FedTiny's cost with the activations scaled by what pruning them was measured to save."""
        cost, density = super().round_cost(budget, computed, density, metrics, context)
        return TrainingCost(cost.flops, cost.memory_bytes,
                            cost.activation_bytes * self.activation_ratio,
                            cost.conv_linear_flops), density

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["pruning"].update({"activation_keep": self.options.activation_keep,
                               "activation_bytes_ratio": round(self.activation_ratio, 4),
                               "extrusion": self.options.extrusion})
        return out

    # --- client side ----------------------------------------------------------------------------
    def train(self, task: ClientTask, penalty: Callable[[], torch.Tensor] | None = None
              ) -> tuple[float, int]:
        """Masked training with pruned activations; in an adjustment round, with extrusion (added
        to ``penalty`` when a subclass passes one)."""
        params = dict(task.model.named_parameters())
        targets = extrusion_targets(params, task.masks, adjust_plan(task.config))
        terms = [t for t in (penalty, extrusion_penalty(params, targets, self.options.extrusion))
                 if t is not None]
        with pruned_activations(task.model, self.options.activation_keep):
            return super().train(task, (lambda: sum(t() for t in terms)) if terms else None)


def activation_ratio(model: nn.Module, input_shape: tuple[int, ...], keep: float,
                     seed: int) -> float:
    """Bytes saved for backward with activations pruned to ``keep`` over those without, measured
    on one seeded batch."""
    if keep >= 1.0:
        return 1.0
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(MEASURE_BATCH, *input_shape, generator=generator)
    y = torch.zeros(MEASURE_BATCH, dtype=torch.long)
    return saved_bytes(model, x, y, keep) / saved_bytes(model, x, y, 1.0)
