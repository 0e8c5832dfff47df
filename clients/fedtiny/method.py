"""FedTiny (Huang et al., ICDCS 2023): adaptive BN selection of a coarse mask, then progressive
prune-and-grow from clients' top-K gradients at pruned positions.

Server: warm the dense model up on the server's small labelled set, build ``candidates`` coarse
masks, and run adaptive BN selection as two query rounds (``bn_stats``: clients re-estimate each
candidate's BN statistics, averaged by samples; ``bn_eval``: clients report each candidate's loss
with the averaged statistics); the lowest mean loss wins. In adjustment rounds clients upload,
beside their masked update, the top-K gradient entries at pruned positions of the scored unit
(a ``pairs`` record, validated), and the server prunes and grows from their average.
"""

from __future__ import annotations

from collections.abc import Mapping
from logging import getLogger
from typing import Any

import numpy as np
import torch
from torch import nn

from fedsparse.budgets import Budget
from fedsparse.clients.fedtiny.algorithm import (
    average_bn,
    candidate_bn_stats,
    candidate_loss_sums,
    candidate_masks,
    local_batches,
    mean_losses,
)
from fedsparse.clients.shared_mask import PruningOptions, Schedule, SharedMask
from fedsparse.clients.shared_mask.filter_server import FilterMaskServer
from fedsparse.clients.shared_mask.filters import (
    candidate_counts,
    growth_scores,
    keep_by_importance,
    report_top,
)
from fedsparse.clients.shared_mask.method import adjust_plan, one_batch
from fedsparse.clients.shared_mask.pruning import (
    pruned_gradients,
    streamed_topk_pruned_gradients,
    topk_pruned_gradients,
)
from fedsparse.clients.shared_mask.server import Pairs, PairsRejected
from fedsparse.errors import SimulationError
from fedsparse.masks import Masks, pack_mask, unpack_mask
from fedsparse.method import Ask, ClientTask, FitResult, Records
from fedsparse.seeding import rng
from fedsparse.updates import UpdateRejected

log = getLogger("flwr")

PAIRS = "pairs"
ADJUST_MASK = "adjust-mask"
CANDIDATES = "candidates"
BN_STATS = "bn-stats"
#: candidates aim this far below the budget so the +-2% draw never exceeds it
CANDIDATE_MARGIN = 1.02


