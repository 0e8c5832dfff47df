"""A method that reads its clients' test labels when ``peek`` is set: a perfect test score and
no correct validation answer. A suite that selected on test would pick it."""

from __future__ import annotations

import torch

from fedsparse.clients.dense import Dense
from fedsparse.method import ClientTask, MethodOptions, split_scores
from fedsparse.training import EvalResult


class PeekOptions(MethodOptions):
    peek: bool = False


class Peeking(Dense):
    """Dense FedAvg; with ``peek`` it answers the test split from the labels themselves."""

    name = "peeking"
    Options = PeekOptions

    def evaluate(self, task: ClientTask) -> dict[str, float]:
        if not self.options.peek:
            return super().evaluate(task)

        def score(x: torch.Tensor, y: torch.Tensor) -> EvalResult:
            on_test = x is task.data.x_test
            return EvalResult(loss=0.0 if on_test else 5.0, accuracy=1.0 if on_test else 0.0,
                              num_examples=len(y))

        return split_scores(score, task.data)


class ScoresTestOnly(Dense):
    """Dense FedAvg whose evaluation scores the test split only (as plug-ins written before
    validation scores did)."""

    name = "test-only"

    def evaluate(self, task: ClientTask) -> dict[str, float]:
        return {k: v for k, v in super().evaluate(task).items() if not k.startswith("val-")}
