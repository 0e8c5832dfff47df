"""Find a strategy by name: built-ins, Flower's own, installed plug-ins, or ``module:Class``.

Resolution order for ``--strategy NAME``:
1. a built-in fedsparse name (``fedsparse strategies`` lists them);
2. a Flower strategy name (``fedprox``, ``fedadam``, ``krum``...), dense runs only;
3. an entry point named NAME in the group ``fedsparse.strategies`` (installed plug-ins);
4. ``package.module:Class`` or ``path/to/file.py:Class``.
The class must subclass ``fedsparse.strategies.MaskAwareStrategy`` (then it receives the
validated sparse updates) or Flower's ``Strategy`` (then it runs dense updates only).
``strategy.options`` in the config become keyword arguments of its constructor.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from fedsparse.strategies.base import MaskAwareStrategy, StrategyContext
from fedsparse.strategies.fedavg import FedAvg
from fedsparse.strategies.flower_adapter import FlowerStrategy
from fedsparse.strategies.masked_fedavg import DenseZeroFillAvg, MaskedFedAvg
from fedsparse.strategies.server_optimizers import (
    MaskedFedAdam,
    MaskedFedAvgM,
    MaskedFedYogi,
    MaskedMedian,
    MaskedTrimmedMean,
)
from flwr.serverapp import strategy as flower_strategies
from flwr.serverapp.strategy import Strategy

from fedsparse.errors import ConfigError

ENTRY_POINT_GROUP = "fedsparse.strategies"

BUILTIN: dict[str, type[MaskAwareStrategy]] = {
    "fedavg": FedAvg,
    "masked-fedavg": MaskedFedAvg,
    "masked-fedavgm": MaskedFedAvgM,
    "masked-fedadam": MaskedFedAdam,
    "masked-fedyogi": MaskedFedYogi,
    "masked-median": MaskedMedian,
    "masked-trimmed-mean": MaskedTrimmedMean,
    "pfedgate-dense-avg": DenseZeroFillAvg,
}

FLOWER: dict[str, str] = {
    "fedprox": "FedProx", "flwr-fedavg": "FedAvg", "fedavgm": "FedAvgM", "fedadam": "FedAdam",
    "fedyogi": "FedYogi", "fedadagrad": "FedAdagrad", "fedmedian": "FedMedian",
    "fedtrimmedavg": "FedTrimmedAvg", "krum": "Krum", "multikrum": "MultiKrum", "bulyan": "Bulyan",
}


@dataclass(frozen=True)
class StrategySpec:
    """A resolved strategy: what to build and whether it can take sparse updates."""

    name: str
    cls: type
    flower: bool

    @property
    def accepts_sparse(self) -> bool:
        return not self.flower and bool(getattr(self.cls, "accepts_sparse", True))


def _first_line(obj: Any) -> str:
    return (inspect.getdoc(obj) or "").strip().splitlines()[0] if inspect.getdoc(obj) else ""


def _load_object(target: str) -> Any:
    """``module:Attr`` or ``path/to/file.py:Attr``."""
    location, _, attr = target.rpartition(":")
    if not location or not attr:
        raise ConfigError(f"strategy '{target}' is not a known name nor module:Class: run "
                          "'fedsparse strategies' to list names")
    try:
        if location.endswith(".py"):
            path = Path(location).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"strategy file {path} not found: check the path before ':'")
            module_name = f"fedsparse_plugin_{path.stem}"
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            sys.modules[module_name] = module
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(location)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"strategy '{target}': importing {location} failed "
                          f"({type(exc).__name__}: {exc}): fix the plug-in module") from exc
    if not hasattr(module, attr):
        raise ConfigError(f"strategy '{target}': {location} has no attribute '{attr}'")
    return getattr(module, attr)


def _entry_point(name: str) -> Any | None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                return ep.load()
            except Exception as exc:
                raise ConfigError(f"strategy plug-in '{name}' ({ep.value}) failed to load "
                                  f"({type(exc).__name__}: {exc}): reinstall or fix it") from exc
    return None


def resolve(name: str) -> StrategySpec:
    """Turn a strategy name into a class, or raise a one-line ConfigError."""
    if name in BUILTIN:
        return StrategySpec(name, BUILTIN[name], flower=False)
    if name in FLOWER:
        return StrategySpec(name, getattr(flower_strategies, FLOWER[name]), flower=True)
    obj = _entry_point(name)
    if obj is None:
        if ":" not in name:
            raise ConfigError(f"unknown strategy '{name}': run 'fedsparse strategies' to list "
                              "names, or pass module:Class or path/to/file.py:Class")
        obj = _load_object(name)
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
    rows = [(name, _first_line(cls)) for name, cls in BUILTIN.items()]
    rows += [(name, f"Flower's {cls} (dense runs): {_first_line(getattr(flower_strategies, cls))}")
             for name, cls in FLOWER.items()]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            rows.append((ep.name, f"plug-in {ep.value}: {_first_line(ep.load())}"))
        except Exception as exc:
            rows.append((ep.name, f"plug-in {ep.value} (fails to load: {exc})"))
    return rows