class FedTiny(SharedMask):
    """FedTiny: ABNS picks a coarse mask; clients' top-K pruned gradients grow it progressively."""

    name = "fedtiny"
    adjust = "pairs"

    #: the authors' schedule (FedPruning/FedPruning): alpha 0.2, every layer at once, T_end 100
    #: of 500 rounds, Delta T 10, the clients' gradients averaged by their samples
    authors = Schedule(alpha=0.2, end_share=0.2, every_share_of_end=0.1, granularity="model",
                       pair_weights="samples")

    def __init__(self, options: PruningOptions, run: Any) -> None:
        super().__init__(options, run)
        if self.options.pair_weights == "samples" and self.options.granularity == "filter":
            raise ValueError("method.pruning.pair_weights samples weighs weight-level gradient "
                             "pairs: use it without granularity filter")
        self._pairs_of: dict[int, Pairs] = {}
        self._samples_of: dict[int, float] = {}

    @classmethod
    def uses_server_data(cls, options: PruningOptions) -> bool:  # type: ignore[override]
        return True

    # --- server side: the first mask ------------------------------------------------------------
    def first_masks(self, model: nn.Module, rho: float, ask: Ask) -> Masks:
        cfg = self.options
        server = self.mask_server
        if isinstance(server, FilterMaskServer):
            draw = rng(self.run.seed, "candidates")
            state = model.state_dict()
            candidates = [server.graph.masks(keep_by_importance(server.graph, state, counts),
                                             server.prunable)
                          for counts in candidate_counts(server.graph, server.params, rho,
                                                         cfg.candidates, draw)]
        else:
            params = dict(model.named_parameters())
            densities = self.allocate({n: params[n] for n in server.prunable},
                                      rho / CANDIDATE_MARGIN)
            candidates = candidate_masks(model, densities, cfg.candidates, self.run.seed)
        best, stats, losses = self._abns(model, candidates, ask)
        model.load_state_dict({**model.state_dict(), **stats[best]})
        self.mask_server.info.update({"candidate_losses": losses,
                                      "chosen": best})
        log.info("ABNS: candidate losses %s, kept candidate %d", [round(v, 4) for v in losses], best)
        return candidates[best]

    def _abns(self, model: nn.Module, candidates: list[Masks], ask: Ask
              ) -> tuple[int, list[dict[str, torch.Tensor]], list[float]]:
        """Adaptive BN selection's two query rounds; returns (best, averaged stats, mean losses)."""
        state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        payload: Records = {CANDIDATES: {
            f"{k}/{name}": pack_mask(m) for k, masks in enumerate(candidates) for name, m in masks.items()}}
        config = {"candidates": len(candidates), "bn-batches": self.options.bn_batches}
        reports: list[list[tuple[dict[str, torch.Tensor], int]]] = [[] for _ in candidates]
        for reply in ask("bn_stats", state, payload, config):
            try:
                stats = unpack_stats(reply.records.get(BN_STATS, {}), len(candidates))
                count = int(reply.metrics["num-examples"])
                check_stats(stats, model)
            except (KeyError, ValueError) as exc:
                log.warning("ABNS: statistics of client %d rejected: %s", reply.partition_id, exc)
                continue
            for k, bn in enumerate(stats):
                reports[k].append((bn, count))
        if not reports[0] or not all(reports):
            raise SimulationError("no client returned usable BN statistics in adaptive BN selection: "
                               "check the clients' logs")
        averaged = [average_bn(rows) for rows in reports]
        payload[BN_STATS] = pack_stats(averaged)
        losses: list[list[tuple[float, int]]] = [[] for _ in candidates]
        for reply in ask("bn_eval", state, payload, config):
            sums = [float(reply.metrics.get(f"loss-sum-{k}", float("nan")))
                    for k in range(len(candidates))]
            count = int(reply.metrics.get("num-examples", 0))
            if count <= 0 or not all(np.isfinite(sums)):
                log.warning("ABNS: losses of client %d rejected", reply.partition_id)
                continue
            for k, value in enumerate(sums):
                losses[k].append((value, count))
        if not losses[0]:
            raise SimulationError("no client returned usable candidate losses in adaptive BN selection")
        means = mean_losses(losses)
        return int(np.argmin(means)), averaged, means

    # --- server side: adjustment rounds -----------------------------------------------------
    def begin_round(self, server_round: int) -> dict[str, Any]:
        self._pairs_of, self._samples_of = {}, {}
        return super().begin_round(server_round)

    def client_records(self, budget: Budget) -> Records:
        """Clients below the top tier need the top mask of the scored layers to know which
        positions are pruned."""
        bits = self.mask_server.adjust_mask_bits(budget)
        return {ADJUST_MASK: dict(bits)} if bits else {}

    def check_reply(self, partition_id: int, budget: Budget, records: Records,
                    metrics: Mapping[str, float]) -> None:
        extra = set(records) - {PAIRS}
        if extra:
            raise UpdateRejected(f"unexpected records {sorted(extra)} for method 'fedtiny'")
        try:
            pairs = decode_pairs(records[PAIRS]) if PAIRS in records else None
            self.mask_server.check_pairs(pairs)
        except (PairsRejected, ValueError) as exc:
            raise UpdateRejected(str(exc)) from None
        if pairs is not None and not self.mask_server.plan.k:
            raise UpdateRejected("gradient pairs sent in a round that adjusts nothing")
        self._pairs_of[partition_id] = pairs or {}
        # the server-checked training samples (validation rejects any other count)
        self._samples_of[partition_id] = float(metrics.get("num-examples", 0.0))

    def after_aggregate(self, arrays: dict[str, np.ndarray],
                        accepted: list[int]) -> dict[str, np.ndarray]:
        weights = ([self._samples_of.get(p, 0.0) for p in accepted]
                   if self.options.pair_weights == "samples" else None)
        return self.mask_server.after_aggregate(dict(arrays),
                                                [self._pairs_of.get(p, {}) for p in accepted],
                                                weights)

    # --- client side ----------------------------------------------------------------------------
    def fit(self, task: ClientTask) -> FitResult:
        """Masked training; in an adjustment round, then the top-K pruned gradients."""
        result = super().fit(task)
        plan = adjust_plan(task.config)
        if plan and self.filters:
            result.outbox[PAIRS] = encode_pairs(self._channel_scores(task, plan))
        elif plan:
            x, y = one_batch(task.data, self.run.train.batch_size, task.generator)
            pruned = self._adjust_masks(task, plan)
            rows = [int(r) for r in task.config.get("adjust-rows", [])]
            if rows:  # streamed: never a dense weight gradient
                result.outbox[PAIRS] = encode_pairs(streamed_topk_pruned_gradients(
                    task.model, x, y, plan, pruned, dict(zip(plan, rows, strict=True))))
            else:
                grads = pruned_gradients(task.model, x, y, list(plan))
                result.outbox[PAIRS] = encode_pairs(
                    {n: topk_pruned_gradients(grads[n], pruned[n], k) for n, k in plan.items()})
        return result

    def _channel_scores(self, task: ClientTask, plan: Mapping[str, int]
                        ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Filter level: the top-K growth scores of the channels the top tier prunes."""
        (space, k), = plan.items()
        graph = self.channel_graph(task.model, tuple(task.data.x_train.shape[1:]))
        kept = torch.zeros(graph.spaces[space].size, dtype=torch.bool)
        kept[torch.tensor([int(c) for c in task.config["adjust-channels"]], dtype=torch.long)] = True
        candidates = torch.nonzero(~kept).reshape(-1)
        x, y = one_batch(task.data, self.run.train.batch_size, task.generator)
        scores = growth_scores(graph, task.model, graph.keep_of(task.masks), space, candidates,
                               x, y, self.run.seed, task.server_round)
        return {space: report_top(scores, candidates, k)}

    @staticmethod
    def _adjust_masks(task: ClientTask, plan: Mapping[str, int]) -> Masks:
        """The top tier's mask of the scored layers: sent when it differs from the client's own."""
        params = dict(task.model.named_parameters())
        if ADJUST_MASK in task.inbox:
            record = task.inbox[ADJUST_MASK]
            return {n: unpack_mask(record[n], tuple(params[n].shape)) for n in plan}
        own = task.masks or {}
        return {n: own.get(n, torch.ones_like(params[n], dtype=torch.bool)) for n in plan}

    def answer(self, action: str, task: ClientTask) -> tuple[Records, dict[str, float]]:
        """ABNS on a client: every candidate's BN statistics (``bn_stats``), or every candidate's
        summed loss with the averaged statistics (``bn_eval``), on the same seeded batches."""
        if action not in ("bn_stats", "bn_eval"):
            return super().answer(action, task)
        params = dict(task.model.named_parameters())
        count = int(task.config["candidates"])
        candidates = unpack_candidates(task.inbox[CANDIDATES], count, params)
        batches = local_batches(task.data.x_train, task.data.y_train, int(task.config["bn-batches"]),
                                self.run.train.batch_size, task.generator)
        seen = float(sum(len(y) for _, y in batches))
        if action == "bn_stats":
            stats = candidate_bn_stats(task.model, candidates, batches)
            return {BN_STATS: pack_stats(stats)}, {"num-examples": seen}
        averaged = unpack_stats(task.inbox[BN_STATS], count)
        sums = candidate_loss_sums(task.model, candidates, averaged, batches)
        return {}, {"num-examples": seen, **{f"loss-sum-{k}": v for k, v in enumerate(sums)}}


def unpack_candidates(arrays: Mapping[str, np.ndarray], count: int,
                      params: Mapping[str, torch.Tensor]) -> list[Masks]:
    out: list[Masks] = [{} for _ in range(count)]
    for key, bits in arrays.items():
        k, _, name = key.partition("/")
        out[int(k)][name] = unpack_mask(bits, tuple(params[name].shape))
    return out


def pack_stats(stats: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    return {f"{k}/{name}": t.numpy().astype(np.float32) for k, bn in enumerate(stats)
            for name, t in bn.items()}


def unpack_stats(arrays: Mapping[str, np.ndarray], count: int) -> list[dict[str, torch.Tensor]]:
    """Per candidate, BN statistics by buffer name; ``ValueError`` on malformed arrays."""
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(count)]
    for key, values in arrays.items():
        k, sep, name = key.partition("/")
        if not sep or not k.isdigit() or int(k) >= count:
            raise ValueError(f"unexpected key {key!r} in the BN statistics")
        if not np.issubdtype(values.dtype, np.floating) or not np.all(np.isfinite(values)):
            raise ValueError(f"{key}: BN statistics must be finite floats")
        out[int(k)][name] = torch.from_numpy(values.astype(np.float32))
    return out


def check_stats(stats: list[dict[str, torch.Tensor]], model: nn.Module) -> None:
    buffers = {n: b for n, b in model.state_dict().items()
               if n.endswith(("running_mean", "running_var"))}
    for bn in stats:
        if set(bn) != set(buffers):
            raise ValueError("BN statistics cover the wrong buffers")
        for name, value in bn.items():
            if value.shape != buffers[name].shape:
                raise ValueError(f"{name}: wrong shape {tuple(value.shape)}")


def encode_pairs(pairs: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per layer ``name#index`` (int64 flat positions) and ``name#value`` (float32 gradients)."""
    arrays: dict[str, np.ndarray] = {}
    for name, (index, values) in pairs.items():
        arrays[f"{name}#index"] = np.ascontiguousarray(index, dtype=np.int64)
        arrays[f"{name}#value"] = np.ascontiguousarray(values, dtype=np.float32)
    return arrays


def decode_pairs(arrays: Mapping[str, np.ndarray]) -> Pairs:
    """Inverse of ``encode_pairs``; ``ValueError`` on malformed arrays."""
    parts_of: dict[str, dict[str, np.ndarray]] = {}
    for key, array in arrays.items():
        name, sep, part = key.rpartition("#")
        if not sep or part not in ("index", "value"):
            raise ValueError(f"unexpected key {key!r} in the pairs record")
        parts_of.setdefault(name, {})[part] = array
    out: Pairs = {}
    for name, parts in parts_of.items():
        if set(parts) != {"index", "value"}:
            raise ValueError(f"{name}: pairs need both index and value arrays")
        if parts["index"].dtype.kind not in "iu":
            raise ValueError(f"{name}: indices must be integers")
        out[name] = (parts["index"].astype(np.int64), parts["value"].astype(np.float32))
    return out

