"""pFedGate (Chen et al., ICML 2023), client and server: a private gate picks, per batch, the blocks of the
shared model to use under the client's declared density; model and gate train jointly.

- The gate never leaves the client: it lives in the node's Flower ``Context.state``.
- Per batch, the gate scores the blocks, the knapsack picks them under the budget s (a hard
  limit: every batch computes with at most floor(s * d) weights), and the model runs with
  theta * M' (straight-through estimator). Weight decay applies only to weights in use.
- The upload is every coordinate the epoch touched (the union of the batches' blocks, so it can
  exceed s, as the paper reports: ~0.67 of dense at s = 0.5), with its new value.
- Costs are measured on the client, where the per-batch masks are known: FLOPs of the kept
  weights (plus the gate), memory of the weights held (the whole shared model: the gate may
  pick any block) plus gradients and momentum of the weights trained, and the largest
  per-batch density, which the server checks against the budget.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from fedsparse.budgets import Budget
from fedsparse.clients.pfedgate.channels import ChannelGating, ChannelStep, make_channel_blocks
from fedsparse.clients.pfedgate.gating import (
    BlockLayout,
    GateNet,
    WeightStep,
    gate_has_choices,
    make_layout,
    score_floor,
)
from fedsparse.costs import CostModel, TrainingCost
from fedsparse.masks import Masks
from fedsparse.method import (
    ClientState,
    ClientTask,
    CostContext,
    FitResult,
    LocalData,
    Method,
    MethodOptions,
    RunInfo,
    ServerSetup,
    split_scores,
)
from fedsparse.seeding import private_init_seed, rng
from fedsparse.structured import ChannelGraph
from fedsparse.training import TrainSettings
from fedsparse.updates import SparseUpdate, UpdateRejected

GATE_KEY = "pfedgate-gate"


@dataclass(frozen=True)
class GatedScore:
    """The gated model's scores on one split."""

    accuracy: float
    loss: float
    num_examples: int


