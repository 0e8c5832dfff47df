"""Client-side training logic, one module per method (plain torch, free of Flower)."""

from fedsparse.clients.dense import DenseClient

METHODS = {"dense": DenseClient}

__all__ = ["METHODS", "DenseClient"]
