"""Time to validate and aggregate N sparse ResNet18 updates, and their upload size vs dense.

    python benchmarks/aggregate_sparse.py [--clients 100] [--density 0.1] [--repeats 5]
                                          [--out FILE.json]

Each client's update is the layer-wise magnitude submodel of its own noisy copy of the model,
so masks differ between clients (the mask-aware case). Encoding happens on clients and is not
timed; decode + validation and the aggregation itself are the server's work and are, each
``--repeats`` times on the same records (the median and the range are printed: this machine's
timings move by tens of percent from run to run).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from fedsparse.aggregation import masked_fedavg
from fedsparse.codec import decode, encode, serialized_bytes
from fedsparse.config import ModelConfig
from fedsparse.masks import layerwise_magnitude_masks
from fedsparse.models import build_model
from fedsparse.updates import template_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="resnet18"), (3, 32, 32), 10)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    template = template_of(state)
    params = dict(model.named_parameters())
    global_arrays = {k: v.numpy() for k, v in state.items()}

    records = []
    for i in range(args.clients):
        g = torch.Generator().manual_seed(i)
        noisy = {k: p.detach() + 0.01 * torch.randn(p.shape, generator=g) for k, p in params.items()}
        masks = layerwise_magnitude_masks(noisy, args.density)
        records.append(encode({**state, **noisy}, masks))
    dense_bytes = serialized_bytes(encode(state))
    sparse_bytes = serialized_bytes(records[0])

    decode_times, aggregate_times = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        updates = [decode(r, template) for r in records]
        t1 = time.perf_counter()
        masked_fedavg(global_arrays, updates, [1.0] * len(updates))
        t2 = time.perf_counter()
        decode_times.append(t1 - t0)
        aggregate_times.append(t2 - t1)
        del updates
    totals = [d + a for d, a in zip(decode_times, aggregate_times, strict=True)]
    result = {
        "model": "resnet18 (CIFAR, 10 classes)", "parameters": sum(p.numel() for p in params.values()),
        "clients": args.clients, "density": args.density,
        "repeats": args.repeats,
        "decode_validate_seconds": spread(decode_times), "aggregate_seconds": spread(aggregate_times),
        "total_seconds": spread(totals),
        "upload_bytes_sparse": sparse_bytes, "upload_bytes_dense": dense_bytes,
        "upload_ratio": round(sparse_bytes / dense_bytes, 4),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
    }
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=2)


def spread(times: list[float]) -> str:
    """Median and range of ``times``, in seconds."""
    return (f"{statistics.median(times):.3f} (range {min(times):.3f}-{max(times):.3f})")


if __name__ == "__main__":
    main()
