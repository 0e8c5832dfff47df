"""The dense reference method (``--method dense``)."""

from fedsparse.clients.dense.method import Dense

__all__ = ["Dense"]
