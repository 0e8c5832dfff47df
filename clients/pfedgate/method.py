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
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.func import functional_call

from fedsparse.budgets import Budget
from fedsparse.clients.pfedgate.gating import (
    BlockLayout,
    GateNet,
    gated_scales,
    kept_from_scales,
    make_layout,
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
)
from fedsparse.seeding import private_init_seed, rng
from fedsparse.updates import SparseUpdate, UpdateRejected

GATE_KEY = "pfedgate-gate"


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
    knapsack: Literal["joint", "grouped"] = Field(
        "joint", description="one knapsack over all tensors, or one per group (linear layers, the "
                             "others) with its own capacity as in the authors' code: grouped thins "
                             "convolutions too, so counted FLOPs fall with s")
    block_fit: int = Field(
        0, ge=0, description="cut tensors into enough blocks that this many fit a group's capacity "
                             "(0: exactly `split` blocks per tensor)")
    sub0_scaled: bool = Field(False, description="scale each tensor's sub0 by a gate score of its "
                                                 "own, as the authors' code does (sub0 is never "
                                                 "dropped, but personalised)")
    ste: Literal["full", "kept"] = Field(
        "full", description="gate gradients from every block (the paper's straight-through "
                            "estimator) or from kept blocks only (the authors' code)")


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
    #: only the client sees its per-batch masks: compute density, FLOPs and memory are its word
    client_reported = ("density", "train_flops", "memory_bytes")
    options: PFedGateOptions

    def __init__(self, options: PFedGateOptions, run: RunInfo) -> None:
        super().__init__(options, run)
        self._cost_models: dict[int, CostModel] = {}
        self._novel: frozenset[int] = frozenset()

    # --- server side ------------------------------------------------------------------------
    def setup(self, setup: ServerSetup) -> None:
        """Any density in (0, 1] is feasible (sub0 shrinks with s); picks the novel clients."""
        self._param_sizes = {n: p.numel() for n, p in setup.model.named_parameters()}
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
        return TrainingCost(flops=flops, memory_bytes=memory,
                            activation_bytes=computed.activation_bytes), reported

    def summary(self) -> dict[str, Any]:
        return {"eval_gating": self.options.eval_gating}

    def evaluation_protocol(self) -> str:
        trained = ("after one round of local joint training (a copy), "
                   if self.options.eval_after_local_training else "as received, ")
        return (f"the global model {trained}gated by the client's private gate per "
                f"{self.options.eval_gating}; novel clients first fit their gate")

    # --- gate state -------------------------------------------------------------------------
    def _gate(self, state: ClientState, layout: BlockLayout, input_shape: tuple[int, ...],
              partition_id: int) -> GateNet:
        with torch.random.fork_rng():
            torch.manual_seed(private_init_seed(self.run.seed, partition_id))  # same gate whenever created
            outputs = layout.num_blocks + (len(layout.names) if self.options.sub0_scaled else 0)
            gate = GateNet(input_shape, outputs, self.options.weight_head)
        if GATE_KEY in state:
            gate.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state[GATE_KEY].items()})
        return gate

    @staticmethod
    def _save_gate(state: ClientState, gate: GateNet) -> None:
        state[GATE_KEY] = {k: v.detach().numpy().copy() for k, v in gate.state_dict().items()}

    def _layout(self, model: nn.Module, density: float) -> BlockLayout:
        groups = linear_or_other(model) if self.options.knapsack == "grouped" else None
        return make_layout(dict(model.named_parameters()), density, self.options.split,
                           self.options.sub0_fraction, groups, self.options.block_fit)

    def _cost_model(self, model: nn.Module, input_shape: tuple[int, ...]) -> CostModel:
        key = sum(p.numel() for p in model.parameters())
        if key not in self._cost_models:
            self._cost_models[key] = CostModel(model, input_shape)
        return self._cost_models[key]

    # --- training ---------------------------------------------------------------------------
    def fit(self, task: ClientTask) -> FitResult:
        model, data = task.model, task.data
        input_shape = tuple(data.x_train.shape[1:])
        layout = self._layout(model, task.budget_density)
        gate = self._gate(task.state, layout, input_shape, task.partition_id)
        stats = self._train(model, gate, layout, data, task.generator, train_model=True,
                            epochs=self.run.train.local_epochs)
        self._save_gate(task.state, gate)
        params = dict(model.named_parameters())
        touched = stats.pop("touched")
        gate_params = sum(p.numel() for p in gate.parameters())
        trained = sum(int(t.sum()) for t in touched.values())
        momentum = 1 if self.run.train.momentum > 0 else 0
        memory = 4 * (sum(p.numel() for p in params.values()) + gate_params  # weights held
                      + stats["max_kept"] + gate_params  # gradients of the weights in use
                      + momentum * (trained + gate_params))  # momentum where training happened
        samples = stats["samples"]
        metrics = {"train-loss": stats["loss"], "num-examples": float(len(data.y_train)),
                   "samples-seen": float(samples),
                   "train-flops": float(stats["flops"]),
                   "memory-bytes": float(memory),
                   "compute-density": stats["max_kept"] / layout.total,
                   "mean-compute-density": stats["kept_sum"] / max(stats["batches"], 1) / layout.total,
                   "gate-flops": float(3 * samples * self._gate_flops(gate))}
        return FitResult(metrics, touched)

    @staticmethod
    def _gate_flops(gate: GateNet) -> int:
        linears = [m for m in gate.modules() if isinstance(m, nn.Linear)]
        return sum(2 * m.weight.numel() + m.out_features for m in linears)

    def _train(self, model: nn.Module, gate: GateNet, layout: BlockLayout, data: LocalData,
               generator: torch.Generator, train_model: bool, epochs: int) -> dict[str, Any]:
        cfg = self.run.train
        params = dict(model.named_parameters())
        groups = [{"params": list(gate.parameters()), "lr": self.options.gate_lr}]
        if train_model:
            groups.append({"params": list(params.values()), "lr": cfg.lr})
        else:
            for p in params.values():
                p.requires_grad_(False)
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
        cost = self._cost_model(model, tuple(data.x_train.shape[1:]))
        gate_flops = self._gate_flops(gate)
        touched = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in params.items()}
        model.train(train_model)
        gate.train()
        loss_fn = nn.CrossEntropyLoss()
        stats = {"loss": 0.0, "samples": 0, "flops": 0.0, "max_kept": 0, "kept_sum": 0, "batches": 0}
        n = len(data.y_train)
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, cfg.batch_size):
                batch = order[start:start + cfg.batch_size]
                if len(batch) < 2:
                    continue  # the gate's BatchNorm needs two samples
                x, y = data.x_train[batch], data.y_train[batch]
                g, m = (t.mean(dim=0) for t in gate(x))
                scales = gated_scales(g, m, layout, self.options.ste)
                effective = {name: p * scales[name] for name, p in params.items()}
                loss = loss_fn(functional_call(model, effective, (x,)), y)
                used = {name: (s.detach() != 0) for name, s in scales.items()}
                objective = loss
                if train_model and cfg.weight_decay > 0:
                    decay = sum(((p * used[name]) ** 2).sum() for name, p in params.items())
                    objective = loss + 0.5 * cfg.weight_decay * decay
                optimizer.zero_grad(set_to_none=True)
                objective.backward()
                trainable = [p for group in groups for p in group["params"]]
                torch.nn.utils.clip_grad_norm_(trainable, self.options.grad_clip)
                optimizer.step()
                kept = {name: int(u.sum()) for name, u in used.items()}
                for name, u in used.items():
                    touched[name] |= u
                total_kept = sum(kept.values())
                stats["max_kept"] = max(stats["max_kept"], total_kept)
                stats["kept_sum"] += total_kept
                stats["batches"] += 1
                stats["loss"] += float(loss.detach()) * len(batch)
                stats["samples"] += len(batch)
                stats["flops"] += 3 * len(batch) * (cost.forward_flops_per_sample(kept) + gate_flops)
        for p in params.values():
            p.requires_grad_(True)
        stats["loss"] /= max(stats["samples"], 1)
        stats["touched"] = touched
        return stats

    # --- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def _gated_eval(self, model: nn.Module, gate: GateNet, layout: BlockLayout, x: torch.Tensor,
                    y: torch.Tensor) -> tuple[float, float, float]:
        """(summed loss, correct, summed density) over the samples in (x, y)."""
        params = dict(model.named_parameters())
        g_all, m_all = gate(x)
        groups = [(g_all.mean(0), m_all.mean(0), slice(0, len(y)))] \
            if self.options.eval_gating == "batch" else \
            [(g_all[i], m_all[i], slice(i, i + 1)) for i in range(len(y))]
        loss_sum = correct = density_sum = 0.0
        for g, m, rows in groups:
            scales = gated_scales(g, m, layout)
            logits = functional_call(model, {n: p * scales[n] for n, p in params.items()}, (x[rows],))
            target = y[rows]
            loss_sum += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
            correct += float((logits.argmax(1) == target).sum())
            kept = sum(kept_from_scales(scales).values())
            density_sum += kept / layout.total * len(target)
        return loss_sum, correct, density_sum

    def evaluate(self, task: ClientTask) -> dict[str, float]:
        """The personalised sparse model: the global model gated by the private gate.

        As in the paper, a seen client evaluates theta_g after its local joint training (on
        copies, so evaluation leaves the model and the stored gate unchanged;
        ``eval_after_local_training: false`` evaluates the received model as is). A novel
        client (one that never trains the global model) fits only its gate, and keeps it.
        """
        model, data, generator = task.model, task.data, task.generator
        layout = self._layout(model, task.budget_density)
        gate = self._gate(task.state, layout, tuple(data.x_test.shape[1:]), task.partition_id)
        if int(task.config.get("novel", 0)):
            self._train(model, gate, layout, data, generator, train_model=False,
                        epochs=self.options.novel_fit_epochs)
            self._save_gate(task.state, gate)
        elif self.options.eval_after_local_training:
            model = copy.deepcopy(model)  # the paper's protocol: personalise, then evaluate
            self._train(model, gate, layout, data, generator, train_model=True,
                        epochs=self.run.train.local_epochs)
        model.eval()
        gate.eval()
        loss = correct = density = 0.0
        step = self.run.train.batch_size  # batch-level gating sees batches as in training
        for start in range(0, len(data.y_test), step):
            x, y = data.x_test[start:start + step], data.y_test[start:start + step]
            parts = self._gated_eval(model, gate, layout, x, y)
            loss, correct, density = loss + parts[0], correct + parts[1], density + parts[2]
        n = max(len(data.y_test), 1)
        return {"accuracy": correct / n, "loss": loss / n, "num-examples": float(len(data.y_test)),
                "eval-density": density / n}
