"""Threads for the server's numpy and torch work on many tensors.

Averaging a model's tensors is torch kernels that release the GIL (``index_add_`` runs on one
thread), so a thread per core runs tensors side by side without copying any update to another
process. Decoding updates is not threaded: its per-tensor Python work holds the GIL, so
threads would only slow it (``benchmarks/aggregate_sparse.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def thread_map(function: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[function(i) for i in items]`` on up to one thread per core, results in order."""
    work = list(items)
    if len(work) < 2 or cores() < 2:
        return [function(item) for item in work]
    with ThreadPoolExecutor(max_workers=min(len(work), cores())) as pool:
        return list(pool.map(function, work))
