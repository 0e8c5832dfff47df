"""Local training: every client trains its own model on its own data and nothing is aggregated.

The baseline a personalised federated method must beat to show that federation helps its
clients at all (pFedGate's and Ditto's papers report it). A client starts from the seed's
initial model (what the server sends), keeps its model in its private state across rounds and
evaluates it; it uploads no coordinate, so the global model stays the initial one. The server
counts each round as dense training of the client's whole model (it cannot see it).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedsparse.budgets import Budget
from fedsparse.clients.personal import PersonalModelMethod, keep_personal, load_personal
from fedsparse.costs import TrainingCost
from fedsparse.method import ClientTask, CostContext, FitResult


class LocalOnly(PersonalModelMethod):
    """Each client trains and evaluates its own model; no aggregation (the no-federation baseline)."""

    name = "local"
    sparse_updates = True  # the upload is empty

    def fit(self, task: ClientTask) -> FitResult:
        load_personal(task.model, task.state)
        result = super().fit(task)
        keep_personal(task.model, task.state)
        nothing = {n: torch.zeros_like(t, dtype=torch.bool) for n, t in task.model.state_dict().items()}
        return FitResult(result.metrics, upload=nothing)

    def evaluation_protocol(self) -> str:
        return "the client's own model, trained only on its data"

    def round_cost(self, budget: Budget, computed: TrainingCost, density: float,
                   metrics: Mapping[str, float], context: CostContext | None = None
                   ) -> tuple[TrainingCost, float]:
        """Dense training of the personal model, counted by the server from the protocol."""
        return self.dense_training(self.run.train.local_epochs, int(metrics["num-examples"])), 1.0
