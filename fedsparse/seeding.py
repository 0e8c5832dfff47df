"""Named random streams: one seed fixes every draw, each purpose draws from its own stream.

Each purpose has a fixed tag, so adding a draw in one place never shifts another's numbers.
The tags are the values fedsparse has always used (runs before this module reproduce).
"""

from __future__ import annotations

import numpy as np

#: purpose -> tag mixed into the seed. Streams keyed by (seed, tag, *keys): equal tags with
#: keys of different lengths ("server-set", "faults") are independent streams.
STREAMS: dict[str, int] = {
    "client-split": 7,        # a client's train/val/test split, keyed by client
    "sampling": 11,           # clients sampled per round, keyed by round
    "budgets": 13,            # which client declares which tier
    "novel": 17,              # clients that never train (pFedGate's novel clients)
    "server-set": 23,         # the samples the server holds back
    "faults": 23,             # injected failures, keyed by round and client
    "availability": 29,       # the clock's online clients, keyed by round and client
    "candidates": 31,         # FedTiny's candidate per-layer densities
    "widths": 37,             # FjORD's per-batch widths, keyed by round and client
    "evaluation": 41,         # clients evaluated at an intermediate round, keyed by round
}


def rng(seed: int, stream: str, *keys: int) -> np.random.Generator:
    """A numpy generator for ``stream``, keyed by e.g. round and client."""
    return np.random.default_rng([seed, STREAMS[stream], *keys])


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """The torch seed of one client's work in one round (training: the round; evaluation: minus
    the round; a method's query rounds: 0)."""
    return (seed * 1_000_003 + server_round * 10_007 + partition_id) % (2**63)


def private_init_seed(seed: int, partition_id: int) -> int:
    """The torch seed of a client's private module (e.g. a pFedGate gate) when first created."""
    return seed * 7919 + partition_id


def personal_seed(seed: int, server_round: int, partition_id: int) -> int:
    """The torch seed of a client's second model in one round (Ditto's personal model), apart
    from ``client_seed`` so the global model's training is what FedAvg's would be."""
    return (client_seed(seed, server_round, partition_id) * 31 + 17) % (2**63)
