"""FedRolex (Alam et al., NeurIPS 2022): ``--method fedrolex``."""

from fedsparse.clients.fedrolex.method import FedRolex

__all__ = ["FedRolex"]
