"""Prune-at-init baselines of FedTiny's paper (``--method prune-at-init``)."""

from fedsparse.clients.prune_at_init.method import PruneAtInit

__all__ = ["PruneAtInit"]
