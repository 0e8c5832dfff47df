"""Client-side training logic, one module per method (plain torch, free of Flower)."""

from fedsparse.clients.dense import DenseClient, LocalData
from fedsparse.clients.fedavg_ft import FedAvgFTClient
from fedsparse.clients.magnitude import MagnitudeClient
from fedsparse.clients.pfedgate import PFedGateClient
from fedsparse.clients.shared_mask import FedDSTClient, FedTinyClient, PruneAtInitClient

METHODS: dict[str, type[DenseClient]] = {
    "dense": DenseClient,
    "fedavg-ft": FedAvgFTClient,
    "magnitude": MagnitudeClient,
    "pfedgate": PFedGateClient,
    "fedtiny": FedTinyClient,
    "prune-at-init": PruneAtInitClient,
    "feddst": FedDSTClient,
}

__all__ = ["METHODS", "DenseClient", "FedAvgFTClient", "FedDSTClient", "FedTinyClient", "LocalData",
           "MagnitudeClient", "PFedGateClient", "PruneAtInitClient"]
