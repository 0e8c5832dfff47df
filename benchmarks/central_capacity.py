"""How far below dense a sparse model of this size can get at all: centralised training, no FL.

FedTiny's target (issue 18) is "within 5 points of dense at rho = 0.01". Whether any federated
method can reach it depends first on what a model with 1% of the weights can learn in the same
number of training samples. This trains the config's model centrally on the union of the
clients' training splits (the same partitions, server set and warm-up as the federated runs)
twice: dense, and under the layer-wise magnitude mask of the warmed-up weights at ``--density``
(ERK allocation, first conv layer dense: the start FedTiny's candidates come from). Both see
the samples a federated run sees (rounds x clients per round x the mean training split), then
keep going to ``--epochs``; accuracy is the clients' mean over their own test splits, as in a run.
Centralised IID SGD is an easier problem than federated non-IID training, so its gap is a lower
bound on what a federated method can reach in the same work, not a target.

Usage: python benchmarks/central_capacity.py --config configs/fmnist-fedtiny.yaml --density 0.01
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fedsparse.clients.shared_mask.pruning import layer_densities, magnitude_masks, prunable_density
from fedsparse.config import load_config
from fedsparse.data.federation import build_federation
from fedsparse.experiment import warmup_epochs
from fedsparse.masks import prunable_weights
from fedsparse.models import build_model
from fedsparse.training import evaluate, train_local


def client_mean_accuracy(model: torch.nn.Module, tests: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    accuracies = [evaluate(model, x, y).accuracy for x, y in tests]
    return float(np.mean(accuracies))


def run(config_path: str, density: float, epochs: int, seed: int | None) -> dict[str, object]:
    config = load_config(Path(config_path))
    if seed is not None:
        config = config.model_copy(update={"seed": seed})
    torch.manual_seed(config.seed)
    federation = build_federation(config)
    pool = federation.pool
    train_idx = np.concatenate([c.train for c in federation.clients])
    x, y = pool.tensors(train_idx)
    tests = [pool.tensors(c.test) for c in federation.clients if len(c.test)]
    fl_samples = config.rounds * config.clients_per_round * len(train_idx) / config.num_clients

    model = build_model(config.model, pool.input_shape, pool.num_classes)
    epochs_warm = warmup_epochs(config)  # as the run's server: the config's, else the method's
    if epochs_warm:
        xs, ys = pool.tensors(federation.server)
        train_local(model, xs, ys, config.train.model_copy(update={"local_epochs": epochs_warm}),
                    torch.Generator().manual_seed(config.seed))
    warm = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    prunable = prunable_weights(params, keep_first_conv=True)
    sizes = {n: p.numel() for n, p in params.items()}
    rho = prunable_density(sizes, prunable, density)
    weights = {n: params[n].detach() for n in prunable}
    masks = magnitude_masks(weights, layer_densities({n: tuple(w.shape) for n, w in weights.items()},
                                                     rho, "erk"))
    kept = sum(int(m.sum()) for m in masks.values()) + sum(sizes[n] for n in sizes if n not in masks)

    result: dict[str, object] = {"seed": config.seed, "density": density,
                                 "kept_weights": kept, "total_weights": sum(sizes.values()),
                                 "fl_equivalent_epochs": fl_samples / len(train_idx)}
    for name, run_masks in (("dense", None), (f"sparse {density:g}", masks)):
        model.load_state_dict(warm)
        generator = torch.Generator().manual_seed(config.seed)
        curve, seen, started = [], 0.0, time.time()
        one_epoch = config.train.model_copy(update={"local_epochs": 1})
        fl_point = None
        for epoch in range(1, epochs + 1):
            train_local(model, x, y, one_epoch, generator, masks=run_masks)
            seen += len(train_idx)
            if fl_point is None and seen >= fl_samples:
                fl_point = client_mean_accuracy(model, tests)
            curve.append(round(client_mean_accuracy(model, tests), 4))
            print(f"{name}: epoch {epoch} acc mean {curve[-1]:.4f}", flush=True)
        at_fl = curve[-1] if fl_point is None else fl_point
        result[name] = {"acc_at_fl_samples": round(at_fl, 4), "curve": curve,
                        "seconds": round(time.time() - started, 1)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/fmnist-fedtiny.yaml")
    parser.add_argument("--density", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    print(json.dumps(run(args.config, args.density, args.epochs, args.seed), indent=1))


if __name__ == "__main__":
    main()
