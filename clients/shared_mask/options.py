"""Options of the shared-mask family (config section ``method.pruning``, shared by all three)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedsparse.method import MethodOptions


class PruningOptions(MethodOptions):
    """Shared-mask sparse training: FedTiny (Huang et al. 2023) and its baselines.

    Every client trains the server's mask at its tier's density (tiers nested); ``fedtiny``
    picks the mask by adaptive BN selection and refines it by progressive prune-and-grow,
    ``prune-at-init`` fixes it once by ``criterion``, ``feddst`` lets clients prune-and-grow
    locally and the server prune the average back to the density, ``fedmef`` adjusts as
    FedTiny from its first (magnitude or random) mask, extrudes what each adjustment will prune
    and trains with pruned activations.
    """

    criterion: Literal["magnitude", "snip", "random"] = Field(
        "magnitude", description="prune-at-init and feddst: how the first mask is scored")
    warmup_epochs: int = Field(5, ge=0, description="server warm-up epochs of the dense model "
                                                     "(partition.server_warmup_epochs overrides)")
    allocation: Literal["uniform", "er", "erk"] = Field(
        "erk", description="per-layer densities of the first mask (magnitude, random, FedTiny's "
                           "candidates): the same for every layer, or Erdos-Renyi(-Kernel)")
    candidates: int = Field(5, ge=1, description="FedTiny: coarse candidate masks for ABNS")
    bn_batches: int = Field(4, ge=1, description="local mini-batches per candidate in the "
                                                 "BN-statistics and evaluation rounds")
    adjust_every: int | None = Field(None, ge=1, description="rounds between mask adjustments "
                                                             "(Delta T); default T_end / 8, so "
                                                             "about 8 adjustments in any run")
    adjust_until: int | None = Field(None, ge=1, description="last round that adjusts (T_end); "
                                                             "default 3/4 of the rounds")
    alpha: float = Field(0.1, gt=0.0, le=1.0, description="initial share of a layer adjusted")
    granularity: Literal["auto", "model", "block", "layer", "chunk", "filter"] = Field(
        "auto", description="scored unit per adjustment (chunk: one layer, its gradient formed a "
                            "few rows at a time); auto: the coarsest that fits every client's "
                            "memory budget, or twice its sparse training memory if it declares "
                            "none; filter: prune and grow whole channels (filters, neurons), one "
                            "layer's channels per adjustment, every tier trained as a narrower "
                            "network (fedtiny, prune-at-init)")

    activation_keep: float = Field(
        0.5, gt=0.0, le=1.0, description="fedmef: share of each Conv2d / Linear input (but the "
                                         "first layer's) kept for backward, by magnitude (scaled "
                                         "activation pruning; 1 - the authors' gamma)")
    extrusion: float = Field(
        1.0, ge=0.0, description="fedmef: lambda of budget-aware extrusion, the L2-norm penalty "
                                 "on the weights an adjustment round will prune (0: off)")

    def end_round(self, rounds: int) -> int:
        """T_end of progressive pruning: ``adjust_until``, or 3/4 of the run's rounds."""
        return self.adjust_until if self.adjust_until is not None else max(1, (3 * rounds) // 4)

    def every(self, rounds: int) -> int:
        """Delta T: ``adjust_every``, or T_end / 8 rounds (at least 1), so the schedule scales
        with the run instead of leaving a 30-round run four adjustments."""
        return self.adjust_every if self.adjust_every is not None else max(1, self.end_round(rounds) // 8)
