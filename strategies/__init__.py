"""Server-side aggregation strategies (Flower ``Strategy`` subclasses) and their registry.

To write your own mask-aware strategy, subclass ``MaskAwareStrategy`` and override
``aggregate_updates``; see ``examples/custom_strategy`` and docs/custom-strategies.md.
"""

from __future__ import annotations

from fedsparse.config import ExperimentConfig
from fedsparse.errors import ConfigError
from fedsparse.strategies.base import ClientUpdate, MaskAwareStrategy, StrategyContext
from fedsparse.strategies.fedavg import FedAvg
from fedsparse.strategies.masked_fedavg import MaskedFedAvg
from fedsparse.strategies.registry import (
    BUILTIN,
    StrategySpec,
    available,
    canonical,
    counterpart_hint,
    instantiate,
    resolve,
)


def check_strategy(config: ExperimentConfig, sparse_updates: bool) -> StrategySpec:
    """Resolve the configured strategy, refusing one that cannot aggregate the method's updates
    (``sparse_updates``: the method's uploads may be sparse)."""
    spec = resolve(config.strategy.name)
    if sparse_updates and not spec.accepts_sparse:
        raise ConfigError(f"strategy '{spec.name}' cannot aggregate the sparse updates of method "
                          f"'{config.method.name}': use --strategy {counterpart_hint(spec.name)}")
    return spec


def build_strategy(config: ExperimentConfig, context: StrategyContext) -> MaskAwareStrategy:
    spec = check_strategy(config, context.method.sparse_updates)
    return instantiate(spec, context, dict(config.strategy.options))


__all__ = ["BUILTIN", "ClientUpdate", "FedAvg", "MaskAwareStrategy", "MaskedFedAvg",
           "StrategyContext", "StrategySpec", "available", "build_strategy", "canonical",
           "check_strategy"]
