"""Mask-aware server optimizers (FedAvgM, FedAdam, FedYogi) and robust aggregators."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedsparse.server_opt import ServerOptimizer, robust_aggregate
from fedsparse.strategies.base import ClientUpdate, MaskAwareStrategy, StrategyContext


class _MaskedServerOpt(MaskAwareStrategy):
    kind = "avgm"

    def __init__(self, context: StrategyContext, server_lr: float = 1.0, momentum: float = 0.9,
                 beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        super().__init__(context)
        self.optimizer = ServerOptimizer(self.kind, lr=server_lr, momentum=momentum, beta1=beta1,
                                         beta2=beta2, tau=tau)

    def aggregate_updates(self, global_arrays: Mapping[str, np.ndarray],
                          updates: list[ClientUpdate]) -> dict[str, np.ndarray]:
        return self.optimizer.step(global_arrays, [u.update for u in updates],
                                   [u.num_examples for u in updates])

    def after_method(self, stepped: Mapping[str, np.ndarray],
                     adjusted: Mapping[str, np.ndarray]) -> None:
        self.optimizer.forget_where_changed(stepped, adjusted)


class MaskedFedAvgM(_MaskedServerOpt):
    """Server momentum on the per-coordinate averaged pseudo-gradient (Hsu et al. 2019)."""

    kind = "avgm"


class MaskedFedAdam(_MaskedServerOpt):
    """FedAdam (Reddi et al. 2021) with state only where coordinates were updated."""

    kind = "adam"


class MaskedFedYogi(_MaskedServerOpt):
    """FedYogi (Reddi et al. 2021) with state only where coordinates were updated."""

    kind = "yogi"


class MaskedMedian(MaskAwareStrategy):
    """Coordinate-wise median over the clients holding each coordinate."""

    def aggregate_updates(self, global_arrays: Mapping[str, np.ndarray],
                          updates: list[ClientUpdate]) -> dict[str, np.ndarray]:
        return robust_aggregate(global_arrays, [u.update for u in updates], stats=self.report.notes)


class MaskedTrimmedMean(MaskAwareStrategy):
    """Coordinate-wise trimmed mean over holders, dropping a ``trim`` share at each end."""

    def __init__(self, context: StrategyContext, trim: float = 0.1) -> None:
        super().__init__(context)
        if not 0.0 <= trim < 0.5:
            raise ValueError("trim must be in [0, 0.5)")
        self.trim = trim

    def aggregate_updates(self, global_arrays: Mapping[str, np.ndarray],
                          updates: list[ClientUpdate]) -> dict[str, np.ndarray]:
        return robust_aggregate(global_arrays, [u.update for u in updates], trim=self.trim,
                                stats=self.report.notes)
