"""Flower glue for shared-mask methods: build the mask server, pick the first mask before round 1.

``fedtiny`` warms the dense model up on the server's small labelled set, builds K coarse
candidates and runs adaptive BN selection as two query rounds (statistics, then evaluation) on
the clients sampled for round 0; ``prune-at-init`` and ``feddst`` score the initial weights by
``method.pruning.criterion`` (SNIP on the server's set).
"""

from __future__ import annotations

from dataclasses import dataclass
from logging import INFO, WARNING

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from fedsparse.budgets import Budget
from fedsparse.config import ExperimentConfig
from fedsparse.costs import CostModel
from fedsparse.data.federation import Federation
from fedsparse.errors import ConfigError, SimulationError
from fedsparse.fedtiny import average_bn, candidate_masks, mean_losses, prunable_weights
from fedsparse.masks import Masks
from fedsparse.models import build_model
from fedsparse.pruning import magnitude_masks, random_masks, snip_masks
from fedsparse.pruning_wire import (
    BN_EVAL_TYPE,
    BN_STATS_TYPE,
    pack_candidate_stats,
    pack_candidates,
    unpack_candidate_stats,
)
from fedsparse.shared_mask_server import SharedMaskServer
from fedsparse.simulation.grid_io import send_and_receive
from fedsparse.strategies.base import MaskAwareStrategy, reply_partition
from fedsparse.training import train_local

SHARED_MASK_METHODS = ("fedtiny", "prune-at-init", "feddst")
#: candidates aim this far below the budget so the +-2% draw never exceeds it
CANDIDATE_MARGIN = 1.02


def build_mask_server(config: ExperimentConfig, model: torch.nn.Module, budgets: list[Budget],
                      cost_model: CostModel) -> SharedMaskServer | None:
    """The mask server of a shared-mask method; bad budgets fail here, before anything starts."""
    if config.method.name not in SHARED_MASK_METHODS:
        return None
    try:
        server = SharedMaskServer(
            config.method.name, config.method.pruning, prunable_weights(model),
            {n: tuple(p.shape) for n, p in model.named_parameters()}, budgets, cost_model,
            config.train.momentum > 0, config.adjust_until)
    except ValueError as exc:
        raise ConfigError(f"method '{config.method.name}': {exc}") from None
    server.batch_size = config.train.batch_size
    return server


@dataclass
class MaskSetup:
    """Chooses the first shared mask; the server's ``info`` records how (for ``summary.json``)."""

    config: ExperimentConfig
    federation: Federation
    server: SharedMaskServer

    def __call__(self, grid: Grid, strategy: MaskAwareStrategy, arrays: ArrayRecord) -> ArrayRecord:
        pool = self.federation.pool
        model = build_model(self.config.model, pool.input_shape, pool.num_classes)
        model.load_state_dict(arrays.to_torch_state_dict())
        rho = self.server.top_density
        names = self.server.prunable
        self.server.info = {"granularity": self.server.granularity, "prunable_density": rho}
        if rho >= 1.0:
            masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()
                     if n in names}
        elif self.config.method.name == "fedtiny":
            masks = self._fedtiny(grid, strategy, model, rho)
        else:
            masks = self._criterion(model, rho)
        self.server.set_masks(masks)
        state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        self.server.info["density_of_prunable"] = float(
            sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values()))
        return ArrayRecord(array_dict={k: Array(np.array(v, order="C", copy=True))
                                       for k, v in self.server.apply(state).items()})

    def _server_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.federation.pool.tensors(self.federation.server)

    def _criterion(self, model: torch.nn.Module, rho: float) -> Masks:
        params = dict(model.named_parameters())
        weights = {n: params[n].detach() for n in self.server.prunable}
        criterion = self.config.method.pruning.criterion
        self.server.info["criterion"] = criterion
        if criterion == "random":
            return random_masks(weights, rho, self.config.seed)
        if criterion == "snip":
            x, y = self._server_set()
            return snip_masks(model, self.server.prunable, x, y, rho)
        return magnitude_masks(weights, rho)

    def _fedtiny(self, grid: Grid, strategy: MaskAwareStrategy, model: torch.nn.Module,
                 rho: float) -> Masks:
        cfg = self.config.method.pruning
        x, y = self._server_set()
        if cfg.warmup_epochs:
            warm = self.config.train.model_copy(update={"local_epochs": cfg.warmup_epochs})
            generator = torch.Generator().manual_seed(self.config.seed)
            train_local(model, x, y, warm, generator)
        candidates = candidate_masks(model, rho / CANDIDATE_MARGIN, cfg.candidates, self.config.seed)
        best, stats, losses = run_abns(grid, strategy, self.config, model, candidates)
        model.load_state_dict({**model.state_dict(), **stats[best]})
        self.server.info.update({"warmup_samples": len(y), "candidate_losses": losses, "chosen": best})
        log(INFO, "ABNS: candidate losses %s, kept candidate %d", [round(v, 4) for v in losses], best)
        return candidates[best]


