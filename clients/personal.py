"""What the personalisation baselines share: a personal model kept in the client's private state,
evaluated instead of the global model, and its dense training counted by the server."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedsparse.clients.dense import Dense
from fedsparse.costs import CostModel, TrainingCost
from fedsparse.method import ClientState, ClientTask, ServerSetup

PERSONAL_KEY = "personal-model"


def load_personal(model: nn.Module, state: ClientState) -> bool:
    """Load the client's personal model into ``model``; False when it has none yet."""
    if PERSONAL_KEY not in state:
        return False
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state[PERSONAL_KEY].items()})
    return True


def keep_personal(model: nn.Module, state: ClientState) -> None:
    state[PERSONAL_KEY] = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


class PersonalModelMethod(Dense):
    """Base of methods whose clients evaluate a personal model (not a method by itself)."""

    compare_with = ("FedAvg-FT on the dense model, the personalised reference: fedsparse "
                    "simulate --method fedavg-ft --strategy fedavg --budgets 1.0:1, the config "
                    "otherwise the same")

    def setup(self, setup: ServerSetup) -> None:
        super().setup(setup)
        self._cost_model: CostModel = setup.cost_model

    def evaluate(self, task: ClientTask) -> dict[str, float]:
        load_personal(task.model, task.state)  # a client that never trained: the model received
        return super().evaluate(task)

    def dense_training(self, epochs: int, num_examples: int) -> TrainingCost:
        """What training the whole model for ``epochs`` over ``num_examples`` (verified) costs."""
        model = self._cost_model
        return model.training_cost(model.dense_counts(), epochs * num_examples,
                                   self.run.train.batch_size, self.run.train.momentum > 0)
