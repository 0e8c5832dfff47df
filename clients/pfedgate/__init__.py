"""pFedGate (Chen et al., ICML 2023): gated sparse submodels (``--method pfedgate``).

``method`` holds the client (joint training of model and private gate, gated evaluation) and
the server part (novel clients, client-measured costs); ``gating`` the blocks, gate, knapsack
and straight-through estimator.
"""

from fedsparse.clients.pfedgate.method import PFedGate, PFedGateOptions

__all__ = ["PFedGate", "PFedGateOptions"]
