"""Client-side training logic, one module per method (plain torch, free of Flower)."""

from fedsparse.clients.dense import DenseClient, LocalData
from fedsparse.clients.fedavg_ft import FedAvgFTClient
from fedsparse.clients.magnitude import MagnitudeClient
from fedsparse.clients.pfedgate import PFedGateClient

METHODS: dict[str, type[DenseClient]] = {
    "dense": DenseClient,
    "fedavg-ft": FedAvgFTClient,
    "magnitude": MagnitudeClient,
    "pfedgate": PFedGateClient,
}

__all__ = ["METHODS", "DenseClient", "FedAvgFTClient", "LocalData", "MagnitudeClient",
           "PFedGateClient"]
