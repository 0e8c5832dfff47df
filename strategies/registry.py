"""Find a strategy by name: built-ins, Flower's own, installed plug-ins, or ``module:Class``.

Resolution order for ``--strategy NAME``:
1. a built-in fedsparse name (``fedsparse strategies`` lists them);
2. a Flower strategy name in any case (``FedProx``, ``FedAdam``, ``Krum``...), dense runs only:
   with a method whose updates are sparse, a Flower name that has a mask-aware counterpart
   means that counterpart (``FedAdam`` -> ``masked-fedadam``, ``FedMedian`` -> ``masked-median``);
3. an entry point named NAME in the group ``fedsparse.strategies`` (installed plug-ins);
4. ``package.module:Class`` or ``path/to/file.py:Class``.
The class must subclass ``fedsparse.strategies.MaskAwareStrategy`` (then it receives the
validated sparse updates) or Flower's ``Strategy`` (then it runs dense updates only).
``strategy.options`` in the config become keyword arguments of its constructor.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from flwr.serverapp import strategy as flower_strategies
from flwr.serverapp.strategy import Strategy

from fedsparse.errors import ConfigError
from fedsparse.plugins import (
    did_you_mean,
    entry_point,
    entry_point_names,
    first_line,
    installed,
    load_object,
)
from fedsparse.strategies.base import MaskAwareStrategy, StrategyContext
from fedsparse.strategies.fedavg import FedAvg
from fedsparse.strategies.flower_adapter import FlowerStrategy
from fedsparse.strategies.masked_fedavg import MaskedFedAvg, ZeroDeltaAvg
from fedsparse.strategies.server_optimizers import (
    MaskedFedAdam,
    MaskedFedAvgM,
    MaskedFedYogi,
    MaskedMedian,
    MaskedTrimmedMean,
)

ENTRY_POINT_GROUP = "fedsparse.strategies"

BUILTIN: dict[str, type[MaskAwareStrategy]] = {
    "fedavg": FedAvg,
    "masked-fedavg": MaskedFedAvg,
    "masked-fedavgm": MaskedFedAvgM,
    "masked-fedadam": MaskedFedAdam,
    "masked-fedyogi": MaskedFedYogi,
    "masked-median": MaskedMedian,
    "masked-trimmed-mean": MaskedTrimmedMean,
    "zero-delta-avg": ZeroDeltaAvg,
    # the name this rule had when it wrongly counted unsent coordinates as zero values
    "pfedgate-dense-avg": ZeroDeltaAvg,
}

FLOWER: dict[str, str] = {
    "fedprox": "FedProx", "flwr-fedavg": "FedAvg", "fedavgm": "FedAvgM", "fedadam": "FedAdam",
    "fedyogi": "FedYogi", "fedadagrad": "FedAdagrad", "fedmedian": "FedMedian",
    "fedtrimmedavg": "FedTrimmedAvg", "krum": "Krum", "multikrum": "MultiKrum", "bulyan": "Bulyan",
}

#: a strategy that averages dense models -> the mask-aware strategy doing the same per coordinate
MASKED_COUNTERPART: dict[str, str] = {
    "fedavg": "masked-fedavg", "flwr-fedavg": "masked-fedavg", "fedavgm": "masked-fedavgm",
    "fedadam": "masked-fedadam", "fedyogi": "masked-fedyogi", "fedmedian": "masked-median",
    "fedtrimmedavg": "masked-trimmed-mean",
}


def canonical(name: str, sparse_updates: bool) -> tuple[str, str | None]:
    """The registered name a user's spelling means for a method whose uploads are
    (``sparse_updates``) or are not sparse, and a note when the name was mapped to a mask-aware
    counterpart. Plug-in names and ``module:Class`` are returned as given."""
    lower = name.lower()
    if ":" in name or (lower not in BUILTIN and lower not in FLOWER):
        return name, None
    if sparse_updates and lower in MASKED_COUNTERPART:
        target = MASKED_COUNTERPART[lower]
        return target, (f"strategy '{name}' runs as '{target}', its mask-aware counterpart: the "
                        "method's updates are sparse")
    return lower, None


def counterpart_hint(name: str) -> str:
    """What to use instead of a dense-only strategy for sparse updates."""
    return MASKED_COUNTERPART.get(name.lower(), "masked-fedavg (or masked-median, "
                                                "masked-trimmed-mean for robustness)")


@dataclass(frozen=True)
class StrategySpec:
    """A resolved strategy: what to build and whether it can take sparse updates."""

    name: str
    cls: type
    flower: bool

    @property
    def accepts_sparse(self) -> bool:
        return not self.flower and bool(getattr(self.cls, "accepts_sparse", True))


def resolve(name: str) -> StrategySpec:
    """Turn a strategy name into a class, or raise a one-line ConfigError."""
    name, _ = canonical(name, sparse_updates=False)
    if name in BUILTIN:
        return StrategySpec(name, BUILTIN[name], flower=False)
    if name in FLOWER:
        return StrategySpec(name, getattr(flower_strategies, FLOWER[name]), flower=True)
    obj = entry_point(ENTRY_POINT_GROUP, name, "strategy")
    if obj is None:
        if ":" not in name:
            known = [*BUILTIN, *FLOWER, *entry_point_names(ENTRY_POINT_GROUP)]
            raise ConfigError(f"unknown strategy '{name}'{did_you_mean(name, known)}: run "
                              "'fedsparse strategies' to list names, or pass module:Class or "
                              "path/to/file.py:Class")
        obj = load_object(name, "strategy")
    if inspect.isclass(obj) and issubclass(obj, MaskAwareStrategy):
        return StrategySpec(name, obj, flower=False)
    if inspect.isclass(obj) and issubclass(obj, Strategy):
        return StrategySpec(name, obj, flower=True)
    raise ConfigError(f"strategy '{name}' is a {type(obj).__name__}, not a subclass of "
                      "fedsparse.strategies.MaskAwareStrategy or flwr's Strategy")


def instantiate(spec: StrategySpec, context: StrategyContext,
                options: dict[str, Any]) -> MaskAwareStrategy:
    """Build the strategy with the config's options as keyword arguments."""
    try:
        if spec.flower:
            return FlowerStrategy(context, spec.cls(**options))
        return spec.cls(context, **options)
    except TypeError as exc:
        raise ConfigError(f"strategy '{spec.name}' rejected strategy.options "
                          f"{sorted(options)}: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"strategy '{spec.name}': {exc}: fix strategy.options") from exc


def available() -> list[tuple[str, str]]:
    """(name, one-line description) of every strategy that can be named."""
    rows = [(name, first_line(cls)) for name, cls in BUILTIN.items()]
    rows += [(name, f"Flower's {cls} (dense runs): {first_line(getattr(flower_strategies, cls))}")
             for name, cls in FLOWER.items()]
    for name, target, obj in installed(ENTRY_POINT_GROUP):
        if isinstance(obj, Exception):
            rows.append((name, f"plug-in {target} (fails to load: {obj})"))
        else:
            rows.append((name, f"plug-in {target}: {first_line(obj)}"))
    return rows
