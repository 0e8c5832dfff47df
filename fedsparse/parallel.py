"""Threads for the server's per-update numpy and torch work.

Decoding and aggregating updates is mostly numpy and torch kernels that release the GIL, so a
thread per core runs them side by side without copying any update to another process.
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
