"""FedAvg (McMahan et al. 2017) for dense updates, on the mask-aware base.

When every update is dense, the per-coordinate average over holders is exactly the weighted
mean of full models, so FedAvg is ``MaskedFedAvg`` that refuses sparse updates (with a message
pointing at ``masked-fedavg``).
"""

from __future__ import annotations

from fedsparse.strategies.masked_fedavg import MaskedFedAvg


class FedAvg(MaskedFedAvg):
    """Sample-weighted average of full models."""

    accepts_sparse = False
