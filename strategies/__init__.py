"""Server-side aggregation strategies (Flower ``Strategy`` subclasses) and their registry."""

from __future__ import annotations

from fedsparse.strategies.fedavg import SeededFedAvg

from fedsparse.config import ExperimentConfig
from fedsparse.errors import ConfigError

BUILTIN = {"fedavg": "Flower FedAvg with seeded, partition-aware sampling (dense reference)"}


def build_strategy(config: ExperimentConfig) -> SeededFedAvg:
    """Instantiate the strategy named in the config."""
    name = config.strategy.name
    if name == "fedavg":
        if config.strategy.options:
            raise ConfigError(f"strategy 'fedavg' takes no options, got "
                              f"{sorted(config.strategy.options)}: remove strategy.options")
        return SeededFedAvg(seed=config.seed, clients_per_round=config.clients_per_round)
    raise ConfigError(f"unknown strategy '{name}': choose one of {', '.join(sorted(BUILTIN))}")


__all__ = ["BUILTIN", "SeededFedAvg", "build_strategy"]