def run_abns(grid: Grid, strategy: MaskAwareStrategy, config: ExperimentConfig,
             model: torch.nn.Module, candidates: list[Masks]
             ) -> tuple[int, list[dict[str, torch.Tensor]], list[float]]:
    """Adaptive BN selection's two query rounds; returns (best, averaged stats, mean losses)."""
    cfg = config.method.pruning
    timeout = config.simulation.round_timeout
    partitions = strategy.sample_partitions(0)
    base = {"arrays": ArrayRecord(model.state_dict()), "candidates": pack_candidates(candidates),
            "config": ConfigRecord({"candidates": len(candidates), "bn-batches": cfg.bn_batches})}

    def ask(message_type: str, extra: dict[str, ArrayRecord]) -> list[Message]:
        content = RecordDict({**base, **extra})
        messages = [Message(content, message_type=message_type, dst_node_id=strategy.node_of[p])
                    for p in partitions]
        replies = [r for r in send_and_receive(grid, messages, timeout) if not r.has_error()]
        return sorted(replies, key=reply_partition)

    reports: list[list[tuple[dict[str, torch.Tensor], int]]] = [[] for _ in candidates]
    for reply in ask(BN_STATS_TYPE, {}):
        try:
            stats = unpack_candidate_stats(reply.content["bn-stats"], len(candidates))
            count = int(reply.content["metrics"]["num-examples"])
            _check_stats(stats, model)
        except (KeyError, ValueError) as exc:
            log(WARNING, "ABNS: statistics of node %d rejected: %s", reply.metadata.src_node_id, exc)
            continue
        for k, bn in enumerate(stats):
            reports[k].append((bn, count))
    if not reports[0] or not all(reports):
        raise SimulationError("no client returned usable BN statistics in adaptive BN selection: "
                              "check the clients' logs")
    averaged = [average_bn(rows) for rows in reports]
    losses: list[list[tuple[float, int]]] = [[] for _ in candidates]
    for reply in ask(BN_EVAL_TYPE, {"bn-stats": pack_candidate_stats(averaged)}):
        metrics = reply.content["metrics"]
        sums = [float(metrics.get(f"loss-sum-{k}", float("nan"))) for k in range(len(candidates))]
        count = int(metrics.get("num-examples", 0))
        if count <= 0 or not all(np.isfinite(sums)):
            log(WARNING, "ABNS: losses of node %d rejected", reply.metadata.src_node_id)
            continue
        for k, value in enumerate(sums):
            losses[k].append((value, count))
    if not losses[0]:
        raise SimulationError("no client returned usable candidate losses in adaptive BN selection")
    means = mean_losses(losses)
    return int(np.argmin(means)), averaged, means


def _check_stats(stats: list[dict[str, torch.Tensor]], model: torch.nn.Module) -> None:
    buffers = {n: b for n, b in model.state_dict().items()
               if n.endswith(("running_mean", "running_var"))}
    for bn in stats:
        if set(bn) != set(buffers):
            raise ValueError("BN statistics cover the wrong buffers")
        for name, value in bn.items():
            if value.shape != buffers[name].shape:
                raise ValueError(f"{name}: wrong shape {tuple(value.shape)}")
