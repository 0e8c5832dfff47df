"""Dense reference method: train the whole shared model, deploy the global model as is."""

from __future__ import annotations

from fedsparse.method import ClientTask, FitResult, Method, ServerSetup
from fedsparse.training import train_local


class Dense(Method):
    """FedAvg's client: local SGD on every weight; evaluates the global model as received."""

    name = "dense"
    full_model_only = True
    compare_with = None  # the reference itself

    def setup(self, setup: ServerSetup) -> None:
        low = [b.density for b in setup.budgets if b.density < 1.0]
        if low:
            raise ValueError(f"it trains every weight but {len(low)} clients declare density "
                             f"{min(low):g}: give every client density 1 (--budgets 1.0:1) "
                             "or use a sparse method ('fedsparse methods' lists them)")

    def fit(self, task: ClientTask) -> FitResult:
        """Local training; honours FedProx's ``proximal-mu`` when the strategy sends it."""
        mu = float(task.config.get("proximal-mu", 0.0))
        loss, seen = train_local(task.model, task.data.x_train, task.data.y_train,
                                 self.train_settings(task),
                                 task.generator, task.masks, proximal_mu=mu)
        return FitResult({"train-loss": loss, "num-examples": float(len(task.data.y_train)),
                          "samples-seen": float(seen)}, task.masks)
