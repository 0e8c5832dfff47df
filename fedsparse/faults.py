"""Deterministic fault injection: which client fails in which round, and how.

The choice depends only on (seed, round, partition), so a run with injected faults is as
reproducible as any other, and tests can compute the expected failures independently.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedsparse.seeding import rng

FAULT_KINDS = ("crash", "hang")


class InjectedCrash(RuntimeError):
    """Raised by a client chosen to crash this round."""


def injected_fault(seed: int, server_round: int, partition_id: int, rate: float,
                   kinds: Sequence[str] = FAULT_KINDS) -> str | None:
    """The fault this client suffers in this training round, or None."""
    if rate <= 0 or not kinds:
        return None
    draw = rng(seed, "faults", server_round, partition_id)
    if draw.random() >= rate:
        return None
    return str(kinds[int(draw.integers(len(kinds)))])
