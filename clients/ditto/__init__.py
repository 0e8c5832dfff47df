"""Ditto, personalisation by a regularised personal model (``--method ditto``)."""

from fedsparse.clients.ditto.method import Ditto, DittoOptions

__all__ = ["Ditto", "DittoOptions"]