class PFedGateOptions(MethodOptions):
    """pFedGate knobs (Chen et al. 2023); the budget s comes from each client's declared density."""

    split: int = Field(5, ge=1, description="gated blocks per tensor (split factor B)")
    sub0_fraction: float = Field(0.5, ge=0.0, le=1.0,
                                 description="share of the budget always kept as each tensor's sub0")
    gate_lr: float = Field(0.1, gt=0.0, description="learning rate of the private gate")
    weight_head: bool = Field(False, description="separate head for block weights (else M = G)")
    eval_gating: Literal["batch", "sample"] = "batch"
    eval_after_local_training: bool = Field(
        True, description="evaluate theta_g after one round of local joint training, as the paper "
                          "does (on a copy: evaluation changes no state)")
    grad_clip: float = Field(10.0, gt=0.0)
    novel_share: float = Field(0.0, ge=0.0, lt=1.0,
                               description="share of clients that never train the global model")
    novel_fit_epochs: int = Field(1, ge=1, description="epochs a novel client fits its gate")
    blocks: Literal["weights", "channel"] = Field(
        "weights", description="gated blocks of flat weights (the paper), or groups of output "
                               "channels trained as a sliced network, so per-batch time falls "
                               "with s: every batch keeps <= s of the weights (per knapsack "
                               "group) and of the dense Conv2d/Linear FLOPs, and dropped blocks "
                               "get no gradient")
    limit_activations: bool = Field(
        False, description="with blocks: channel, also keep <= s of the normalised layers' "
                           "activation elements: early full-resolution convolutions thin too, so "
                           "time follows s on small-image CNNs, at the cost of using less of the "
                           "weight and FLOPs budget")
    knapsack: Literal["joint", "grouped"] = Field(
        "grouped", description="one knapsack per group (linear layers, the others) with its own "
                               "capacity, as in the authors' code: convolutions are thinned too, "
                               "so counted FLOPs fall with s; or one knapsack over all tensors")
    knapsack_solver: Literal["exact", "rounded-greedy"] = Field(
        "exact", description="exact: the best blocks under the capacity (DP on the float "
                             "scores where the table is small); rounded-greedy: the authors' "
                             "code, blocks by round(10 x score), largest first, while they fit "
                             "(flat-weight blocks)")
    block_fit: int = Field(
        0, ge=0, description="cut tensors into enough blocks that this many fit a group's capacity, "
                             "so the gate chooses among blocks at every s (0: exactly `split` "
                             "blocks per tensor, as the authors)")
    sub0_scaled: bool = Field(False, description="scale each tensor's sub0 by a gate score of its "
                                                 "own, as the authors' code does (sub0 is never "
                                                 "dropped, but personalised)")
    score_floor: bool = Field(False, description="clip the batch's gate scores at min(max(1/B, "
                                                 "0.1), s) before the knapsack, as the authors' "
                                                 "code (the block weights stay unclipped)")
    clips: Literal["joint", "separate"] = Field(
        "joint", description="gradient-norm clip (grad_clip) over gate and model together, or "
                             "one each as the authors' code")
    gate_norm: Literal["batch", "switch"] = Field(
        "batch", description="the gate's input pre-norm: BatchNorm, or the authors' SwitchNorm "
                             "(instance, layer and batch statistics mixed by learned weights)")
    ste: Literal["full", "kept"] = Field(
        "kept", description="gate gradients from kept blocks only (the authors' code: no dense "
                            "gradient), or from every block (the paper's straight-through "
                            "estimator; its dense weight gradient is counted in FLOPs and memory)")

    @model_validator(mode="after")
    def _channel_blocks_send_no_gradient_from_dropped_channels(self) -> PFedGateOptions:
        if self.blocks == "channel" and self.ste == "full":
            raise ValueError("blocks: channel never computes a dropped channel, so it cannot send "
                             "it gradient: use ste: kept (the default) or blocks: weights")
        if self.blocks == "channel" and self.knapsack_solver != "exact":
            raise ValueError("knapsack_solver: rounded-greedy is built for flat-weight blocks: use "
                             "blocks: weights, or knapsack_solver: exact")
        return self


def linear_or_other(model: nn.Module) -> dict[str, str]:
    """The knapsack group of every parameter: its layer's kind (linear, or any other)."""
    return {f"{prefix}.{name}" if prefix else name: "linear" if isinstance(module, nn.Linear) else "other"
            for prefix, module in model.named_modules()
            for name, _ in module.named_parameters(recurse=False)}


