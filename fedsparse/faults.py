"""Deterministic fault injection: which client fails in which round, and how.

The choice depends only on (seed, round, partition), so a run with injected faults is as
reproducible as any other, and tests can compute the expected failures independently.

Kinds: ``crash`` (the client raises), ``hang`` (it answers after the round timeout), and two
adversarial ones for testing strategies: ``liar`` (trains honestly, then claims 1000x its
examples, no samples seen and, where a method reports them, no FLOPs and almost no memory) and
``byzantine`` (uploads its update reversed and scaled by ``BYZANTINE_SCALE``: w - 10 (w' - w)).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from fedsparse.seeding import rng

FAULT_KINDS = ("crash", "hang")
ATTACK_KINDS = ("liar", "byzantine")
#: a byzantine client sends w + BYZANTINE_SCALE * (w' - w) instead of its trained w'
BYZANTINE_SCALE = -10.0


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


def lie(metrics: Mapping[str, float]) -> dict[str, float]:
    """What a liar reports instead of ``metrics``."""
    out = {**metrics, "num-examples": 1000.0 * metrics["num-examples"], "samples-seen": 0.0}
    for key, value in (("train-flops", 0.0), ("memory-bytes", 1.0), ("compute-density", 0.0)):
        if key in out:
            out[key] = value
    return out


@torch.no_grad()
def poison(model: nn.Module, received: Mapping[str, torch.Tensor]) -> None:
    """Turn a trained model into a byzantine upload: every parameter's update reversed and
    scaled (buffers such as BatchNorm statistics are left as trained)."""
    for name, param in model.named_parameters():
        param.copy_(received[name] + BYZANTINE_SCALE * (param - received[name]))
