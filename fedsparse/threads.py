"""Map a function over items on a thread per core, for work that spends its time in numpy and
torch (they release the GIL): decoding and validating many client updates."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_on_cores(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[fn(x) for x in items]`` in order, on up to one thread per core (none for one item)."""
    workers = min(len(items), os.cpu_count() or 1)
    if workers < 2:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))