class PFedGate(Method):
    """pFedGate: a private gate picks blocks of the shared model per batch under the budget."""

    name = "pfedgate"
    Options = PFedGateOptions
    sparse_updates = True
    #: the authors' aggregation: whole local models averaged, an untouched coordinate a zero
    #: change (measured: -0.001 [-0.003, +0.001] against masked FedAvg, fmnist-pfedgate-authors)
    default_strategy = ("zero-delta-avg", {})
    compare_with = ("FedAvg-FT on the dense model, the personalised reference: fedsparse "
                    "simulate --method fedavg-ft --strategy fedavg --budgets 1.0:1, the config "
                    "otherwise the same")
    #: only the client sees its per-batch masks: compute density, FLOPs and memory are its word
    client_reported = ("density", "train_flops", "memory_bytes", "conv_linear_flops")
    options: PFedGateOptions

    def __init__(self, options: PFedGateOptions, run: RunInfo) -> None:
        super().__init__(options, run)
        self._cost_models: dict[int, CostModel] = {}
        self._graphs: dict[tuple[int, tuple[int, ...]], ChannelGraph] = {}
        self._novel: frozenset[int] = frozenset()

    # --- server side ------------------------------------------------------------------------
    def setup(self, setup: ServerSetup) -> None:
        """Any density in (0, 1] is feasible (sub0 shrinks with s); picks the novel clients."""
        self._param_sizes = {n: p.numel() for n, p in setup.model.named_parameters()}
        self._server_costs = setup.cost_model
        self._server_model = setup.model
        self._densities = sorted({b.density for b in setup.budgets})
        self._reachable_cache: dict[float, dict[str, np.ndarray]] = {}
        count = round(self.options.novel_share * self.run.num_clients)
        if count >= self.run.num_clients:
            raise ValueError("method.pfedgate.novel_share leaves no client to train: lower it")
        if count:
            picks = rng(self.run.seed, "novel").choice(self.run.num_clients, size=count,
                                                                  replace=False)
            self._novel = frozenset(int(c) for c in picks)

    def novel_clients(self) -> frozenset[int]:
        return self._novel

    def check_upload(self, budget: Budget, sent: Masks | None, update: SparseUpdate,
                     num_examples: int) -> None:
        """What the server can check of a gated client: every batch keeps at most floor(s * d)
        weights, so an epoch's upload (the union of its batches' blocks) holds at most
        min(d, batches * floor(s * d)) coordinates, with batches counted from the partition's
        verified size. A client claiming a small density while computing densely is caught
        when it uploads what it computed."""
        total = sum(self._param_sizes.values())
        per_batch = math.floor(budget.density * total + 1e-9)
        batches = self.run.train.local_epochs * math.ceil(num_examples / self.run.train.batch_size)
        limit = min(total, batches * per_batch)
        uploaded = update.kept(self._param_sizes)
        if uploaded > limit:
            raise UpdateRejected(f"uploads {uploaded} coordinates; {batches} batches at density "
                                 f"{budget.density:g} can touch at most {limit}")
        reachable = self._reachable(budget.density)
        for name, tensor in update.tensors.items():
            allowed = reachable.get(name)
            if allowed is not None and not allowed[tensor.mask()].all():
                outside = int((~allowed[tensor.mask()]).sum())
                raise UpdateRejected(f"uploads {outside} coordinates of {name} that no batch at "
                                     f"density {budget.density:g} can keep (outside its sub0 and "
                                     "the blocks that fit its knapsack)")

    def _reachable(self, density: float) -> dict[str, np.ndarray]:
        """Per tensor, the flat positions a client with ``density`` can ever train: its sub0
        and every block no larger than its group's knapsack capacity (a larger one is never
        picked). Known only for flat-weight blocks whose dropped coordinates get no gradient
        (``ste: kept``); other modes are bounded by the count above alone."""
        if self.options.blocks != "weights" or self.options.ste != "kept":
            return {}
        if density not in self._reachable_cache:
            model = self._server_model
            groups = linear_or_other(model) if self.options.knapsack == "grouped" else None
            layout = make_layout(dict(model.named_parameters()), density, self.options.split,
                                 self.options.sub0_fraction, groups, self.options.block_fit)
            out = {}
            for i, name in enumerate(layout.names):
                allowed = np.zeros(math.prod(layout.shapes[i]), dtype=bool)
                allowed[:layout.sub0[i]] = True
                capacity = layout.capacities[layout.groups[i] if layout.groups else 0]
                edges = layout.bounds[i]
                for start, end in itertools.pairwise(edges):
                    if end - start <= capacity:
                        allowed[start:end] = True
                out[name] = allowed
            self._reachable_cache[density] = out
        return self._reachable_cache[density]

    def round_cost(self, budget: Budget, computed: TrainingCost, density: float,
                   metrics: Mapping[str, float], context: CostContext | None = None
                   ) -> tuple[TrainingCost, float]:
        """Client-measured FLOPs, memory and compute density (only the client sees its per-batch
        masks), refused when absent or implausible; the server checks them against the budget."""
        try:
            flops, memory = metrics["train-flops"], metrics["memory-bytes"]
            reported = metrics["compute-density"]
        except KeyError as exc:
            raise UpdateRejected(f"reply lacks the cost metric {exc}") from None
        if not (0 <= reported <= 1 and flops >= 0 and memory > 0 and math.isfinite(flops + memory)):
            raise UpdateRejected(f"implausible reported costs (train-flops={flops}, "
                                 f"memory-bytes={memory}, compute-density={reported})")
        conv_linear = metrics.get("conv-linear-flops")
        if conv_linear is not None and not (0 <= conv_linear <= flops):
            raise UpdateRejected(f"implausible reported conv-linear-flops={conv_linear}")
        self._check_reported_bounds(budget, flops, memory, reported, context)
        return TrainingCost(flops=flops, memory_bytes=memory,
                            activation_bytes=computed.activation_bytes,
                            conv_linear_flops=conv_linear), reported

    def _check_reported_bounds(self, budget: Budget, flops: float, memory: float,
                               density: float, context: CostContext | None) -> None:
        """Floors and ceilings the server knows for what only the client can measure: every
        batch keeps at least its sub0s (``sub0_fraction * s`` of each tensor), so the compute
        density and the FLOPs have a floor, and a client holds the whole shared model, so its
        memory is at least the model's weights. (Reporting more than it spent only brings a
        client closer to its budget's limits.) The floors are loose (half the sub0 share) to
        allow rounding."""
        total = sum(self._param_sizes.values())
        if memory < 4 * total:
            raise UpdateRejected(f"reports memory-bytes={memory:g}, less than the {4 * total} bytes "
                                 "of the shared model it must hold")
        share = self.options.sub0_fraction * budget.density / 2
        if density < share * 0.99:
            raise UpdateRejected(f"reports compute-density={density:g}, below the sub0 share "
                                 f"{share:g} every batch keeps")
        if context is None:
            return
        samples = context.local_epochs * context.num_examples
        floor = samples * 3 * self._server_costs.forward_flops_per_sample(
            {n: math.floor(share * size) for n, size in self._param_sizes.items()})
        if flops < floor * 0.99:
            raise UpdateRejected(f"reports train-flops={flops:g}, below the {floor:g} that {samples} "
                                 f"samples cost with the sub0s alone at density {budget.density:g}")

    def summary(self) -> dict[str, Any]:
        """The evaluation gating, and per declared density below 1 whether the gate has blocks
        to choose among (flat-weight blocks; ``gate_choices``: false is a fixed mask, which the
        bench's tables label)."""
        out: dict[str, Any] = {"eval_gating": self.options.eval_gating}
        if self.options.blocks == "weights" and getattr(self, "_server_model", None) is not None:
            model = self._server_model
            groups = linear_or_other(model) if self.options.knapsack == "grouped" else None
            params = dict(model.named_parameters())
            out["gate_choices"] = {
                f"{d:g}": gate_has_choices(make_layout(params, d, self.options.split,
                                                       self.options.sub0_fraction, groups,
                                                       self.options.block_fit))
                for d in self._densities if d < 1.0}
        return out

    def evaluation_protocol(self) -> str:
        trained = ("after one round of local joint training (a copy), "
                   if self.options.eval_after_local_training else "as received, ")
        return (f"the global model {trained}gated by the client's private gate per "
                f"{self.options.eval_gating}; novel clients first fit their gate")

    # --- gate state -------------------------------------------------------------------------
    def _gate(self, state: ClientState, outputs: int, input_shape: tuple[int, ...],
              partition_id: int, device: torch.device) -> GateNet:
        with torch.random.fork_rng():
            torch.manual_seed(private_init_seed(self.run.seed, partition_id))  # same gate whenever created
            gate = GateNet(input_shape, outputs, self.options.weight_head, self.options.gate_norm)
        if GATE_KEY in state:
            gate.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state[GATE_KEY].items()})
        return gate.to(device)

    @staticmethod
    def _save_gate(state: ClientState, gate: GateNet) -> None:
        state[GATE_KEY] = {k: v.detach().cpu().numpy().copy() for k, v in gate.state_dict().items()}

    def _gating(self, model: nn.Module, density: float, input_shape: tuple[int, ...]
                ) -> BlockLayout | ChannelGating:
        """The blocks a client with budget ``density`` gates: flat weights or channel groups."""
        params = dict(model.named_parameters())
        groups = linear_or_other(model) if self.options.knapsack == "grouped" else None
        if self.options.blocks == "channel":
            key = (sum(p.numel() for p in params.values()), input_shape)
            if key not in self._graphs:
                self._graphs[key] = ChannelGraph.trace(model, input_shape)
            cost = self._cost_model(model, input_shape)
            limited = [cost.flops_per_coordinate()]
            if self.options.limit_activations:
                limited.append(cost.activations_per_coordinate())
            blocks = make_channel_blocks(self._graphs[key], params, density, self.options.split,
                                         self.options.sub0_fraction, groups, limited)
            return ChannelGating(model, blocks)
        return make_layout(params, density, self.options.split, self.options.sub0_fraction, groups,
                           self.options.block_fit, self.options.knapsack_solver)

    def _gate_outputs(self, gating: BlockLayout | ChannelGating) -> int:
        """Gate scores: one per block, plus one per tensor (or channel space) with scaled sub0s."""
        if isinstance(gating, ChannelGating):
            return gating.blocks.num_blocks + (len(gating.blocks.spaces) if self.options.sub0_scaled else 0)
        return gating.num_blocks + (len(gating.names) if self.options.sub0_scaled else 0)

    def _cost_model(self, model: nn.Module, input_shape: tuple[int, ...]) -> CostModel:
        key = sum(p.numel() for p in model.parameters())
        if key not in self._cost_models:
            self._cost_models[key] = CostModel(model, input_shape)
        return self._cost_models[key]

    def _client_gate(self, task: ClientTask, input_shape: tuple[int, ...]
                     ) -> tuple[BlockLayout | ChannelGating, GateNet]:
        gating = self._gating(task.model, task.budget_density, input_shape)
        gate = self._gate(task.state, self._gate_outputs(gating), input_shape, task.partition_id,
                          task.device)
        if self.options.score_floor:
            gate.floor = score_floor(self.options.split, task.budget_density)
        return gating, gate

    # --- training ---------------------------------------------------------------------------
    def fit(self, task: ClientTask) -> FitResult:
        model, data = task.model, task.data
        settings = self.train_settings(task)
        gating, gate = self._client_gate(task, tuple(data.x_train.shape[1:]))
        stats = self._train(model, gate, gating, data, task.generator, train_model=True,
                            epochs=settings.local_epochs, settings=settings)
        self._save_gate(task.state, gate)
        total = sum(p.numel() for p in model.parameters())
        touched = stats.pop("touched")
        gate_params = sum(p.numel() for p in gate.parameters())
        trained = sum(int(t.sum()) for n, t in touched.items() if n in dict(model.named_parameters()))
        momentum = 1 if settings.momentum > 0 else 0
        dense_gradient = self.options.blocks == "weights" and self.options.ste == "full"
        memory = 4 * (total + gate_params  # weights held
                      + (total if dense_gradient else stats["max_kept"]) + gate_params  # gradients
                      + momentum * (trained + gate_params))  # momentum where training happened
        samples = stats["samples"]
        metrics = {"train-loss": stats["loss"], "num-examples": float(len(data.y_train)),
                   "samples-seen": float(samples),
                   "train-flops": float(stats["flops"]),
                   "conv-linear-flops": float(stats["conv_linear"]),
                   "memory-bytes": float(memory),
                   "compute-density": stats["max_kept"] / total,
                   "mean-compute-density": stats["kept_sum"] / max(stats["batches"], 1) / total,
                   "gate-flops": float(3 * samples * self._gate_flops(gate))}
        return FitResult(metrics, touched)

    @staticmethod
    def _gate_flops(gate: GateNet) -> int:
        linears = [m for m in gate.modules() if isinstance(m, nn.Linear)]
        return sum(2 * m.weight.numel() + m.out_features for m in linears)

    def _step(self, model: nn.Module, gating: BlockLayout | ChannelGating, settings: TrainSettings,
              train_model: bool) -> WeightStep | ChannelStep:
        if isinstance(gating, ChannelGating):
            return ChannelStep(gating, settings.lr, settings.momentum, settings.weight_decay,
                               train_model, self.options.grad_clip, self.separate_clips)
        return WeightStep(model, gating, settings.lr, settings.momentum, settings.weight_decay,
                          train_model, self.options.grad_clip, self.options.ste,
                          self.separate_clips)

    @property
    def separate_clips(self) -> bool:
        return self.options.clips == "separate"

    def _train(self, model: nn.Module, gate: GateNet, gating: BlockLayout | ChannelGating,
               data: LocalData, generator: torch.Generator, train_model: bool, epochs: int,
               settings: TrainSettings) -> dict[str, Any]:
        """Joint training of gate and model (or of the gate alone), batch by batch.

        FLOPs per sample: forward and input gradient of the weights in use, and their weight
        gradient; with the paper's full straight-through estimator on flat-weight blocks the
        weight gradient is dense (dropped blocks send gradient to the gate).
        """
        params = dict(model.named_parameters())
        channel_mode = isinstance(gating, ChannelGating)
        if not train_model and not channel_mode:
            for p in params.values():
                p.requires_grad_(False)
        gate_optimizer = torch.optim.SGD(gate.parameters(), lr=self.options.gate_lr,
                                         momentum=settings.momentum)
        step = self._step(model, gating, settings, train_model)
        cost = self._cost_model(model, tuple(data.x_train.shape[1:]))
        gate_flops = self._gate_flops(gate)
        dense_gradient = train_model and not channel_mode and self.options.ste == "full"
        dense_counts = {n: p.numel() for n, p in params.items()}
        dense_forward = cost.forward_flops_per_sample(dense_counts)
        dense_multiplies = cost.multiply_flops_per_sample(dense_counts)
        if channel_mode:  # tensors without a channel axis are used whole by every batch
            touched = {n: torch.full_like(t, n not in gating.graph.axes_of, dtype=torch.bool)
                       for n, t in model.state_dict().items()}
        else:
            touched = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in params.items()}
        model.train(train_model)
        gate.train()
        stats = {"loss": 0.0, "samples": 0, "flops": 0.0, "conv_linear": 0.0, "max_kept": 0,
                 "kept_sum": 0, "batches": 0}
        n = len(data.y_train)
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, settings.batch_size):
                batch = order[start:start + settings.batch_size]
                if len(batch) < 2:
                    continue  # the gate's BatchNorm needs two samples
                x, y = data.x_train[batch], data.y_train[batch]
                g, m = gate.pooled(x)
                if channel_mode:
                    loss, keep, where = step(x, y, g, m, gate_optimizer)
                    for name, t in touched.items():
                        if name in where:
                            t.view(-1)[where[name].reshape(-1)] = True
                        elif name in gating.graph.axes_of:
                            t.fill_(True)  # kept whole along every axis
                    kept = gating.graph.kept_counts(keep, params)
                else:
                    loss, used = step(x, y, g, m, gate_optimizer)
                    for name, u in used.items():
                        touched[name] |= u
                    kept = {name: int(u.sum()) for name, u in used.items()}
                total_kept = sum(kept.values())
                forward = cost.forward_flops_per_sample(kept)
                stats["max_kept"] = max(stats["max_kept"], total_kept)
                stats["kept_sum"] += total_kept
                stats["batches"] += 1
                stats["loss"] += loss * len(batch)
                stats["samples"] += len(batch)
                weight_gradient = dense_forward if dense_gradient else forward
                stats["flops"] += len(batch) * (2 * forward + weight_gradient + 3 * gate_flops)
                multiplies = cost.multiply_flops_per_sample(kept)
                stats["conv_linear"] += len(batch) * (
                    2 * multiplies + (dense_multiplies if dense_gradient else multiplies))
        for p in params.values():
            p.requires_grad_(True)
        stats["loss"] /= max(stats["samples"], 1)
        stats["touched"] = touched
        return stats

    # --- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def _gated_eval(self, gate: GateNet, step: WeightStep | ChannelStep, total: int,
                    x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
        """(summed loss, correct, summed density) over the samples in (x, y)."""
        g_all, m_all = gate(x)
        groups = [(gate.floored(g_all.mean(0)), m_all.mean(0), slice(0, len(y)))] \
            if self.options.eval_gating == "batch" else \
            [(gate.floored(g_all[i]), m_all[i], slice(i, i + 1)) for i in range(len(y))]
        loss_sum = correct = density_sum = 0.0
        for g, m, rows in groups:
            logits, kept = step.logits(x[rows], g, m)
            if isinstance(step, ChannelStep):
                kept = step.graph.kept_counts(kept, step.params)
            target = y[rows]
            loss_sum += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
            correct += float((logits.argmax(1) == target).sum())
            density_sum += sum(kept.values()) / total * len(target)
        return loss_sum, correct, density_sum

    def evaluate(self, task: ClientTask) -> dict[str, float]:
        """The personalised sparse model: the global model gated by the private gate.

        As in the paper, a seen client evaluates theta_g after its local joint training (on
        copies, so evaluation leaves the model and the stored gate unchanged;
        ``eval_after_local_training: false`` evaluates the received model as is). A novel
        client (one that never trains the global model) fits only its gate, and keeps it.
        """
        data, generator = task.data, task.generator
        settings = self.train_settings(task)
        model = task.model
        if not int(task.config.get("novel", 0)) and self.options.eval_after_local_training:
            model = copy.deepcopy(model)  # the paper's protocol: personalise, then evaluate
        gating, gate = self._client_gate(replace(task, model=model), tuple(data.x_test.shape[1:]))
        if int(task.config.get("novel", 0)):
            self._train(model, gate, gating, data, generator, train_model=False,
                        epochs=self.options.novel_fit_epochs, settings=settings)
            self._save_gate(task.state, gate)
        elif self.options.eval_after_local_training:
            self._train(model, gate, gating, data, generator, train_model=True,
                        epochs=settings.local_epochs, settings=settings)
        model.eval()
        gate.eval()
        step = self._step(model, gating, settings, train_model=False)
        total = sum(p.numel() for p in model.parameters())
        size = settings.batch_size  # batch-level gating sees batches as in training
        densities: list[float] = []

        def score(x_all: torch.Tensor, y_all: torch.Tensor) -> GatedScore:
            loss = correct = density = 0.0
            for start in range(0, len(y_all), size):
                x, y = x_all[start:start + size], y_all[start:start + size]
                parts = self._gated_eval(gate, step, total, x, y)
                loss, correct, density = loss + parts[0], correct + parts[1], density + parts[2]
            n = len(y_all)
            densities.append(density / max(n, 1))
            return GatedScore(correct / max(n, 1), loss / max(n, 1), n)

        metrics = split_scores(score, data)
        return {**metrics, "eval-density": densities[0]}  # the test split's

    def evaluation_cost(self, budget: Budget, num_train: int, novel: bool) -> TrainingCost | None:
        """The local joint training before scoring (a novel client: its gate fit), bounded by
        the server: no batch may compute with more than the budget's share of the dense FLOPs."""
        if not novel and not self.options.eval_after_local_training:
            return None
        epochs = self.options.novel_fit_epochs if novel else self.run.train.local_epochs
        model, train = self._server_costs, self.run.train
        dense = model.training_cost(model.dense_counts(), epochs * num_train, train.batch_size,
                                    train.momentum > 0)
        share = budget.density
        return TrainingCost(flops=dense.flops * share, memory_bytes=dense.memory_bytes,
                            activation_bytes=dense.activation_bytes,
                            conv_linear_flops=(dense.conv_linear_flops or 0.0) * share)
