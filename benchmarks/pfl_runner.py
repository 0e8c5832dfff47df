"""The overhead benchmark's workload on Apple's pfl simulator (pfl-research), the fastest peer.

    python benchmarks/pfl_runner.py CONFIG_JSON RESULT_JSON              # one process
    torchrun --nproc-per-node 2 benchmarks/pfl_runner.py CONFIG_JSON RESULT_JSON  # 2 workers

Run by ``benchmarks/overhead.py`` (``pip install -e '.[bench]'`` installs pfl); not a fedsparse
module. The same federation, model, initial weights, sampled clients per round and local SGD
(batch size, learning rate, one epoch, each client's samples in the order ``train_local`` would
shuffle them with the same seed) as the other runners; pfl's own FedAvg weighted by data points,
a central SGD step of 1 (the average replaces the model), no evaluation. With torchrun, pfl
splits each cohort between the workers balanced by sample count (``user_id_to_weight``) and sums
their statistics over gloo. RESULT_JSON gets ``round_starts`` (wall-clock seconds: the start of
every round and the end of the last), written by rank 0.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from fedsparse.config import ExperimentConfig
from fedsparse.data.federation import build_federation
from fedsparse.models import build_model


class CohortOrder:
    """pfl's ``user_sampler``: returns the benchmark's sampled clients, round after round."""

    def __init__(self, order: list[int]) -> None:
        self.order = order
        self.next = 0

    def __call__(self) -> int:
        user = self.order[self.next % len(self.order)]
        self.next += 1
        return user


class PflClassifier(nn.Module):
    """The benchmark's model with the ``loss`` and ``metrics`` methods pfl's PyTorchModel asks for."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.loss_fn = nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def loss(self, x: torch.Tensor, y: torch.Tensor, eval: bool = False) -> torch.Tensor:
        self.eval() if eval else self.train()
        return self.loss_fn(self(x), y)

    @torch.no_grad()
    def metrics(self, x: torch.Tensor, y: torch.Tensor, eval: bool = True) -> dict:
        from pfl.metrics import Weighted

        self.eval() if eval else self.train()
        logits = self(x)
        return {"loss": Weighted(float(self.loss_fn(logits, y)) * len(y), len(y)),
                "accuracy": Weighted(float((logits.argmax(1) == y).sum()), len(y))}


def client_tensors(federation, pid: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Client ``pid``'s training samples in ``train_local``'s order for that client (its
    generator seeded with ``pid``); a last batch of one sample is dropped as ``train_local``
    skips it."""
    x, y = federation.pool.tensors(federation.clients[pid].train)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(pid))
    if len(y) % batch_size == 1 and len(y) > 1:
        order = order[:-1]
    return x[order], y[order]


def main() -> None:
    config = ExperimentConfig.model_validate_json(Path(sys.argv[1]).read_text())
    result_path = Path(sys.argv[2])
    torch.set_num_threads(1 if "TORCHELASTIC_RUN_ID" in os.environ else os.cpu_count() or 1)
    # pfl picks its framework and distributed context when these are imported
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.aggregate.weighting import WeightByDatapoints
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.internal.ops.selector import get_default_framework_module
    from pfl.model.pytorch import PyTorchModel

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from overhead import sampled

    federation = build_federation(config)
    pool = federation.pool
    torch.manual_seed(config.seed)
    model = PflClassifier(build_model(config.model, pool.input_shape, pool.num_classes))
    batch = config.train.batch_size
    users = {pid: client_tensors(federation, pid, batch) for r in range(1, config.rounds + 1)
             for pid in sampled(config, r)}
    order = [pid for r in range(1, config.rounds + 1) for pid in sampled(config, r)]
    dataset = FederatedDataset(lambda pid: Dataset(users[pid], user_id=pid), CohortOrder(order),
                               user_id_to_weight={pid: len(users[pid][1]) for pid in users})
    central = torch.optim.SGD(model.parameters(), lr=1.0)
    pfl_model = PyTorchModel(model=model, local_optimizer_create=torch.optim.SGD,
                             central_optimizer=central)
    backend = SimulatedBackend(training_data=dataset, val_data=None,
                               postprocessors=[WeightByDatapoints()])
    starts: list[float] = []

    class RoundClock(TrainingProcessCallback):
        def on_train_begin(self, *, model):  # type: ignore[override]
            starts.append(time.time())
            return super().on_train_begin(model=model)

        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):  # type: ignore[override]
            starts.append(time.time())
            return False, type(aggregate_metrics)()

    params = NNAlgorithmParams(central_num_iterations=config.rounds,
                               evaluation_frequency=config.rounds + 1,
                               train_cohort_size=config.clients_per_round, val_cohort_size=None)
    FederatedAveraging().run(
        algorithm_params=params, backend=backend, model=pfl_model,
        model_train_params=NNTrainHyperParams(local_learning_rate=config.train.lr,
                                              local_num_epochs=config.train.local_epochs,
                                              local_batch_size=batch),
        model_eval_params=NNEvalHyperParams(local_batch_size=512), callbacks=[RoundClock()])
    if get_default_framework_module().distributed.global_rank == 0:
        result_path.write_text(json.dumps({"round_starts": starts}))


if __name__ == "__main__":
    main()
