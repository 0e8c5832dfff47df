"""Prune-at-init: one mask fixed before round 1 by ``criterion`` (magnitude, SNIP or random)."""

from __future__ import annotations

from fedsparse.clients.shared_mask import SharedMask


class PruneAtInit(SharedMask):
    """A fixed mask chosen before training by magnitude, SNIP (server's set) or at random."""

    name = "prune-at-init"
    adjust = "fixed"
