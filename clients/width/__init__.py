"""Width-based submodels (HeteroFL, FjORD, FedRolex): the shared base."""

from fedsparse.clients.width.method import ScaledWidthOptions, WidthMethod, WidthOptions

__all__ = ["ScaledWidthOptions", "WidthMethod", "WidthOptions"]
