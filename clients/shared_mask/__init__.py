"""The shared-mask family's common parts: options, mask server, pruning algorithms, method base.

Its members are separate methods: ``clients/fedtiny``, ``clients/prune_at_init``,
``clients/feddst``.
"""

from fedsparse.clients.shared_mask.method import SharedMask
from fedsparse.clients.shared_mask.options import PruningOptions, Schedule
from fedsparse.clients.shared_mask.server import SharedMaskServer

__all__ = ["PruningOptions", "Schedule", "SharedMask", "SharedMaskServer"]
