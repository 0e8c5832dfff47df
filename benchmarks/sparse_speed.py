"""Does sparsity save real time on this CPU? One local epoch of cnn-bn on Fashion-MNIST-shaped data
(1x28x28, 10 classes) at density 1, 0.5, 0.3 and 0.1, for dense FedAvg training, a FedTiny client
(a fixed unstructured magnitude mask) and a pFedGate client (gated blocks), each on one thread.
Beside them, what a channel-aligned mask would buy: the dense product of cnn-bn with only a
share sqrt(density) of each layer's channels kept (about ``density`` of the weights), trained
the same way.

    python benchmarks/sparse_speed.py [--samples 600] [--repeats 3] [--json out.json]

Prints a table of seconds per epoch (median of the repeats) and the ratio to dense, beside the
FLOPs ratio the cost model counts, and writes the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from fedsparse.clients.shared_mask.pruning import magnitude_masks, prunable_density
from fedsparse.config import load_config
from fedsparse.costs import CostModel
from fedsparse.experiment import build_method
from fedsparse.masks import Masks, prunable_weights
from fedsparse.method import ClientTask, LocalData, Method
from fedsparse.models import ConvNet, build_model

SHAPE = (1, 28, 28)


def local_data(samples: int) -> LocalData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, *SHAPE, generator=g)
    y = torch.randint(0, 10, (samples,), generator=g)
    return LocalData(x, y, x[:0], y[:0], x[:64], y[:64])


def channel_sliced_cnn_bn(keep: float) -> torch.nn.Module:
    """cnn-bn with ``keep`` of every layer's channels: the smaller dense product that a
    channel-aligned mask keeping those channels (and their weights) computes."""
    c1, c2, hidden = (max(1, round(w * keep)) for w in (32, 64, 128))
    features = torch.nn.Sequential(
        torch.nn.Conv2d(SHAPE[0], c1, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c1),
        torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(c1, c2, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c2),
        torch.nn.ReLU(), torch.nn.MaxPool2d(2))
    return ConvNet(features, [hidden], SHAPE, 10)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def fedtiny_masks(model: torch.nn.Module, density: float) -> Masks | None:
    if density >= 1.0:
        return None
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    params = dict(model.named_parameters())
    names = prunable_weights(params, keep_first_conv=True)
    return magnitude_masks({n: params[n].detach() for n in names},
                           prunable_density(sizes, names, density))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("sparse_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = local_data(args.samples)
    rows = []
    base = ["model.name=cnn-bn", "train.batch_size=32", "train.local_epochs=1", "data.dataset=fashion-mnist"]
    cost = CostModel(build_model(load_config(None, base).model, SHAPE, 10), SHAPE)

    def fit(method: Method, model: torch.nn.Module, masks: Masks | None, density: float,
            state: dict) -> None:
        method.fit(ClientTask(model=model, masks=masks, data=data,
                              generator=torch.Generator().manual_seed(0), partition_id=0,
                              server_round=1, budget_density=density, config={}, state=state))

    def run(name: str, density: float) -> tuple[float, float | None]:
        cfg = load_config(None, [*base, f"method.name={name}"])
        torch.manual_seed(0)
        model = build_model(cfg.model, SHAPE, 10)
        method = build_method(cfg)
        masks = fedtiny_masks(model, density) if name == "fedtiny" else None
        state: dict = {}

        def step() -> None:
            fit(method, model, masks, density, state)

        flops = None
        if name != "pfedgate":  # pFedGate's per-batch masks are only seen by the client
            kept = {n: int(masks[n].sum()) if masks and n in masks else s
                    for n, s in cost.param_sizes.items()}
            flops = cost.forward_flops_per_sample(kept) / cost.forward_flops_per_sample(cost.dense_counts())
        step()  # warm-up (allocations, gate creation)
        return timed(step, args.repeats), flops

    dense_seconds, _ = run("dense", 1.0)
    rows.append({"method": "dense", "density": 1.0, "seconds": dense_seconds, "ratio": 1.0,
                 "flops_ratio": 1.0})
    for method in ("fedtiny", "pfedgate"):
        for density in (1.0, 0.5, 0.3, 0.1):
            seconds, flops = run(method, density)
            rows.append({"method": method, "density": density, "seconds": seconds,
                         "ratio": seconds / dense_seconds, "flops_ratio": flops})
    dense_params = sum(cost.param_sizes.values())
    dense_flops = cost.forward_flops_per_sample(cost.dense_counts())
    dense = build_method(load_config(None, [*base, "method.name=dense"]))
    for density in (0.5, 0.3, 0.1):
        torch.manual_seed(0)
        model = channel_sliced_cnn_bn(density ** 0.5)
        sliced = CostModel(model, SHAPE)

        def step(model: torch.nn.Module = model) -> None:
            fit(dense, model, None, 1.0, {})

        step()
        seconds = timed(step, args.repeats)
        rows.append({"method": "channel-sliced", "density": sum(sliced.param_sizes.values()) / dense_params,
                     "seconds": seconds, "ratio": seconds / dense_seconds,
                     "flops_ratio": sliced.forward_flops_per_sample(sliced.dense_counts()) / dense_flops})
    print(f"one local epoch, {args.samples} samples, batch 32, cnn-bn, 1 thread, median of {args.repeats}")
    print("| method | density | s/epoch | time vs dense | counted FLOPs vs dense |")
    print("|---|---|---|---|---|")
    for r in rows:
        flops = "n/a (client-reported)" if r["flops_ratio"] is None else f"{r['flops_ratio']:.3f}"
        print(f"| {r['method']} | {r['density']:.3g} | {r['seconds']:.3f} | {r['ratio']:.2f} | {flops} |")
    args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
