"""FedMef (Huang et al., CVPR 2024): ``--method fedmef``.

``method`` holds the method (FedTiny's adjustment with extrusion and pruned activations);
``extrusion`` and ``activations`` the plain-torch pieces.
"""

from fedsparse.clients.fedmef.method import FedMef

__all__ = ["FedMef"]
