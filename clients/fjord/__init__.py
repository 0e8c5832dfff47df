"""FjORD (Horváth et al., NeurIPS 2021): ``--method fjord``."""

from fedsparse.clients.fjord.method import FjORD

__all__ = ["FjORD"]
