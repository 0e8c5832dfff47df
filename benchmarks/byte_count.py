"""CPU the server spends counting the upload bytes of one round's replies.

    python benchmarks/byte_count.py [--config configs/fashion-mnist-cnn.yaml] [--replies 10]

Builds ``--replies`` reply messages carrying a fresh model each (as clients' updates do), counts
them with ``ByteCounter`` as the server does, and prints the median CPU time of 7 repeats with
chunk sizes derived (``codec.deflated_size``) and with every object serialized, the way sizes
were taken before. Both counts must agree.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedsparse import codec
from fedsparse.config import load_config
from fedsparse.data.federation import cached_pool
from fedsparse.models import build_model


def replies(config_path: Path | None, count: int) -> list[dict[str, torch.Tensor]]:
    config = load_config(config_path, [])
    pool = cached_pool(config)
    shape, classes = tuple(pool.input_shape), pool.num_classes
    states = []
    for seed in range(count):
        torch.manual_seed(seed)
        states.append(build_model(config.model, shape, classes).state_dict())
    return states


def count_once(states: list[dict[str, torch.Tensor]]) -> tuple[float, list[int]]:
    """CPU seconds to count fresh messages (object ids are cached per object, so each repeat
    builds its own)."""
    messages = [Message(RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord({"n": 5})}),
                        message_type="train", dst_node_id=1) for state in states]
    started = time.thread_time()
    counter = codec.ByteCounter()
    sizes = [counter(m) for m in messages]
    return time.thread_time() - started, sizes


def measure(states: list[dict[str, torch.Tensor]], size_of: Callable, repeats: int = 7
            ) -> tuple[list[float], list[int]]:
    saved = codec.deflated_size
    codec.deflated_size = size_of
    try:
        runs = [count_once(states) for _ in range(repeats)]
    finally:
        codec.deflated_size = saved
    return [t for t, _ in runs], runs[0][1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, default=Path("configs/fashion-mnist-cnn.yaml"))
    parser.add_argument("--replies", type=int, default=10)
    args = parser.parse_args()
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1  # as the server
    states = replies(args.config, args.replies)
    derived, sizes = measure(states, codec.deflated_size)
    serialized, check = measure(states, lambda obj: len(obj.deflate()))
    assert sizes == check, "derived and serialized sizes differ"
    for label, times in (("derived", derived), ("serialized", serialized)):
        print(f"{label:>10}: {1e3 * statistics.median(times):.1f} ms CPU for {args.replies} replies "
              f"(range {1e3 * min(times):.1f}-{1e3 * max(times):.1f}), {sizes[0]:,} bytes each")


if __name__ == "__main__":
    main()
