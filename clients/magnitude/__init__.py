"""Magnitude submodels, the simplest budget-respecting sparse baseline (``--method magnitude``)."""

from fedsparse.clients.magnitude.method import Magnitude

__all__ = ["Magnitude"]
