"""FedAvg-FT: FedAvg training; each client fine-tunes the global model before evaluating it.

The baseline pFedGate's paper compares against: personalization by local fine-tuning
(``method.fedavg-ft.finetune_epochs`` epochs, 1 by default) of the received global model.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from pydantic import Field

from fedsparse.budgets import Budget
from fedsparse.clients.dense import Dense
from fedsparse.costs import CostModel, TrainingCost
from fedsparse.method import ClientTask, MethodOptions, ServerSetup
from fedsparse.training import train_local


class FedAvgFTOptions(MethodOptions):
    finetune_epochs: int = Field(1, ge=1, description="local epochs before evaluation")


class FedAvgFT(Dense):
    """Dense training; each client evaluates after fine-tuning a copy of the global model."""

    name = "fedavg-ft"
    Options = FedAvgFTOptions

    def evaluation_protocol(self) -> str:
        return (f"the global model fine-tuned for {self.options.finetune_epochs} local epoch(s) on "
                "the client's training split")

    def setup(self, setup: ServerSetup) -> None:
        super().setup(setup)
        self._cost_model: CostModel = setup.cost_model

    def evaluation_cost(self, budget: Budget, num_train: int, novel: bool) -> TrainingCost:
        """The fine-tuning epochs of the whole model on the client's training split."""
        model, train = self._cost_model, self.run.train
        return model.training_cost(model.dense_counts(), self.options.finetune_epochs * num_train,
                                   train.batch_size, train.momentum > 0)

    def evaluate(self, task: ClientTask) -> dict[str, float]:
        tuned = copy.deepcopy(task.model)
        settings = self.train_settings(task).model_copy(
            update={"local_epochs": self.options.finetune_epochs})
        train_local(tuned, task.data.x_train, task.data.y_train, settings, task.generator, task.masks)
        return super().evaluate(replace(task, model=tuned))
