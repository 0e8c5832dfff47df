"""FedDST, dynamic sparse training with differing client masks (``--method feddst``)."""

from fedsparse.clients.feddst.method import FedDST

__all__ = ["FedDST"]
