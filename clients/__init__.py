"""Client-side training logic, one module per method (plain torch, free of Flower)."""

from fedsparse.clients.dense import DenseClient, LocalData
from fedsparse.clients.magnitude import MagnitudeClient

METHODS: dict[str, type[DenseClient]] = {"dense": DenseClient, "magnitude": MagnitudeClient}

__all__ = ["METHODS", "DenseClient", "LocalData", "MagnitudeClient"]
