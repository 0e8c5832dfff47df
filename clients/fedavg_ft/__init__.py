"""FedAvg-FT, the fine-tuning personalisation baseline (``--method fedavg-ft``)."""

from fedsparse.clients.fedavg_ft.method import FedAvgFT, FedAvgFTOptions

__all__ = ["FedAvgFT", "FedAvgFTOptions"]
