"""Ditto (Li et al., ICML 2021): a personal model regularised towards the global one.

Each round a client (1) trains its personal model v for ``personal_epochs`` epochs on
F_k(v) + lambda/2 ||v - w||^2, with w the global model it received, and keeps v in its private
state; (2) trains the global model as FedAvg does and uploads it. It evaluates v. lambda
interpolates between local training (0) and the global model (large).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from pydantic import Field

from fedsparse.budgets import Budget
from fedsparse.clients.personal import PersonalModelMethod, keep_personal, load_personal
from fedsparse.costs import BYTES_PER_VALUE, TrainingCost
from fedsparse.method import ClientTask, CostContext, FitResult, MethodOptions
from fedsparse.seeding import personal_seed
from fedsparse.training import train_local


class DittoOptions(MethodOptions):
    lam: float = Field(0.1, ge=0.0, description="lambda: pull of the personal model to the global")
    personal_epochs: int = Field(1, ge=1, description="epochs of the personal model per round")


class Ditto(PersonalModelMethod):
    """Ditto: FedAvg's global model plus a personal model pulled towards it; evaluates the personal."""

    name = "ditto"
    Options = DittoOptions
    options: DittoOptions

    def fit(self, task: ClientTask) -> FitResult:
        global_model = [p.detach().clone() for p in task.model.parameters()]
        personal = copy.deepcopy(task.model)
        load_personal(personal, task.state)  # first round: starts from the global model
        settings = self.train_settings(task).model_copy(
            update={"local_epochs": self.options.personal_epochs})
        generator = torch.Generator().manual_seed(
            personal_seed(self.run.seed, task.server_round, task.partition_id))
        train_local(personal, task.data.x_train, task.data.y_train, settings, generator,
                    proximal_mu=self.options.lam, anchor=global_model)
        keep_personal(personal, task.state)
        return super().fit(task)  # the global model's FedAvg update

    def evaluation_protocol(self) -> str:
        return "the client's personal model (regularised towards the global one)"

    def round_cost(self, budget: Budget, computed: TrainingCost, density: float,
                   metrics: Mapping[str, float], context: CostContext | None = None
                   ) -> tuple[TrainingCost, float]:
        """The global model's training (counted from the upload) plus the personal model's
        epochs, and the second model held in memory."""
        personal = self.dense_training(self.options.personal_epochs, int(metrics["num-examples"]))
        held = sum(self._cost_model.param_sizes.values()) * BYTES_PER_VALUE
        conv_linear = None if computed.conv_linear_flops is None \
            else computed.conv_linear_flops + (personal.conv_linear_flops or 0.0)
        return TrainingCost(computed.flops + personal.flops, computed.memory_bytes + held,
                            computed.activation_bytes, conv_linear), density
