"""Which clients train in a round: a seeded sample, online clients only when the clock runs."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fedsparse.clock import ClockSettings, is_online, sample_size
from fedsparse.seeding import rng


def sample_clients(seed: int, server_round: int, partitions: Iterable[int], wanted: int,
                   clock: ClockSettings | None = None) -> list[int]:
    """A seeded sample of ``wanted`` partitions (sorted); with the clock, only online ones, and
    ``clock.over_select`` times as many as wanted."""
    candidates = list(partitions)
    k = min(wanted, len(candidates))
    if clock is not None:
        if clock.availability:
            candidates = [p for p in candidates if is_online(
                seed, server_round, p, clock.profiles[p].availability)]
        k = sample_size(wanted, clock.over_select, len(candidates))
    draw = rng(seed, "sampling", server_round)
    return sorted(int(p) for p in draw.choice(np.array(candidates, dtype=np.int64), size=k,
                                              replace=False))


def evaluation_sample(seed: int, server_round: int, partitions: Iterable[int], wanted: int
                      ) -> list[int]:
    """A seeded sample of ``wanted`` partitions (sorted) for an intermediate evaluation round:
    its own stream, so evaluating fewer clients changes no training draw."""
    candidates = np.array(list(partitions), dtype=np.int64)
    k = min(max(1, wanted), len(candidates))
    draw = rng(seed, "evaluation", server_round)
    return sorted(int(p) for p in draw.choice(candidates, size=k, replace=False))
