"""Does sparsity save real time on this CPU? One local epoch of a client at density 1, 0.5, 0.3
and 0.1, timed side by side for every method (runners interleaved, each repeated, median), on
one thread:

- cnn-bn on Fashion-MNIST-shaped data (1x28x28, 10 classes): dense FedAvg, a FedTiny client
  (a fixed unstructured magnitude mask), a pFedGate client with blocks of flat weights (the
  paper's) and with channel-aligned blocks (`pfedgate-channel`: a sliced network per batch;
  `pfedgate-channel-act` also limits activations), and
  the width methods HeteroFL, FjORD and FedRolex (channel-structured submodels trained sliced);
- resnet18 on CIFAR-shaped data (3x32x32, synthetic: no CIFAR on this machine): dense, pFedGate's
  channel mode and the width methods.

    python benchmarks/sparse_speed.py [--samples 600] [--resnet-samples 64] [--repeats 5]
                                      [--models cnn-bn,resnet18] [--methods a,b]
                                      [--json runs/sparse_speed.json]

Prints a table of seconds per epoch (median and min-max of the repeats), the ratio to the
same model's dense epoch, and the FLOPs ratio the server counts, and writes the same as JSON.
A width client's time includes slicing its submodel out of the received model and scattering it
back. Targets: width methods at density 0.5 / 0.3 / 0.1 <= 0.65x / 0.5x / 0.3x dense (issue 16);
pFedGate's channel mode at s = 0.3 <= 0.6x dense (issue 17). pFedGate runs with momentum 0.9 as
its paper-like config, the others with plain SGD as their configs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fedsparse.budgets import Budget
from fedsparse.clients.shared_mask.pruning import magnitude_masks, prunable_density
from fedsparse.config import load_config
from fedsparse.costs import CostModel
from fedsparse.experiment import build_method
from fedsparse.masks import Masks, prunable_weights
from fedsparse.method import ClientTask, CostContext, LocalData, Method, ServerSetup
from fedsparse.models import build_model

SHAPES = {"cnn-bn": (1, 28, 28), "resnet18": (3, 32, 32)}
WIDTH_METHODS = ("heterofl", "fjord", "fedrolex")
#: runner label -> (method, extra --set items)
VARIANTS = {"pfedgate": ("pfedgate", ["train.momentum=0.9"]),
            "pfedgate-channel": ("pfedgate", ["train.momentum=0.9", "method.pfedgate.blocks=channel"]),
            "pfedgate-channel-act": ("pfedgate", ["train.momentum=0.9", "method.pfedgate.blocks=channel",
                                                  "method.pfedgate.limit_activations=true"])}
BATCH = 32


def local_data(samples: int, shape: tuple[int, ...]) -> LocalData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, *shape, generator=g)
    y = torch.randint(0, 10, (samples,), generator=g)
    return LocalData(x, y, x[:0], y[:0], x[:64], y[:64])


def fedtiny_masks(model: torch.nn.Module, density: float) -> Masks | None:
    if density >= 1.0:
        return None
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    params = dict(model.named_parameters())
    names = prunable_weights(params, keep_first_conv=True)
    return magnitude_masks({n: params[n].detach() for n in names},
                           prunable_density(sizes, names, density))


class Runner:
    """One (model, method, density) client, ready to train one epoch per call."""

    def __init__(self, model_name: str, label: str, density: float, samples: int) -> None:
        shape = SHAPES[model_name]
        method_name, extra = VARIANTS.get(label, (label, []))
        cfg = load_config(None, [f"model.name={model_name}", f"train.batch_size={BATCH}",
                                 "train.local_epochs=1", f"method.name={method_name}", *extra])
        torch.manual_seed(0)
        model = build_model(cfg.model, shape, 10)
        self.cost = CostModel(model, shape)
        self.method: Method = build_method(cfg)
        self.label = (model_name, label, density)
        self.data = local_data(samples, shape)
        self.state: dict = {}
        self.flops_ratio: float | None = None
        dense_flops = self.cost.training_cost(self.cost.dense_counts(), samples, BATCH, False).flops
        masks: Masks | None = None
        if method_name == "fedtiny":
            masks = fedtiny_masks(model, density)
            kept = {n: int(masks[n].sum()) if masks and n in masks else s
                    for n, s in self.cost.param_sizes.items()}
            self.flops_ratio = self.cost.training_cost(kept, samples, BATCH, False).flops / dense_flops
        elif method_name in WIDTH_METHODS:
            self.method.setup(ServerSetup(model=model, budgets=[Budget(density=density)],
                                          cost_model=self.cost))
            sent = self.method.client_masks(dict(model.named_parameters()), Budget(density=density))
            params = {n for n, _ in model.named_parameters()}
            masks = {n: m for n, m in sent.items() if n in params} if sent else None
            with torch.no_grad():  # the model as the client receives it
                for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                    if sent and name in sent:
                        tensor.mul_(sent[name].to(tensor.dtype))
            cost, _ = self.method.round_cost(Budget(density=density), self.cost.training_cost(
                self.cost.dense_counts(), samples, BATCH, False), density, {},
                CostContext(0, 1, samples, 1, BATCH, False))
            self.flops_ratio = cost.flops / dense_flops
        elif method_name == "dense":
            self.flops_ratio = 1.0
        self.model, self.masks, self.density = model, masks, density

    def __call__(self) -> None:
        self.method.fit(ClientTask(model=self.model, masks=self.masks, data=self.data,
                                   generator=torch.Generator().manual_seed(0), partition_id=0,
                                   server_round=1, budget_density=self.density, config={},
                                   state=self.state))


def runners(models: list[str], samples: int, resnet_samples: int,
            only: set[str] | None = None) -> list[Runner]:
    out = []
    for model in models:
        n = resnet_samples if model == "resnet18" else samples
        out.append(Runner(model, "dense", 1.0, n))
        methods = ("fedtiny", "pfedgate", "pfedgate-channel", "pfedgate-channel-act", *WIDTH_METHODS) \
            if model == "cnn-bn" else ("pfedgate-channel", "pfedgate-channel-act", *WIDTH_METHODS)
        for method in methods:
            if only and method not in only:
                continue
            for density in (0.5, 0.3, 0.1):
                out.append(Runner(model, method, density, n))
    return out


def timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--resnet-samples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default="cnn-bn,resnet18")
    parser.add_argument("--methods", default="", help="only these runners (dense always runs)")
    parser.add_argument("--json", type=Path, default=Path("runs/sparse_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    only = set(args.methods.split(",")) if args.methods else None
    todo = runners(args.models.split(","), args.samples, args.resnet_samples, only)
    for runner in todo:
        runner()  # warm-up: allocations, tracing, a pFedGate gate's creation
    times: dict[tuple, list[float]] = {r.label: [] for r in todo}
    for _ in range(args.repeats):  # interleaved, so drifts of this noisy machine hit every runner
        for runner in todo:
            times[runner.label].append(timed(runner))
    rows = []
    for runner in todo:
        model, method, density = runner.label
        dense = statistics.median(times[(model, "dense", 1.0)])
        seconds = statistics.median(times[runner.label])
        rows.append({"model": model, "method": method, "density": density, "seconds": seconds,
                     "min": min(times[runner.label]), "max": max(times[runner.label]),
                     "ratio": seconds / dense, "flops_ratio": runner.flops_ratio})
    print(f"one local epoch, batch {BATCH}, 1 thread, median of {args.repeats} interleaved repeats "
          f"(cnn-bn: {args.samples} samples, resnet18: {args.resnet_samples})")
    print("| model | method | density | s/epoch (min-max) | time vs dense | counted FLOPs vs dense |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        flops = "client-reported" if r["flops_ratio"] is None else f"{r['flops_ratio']:.3f}"
        print(f"| {r['model']} | {r['method']} | {r['density']:g} | {r['seconds']:.3f} "
              f"({r['min']:.3f}-{r['max']:.3f}) | {r['ratio']:.2f} | {flops} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
