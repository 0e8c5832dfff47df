"""Options of the shared-mask family (config section ``method.pruning``, shared by all three)."""

from __future__ import annotations

from dataclasses import dataclass
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
                                                             "(Delta T); default T_end / (8 x "
                                                             "the scored units), so that every "
                                                             "unit is adjusted about 8 times")
    adjust_until: int | None = Field(None, ge=1, description="last round that adjusts (T_end); "
                                                             "default 3/4 of the rounds")
    alpha: float | None = Field(None, gt=0.0, le=1.0,
                                description="initial share of a unit adjusted (decays by a cosine "
                                            "to T_end); default 0.5 for weights, 0.1 for whole "
                                            "filters (granularity filter)")
    granularity: Literal["auto", "model", "block", "layer", "chunk", "filter"] = Field(
        "auto", description="scored unit per adjustment (chunk: one layer, its gradient formed a "
                            "few rows at a time); auto: the coarsest that fits every client's "
                            "memory budget, or twice its sparse training memory if it declares "
                            "none; filter: prune and grow whole channels (filters, neurons), one "
                            "layer's channels per adjustment, every tier trained as a narrower "
                            "network (fedtiny, prune-at-init)")

    preset: Literal["tuned", "authors"] = Field(
        "tuned", description="defaults of the options left unset: 'tuned' (chosen by measurement "
                             "on cnn-bn) or 'authors' (the method's authors' schedule: FedTiny and "
                             "FedMef alpha 0.2, all layers at once, T_end 1/5 of the rounds, "
                             "Delta T T_end / 10, sample-weighted gradient pairs; FedDST "
                             "readjusts after local training every 10 rounds until half the run)")
    pair_weights: Literal["equal", "samples"] = Field(
        "equal", description="fedtiny, fedmef: clients' reported gradients averaged equally or by "
                             "their training samples ('authors' preset: samples)")
    readjust: Literal["before-training", "after-training"] = Field(
        "before-training", description="feddst: a client prunes and grows before its local "
                                       "training or after it ('authors' preset: after)")

    activation_keep: float = Field(
        0.5, gt=0.0, le=1.0, description="fedmef: share of each Conv2d / Linear input (but the "
                                         "first layer's) kept for backward, by magnitude (scaled "
                                         "activation pruning; 1 - the authors' gamma)")
    extrusion: float = Field(
        1.0, ge=0.0, description="fedmef: lambda of budget-aware extrusion, the L2-norm penalty "
                                 "on the weights an adjustment round will prune (0: off)")

    @property
    def initial_alpha(self) -> float:
        """alpha, or its default: 0.5 for weights (tuned on cnn-bn at rho = 0.01; the authors
        use 0.2), 0.1 for whole filters, where moving half of a layer's channels at once would
        make a new network."""
        if self.alpha is not None:
            return self.alpha
        return 0.1 if self.granularity == "filter" else 0.5

    def end_round(self, rounds: int) -> int:
        """T_end of progressive pruning: ``adjust_until``, or 3/4 of the run's rounds."""
        return self.adjust_until if self.adjust_until is not None else max(1, (3 * rounds) // 4)

    def every(self, rounds: int, units: int = 1) -> int:
        """Delta T: ``adjust_every``, or T_end / (8 x ``units``) rounds (at least 1), so the
        schedule scales with the run and every scored unit (one per adjustment, in turn) is
        adjusted about 8 times: a 30-round run at layer granularity adjusts every round."""
        return self.every_until(self.end_round(rounds), units)

    def every_until(self, end_round: int, units: int = 1) -> int:
        """``every`` for a run whose T_end is ``end_round``."""
        if self.adjust_every is not None:
            return self.adjust_every
        return max(1, end_round // (8 * max(1, units)))


@dataclass(frozen=True)
class Schedule:
    """A method's authors' settings, applied by ``preset: authors`` to the options left at their
    defaults (a config's method section arrives with every option filled in, so "at its
    default" is what "not set" can mean).
    Round counts are shares of the run where the authors' are (FedTiny: T_end 100 of 500 rounds,
    Delta T 10 = T_end / 10), so the schedule keeps its shape in a short run."""

    alpha: float | None = None
    end_share: float | None = None
    every: int | None = None
    every_share_of_end: float | None = None
    granularity: str | None = None
    pair_weights: str | None = None
    readjust: str | None = None

    def apply(self, options: PruningOptions, rounds: int) -> PruningOptions:
        """``options`` with the unset ones taken from this schedule."""
        given = {name for name, field in type(options).model_fields.items()
                 if getattr(options, name) != field.default}
        update: dict[str, object] = {}
        if self.alpha is not None and "alpha" not in given:
            update["alpha"] = self.alpha
        end = options.adjust_until
        if self.end_share is not None and "adjust_until" not in given:
            end = max(1, round(self.end_share * rounds))
            update["adjust_until"] = end
        if "adjust_every" not in given:
            end = end if end is not None else options.end_round(rounds)
            if self.every is not None:
                update["adjust_every"] = self.every
            elif self.every_share_of_end is not None:
                update["adjust_every"] = max(1, round(self.every_share_of_end * end))
        for name in ("granularity", "pair_weights", "readjust"):
            value = getattr(self, name)
            if value is not None and name not in given:
                update[name] = value
        return options.model_copy(update=update)
