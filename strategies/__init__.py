"""Server-side aggregation strategies (Flower ``Strategy`` subclasses) and their registry."""

from __future__ import annotations

from fedsparse.strategies.base import MaskAwareStrategy, StrategyContext
from fedsparse.strategies.fedavg import FedAvg
from fedsparse.strategies.masked_fedavg import MaskedFedAvg

from fedsparse.config import ExperimentConfig
from fedsparse.errors import ConfigError

BUILTIN: dict[str, tuple[type[MaskAwareStrategy], str]] = {
    "fedavg": (FedAvg, "FedAvg over full models (dense methods only)"),
    "masked-fedavg": (MaskedFedAvg, "each coordinate averaged over the clients that sent it"),
}


def check_strategy(config: ExperimentConfig) -> type[MaskAwareStrategy]:
    """The strategy class named in the config, refusing combinations that cannot work."""
    name = config.strategy.name
    if name not in BUILTIN:
        raise ConfigError(f"unknown strategy '{name}': choose one of {', '.join(sorted(BUILTIN))}")
    if config.strategy.options:
        raise ConfigError(f"strategy '{name}' takes no options, got "
                          f"{sorted(config.strategy.options)}: remove strategy.options")
    cls = BUILTIN[name][0]
    if config.method.name != "dense" and not cls.accepts_sparse:
        raise ConfigError(f"strategy '{name}' cannot aggregate the sparse updates of method "
                          f"'{config.method.name}': use --set strategy.name=masked-fedavg")
    return cls


def build_strategy(config: ExperimentConfig, context: StrategyContext) -> MaskAwareStrategy:
    return check_strategy(config)(context)


__all__ = ["BUILTIN", "FedAvg", "MaskAwareStrategy", "MaskedFedAvg", "StrategyContext",
           "build_strategy", "check_strategy"]
