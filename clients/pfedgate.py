"""pFedGate client (Chen et al., ICML 2023): a private gate picks, per batch, the blocks of the
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
from collections.abc import Mapping
from typing import Any

import torch
from fedsparse.clients.dense import DenseClient, Exchange, LocalData
from flwr.app import ArrayRecord, RecordDict
from torch import nn
from torch.func import functional_call

from fedsparse.budgets import Budget
from fedsparse.costs import CostModel
from fedsparse.errors import ConfigError
from fedsparse.gating import BlockLayout, GateNet, gated_scales, kept_from_scales, make_layout
from fedsparse.masks import Masks

GATE_KEY = "pfedgate-gate"


class PFedGateClient(DenseClient):
    """Jointly trains the shared model and its private gate; deploys the gated sparse model."""

    reported_costs = True

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.options = config.method.pfedgate
        self._cost_models: dict[int, CostModel] = {}

    sparse_updates = True

    @classmethod
    def name(cls) -> str:
        return "pfedgate"

    @classmethod
    def check_budgets(cls, budgets: list[Budget], params: Mapping[str, torch.Tensor]) -> None:
        """Any density in (0, 1] is feasible: sub0 shrinks with s."""
        if any(not 0 < b.density <= 1 for b in budgets):
            raise ConfigError("pfedgate needs densities in (0, 1]: fix the budgets")

    # --- gate state -------------------------------------------------------------------------
    def _gate(self, state: RecordDict, layout: BlockLayout, input_shape: tuple[int, ...],
              partition_id: int) -> GateNet:
        with torch.random.fork_rng():
            torch.manual_seed(self.config.seed * 7919 + partition_id)  # same gate whenever created
            gate = GateNet(input_shape, layout.num_blocks, self.options.weight_head)
        if GATE_KEY in state.array_records:
            gate.load_state_dict(state[GATE_KEY].to_torch_state_dict())
        return gate

    @staticmethod
    def _save_gate(state: RecordDict, gate: GateNet) -> None:
        state[GATE_KEY] = ArrayRecord(gate.state_dict())

    def _layout(self, model: nn.Module, server_config: Mapping[str, Any]) -> BlockLayout:
        density = float(server_config["budget-density"])
        return make_layout(dict(model.named_parameters()), density, self.options.split,
                           self.options.sub0_fraction)

    def _cost_model(self, model: nn.Module, input_shape: tuple[int, ...]) -> CostModel:
        key = sum(p.numel() for p in model.parameters())
        if key not in self._cost_models:
            self._cost_models[key] = CostModel(model, input_shape)
        return self._cost_models[key]

    # --- training ---------------------------------------------------------------------------
    def fit(self, model: nn.Module, masks: Masks | None, data: LocalData, generator: torch.Generator,
            server_config: Mapping[str, Any], state: RecordDict,
            exchange: Exchange | None = None) -> tuple[dict[str, float], Masks | None]:
        pid = int(server_config["partition-id"])
        input_shape = tuple(data.x_train.shape[1:])
        layout = self._layout(model, server_config)
        gate = self._gate(state, layout, input_shape, pid)
        stats = self._train(model, gate, layout, data, generator, train_model=True,
                            epochs=self.config.train.local_epochs)
        self._save_gate(state, gate)
        params = dict(model.named_parameters())
        touched = stats.pop("touched")
        gate_params = sum(p.numel() for p in gate.parameters())
        trained = sum(int(t.sum()) for t in touched.values())
        momentum = 1 if self.config.train.momentum > 0 else 0
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
        return metrics, touched

    @staticmethod
    def _gate_flops(gate: GateNet) -> int:
        linears = [m for m in gate.modules() if isinstance(m, nn.Linear)]
        return sum(2 * m.weight.numel() + m.out_features for m in linears)

    def _train(self, model: nn.Module, gate: GateNet, layout: BlockLayout, data: LocalData,
               generator: torch.Generator, train_model: bool, epochs: int) -> dict[str, Any]:
        cfg = self.config.train
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
                scales = gated_scales(g, m, layout)
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

    def evaluate(self, model: nn.Module, masks: Masks | None, data: LocalData,
                 generator: torch.Generator, server_config: Mapping[str, Any],
                 state: RecordDict) -> dict[str, float]:
        """The personalised sparse model: the global model gated by the private gate.

        As in the paper, a seen client evaluates theta_g after its local joint training (on
        copies, so evaluation leaves the model and the stored gate unchanged;
        ``eval_after_local_training: false`` evaluates the received model as is). A novel
        client (one that never trains the global model) fits only its gate, and keeps it.
        """
        pid = int(server_config["partition-id"])
        layout = self._layout(model, server_config)
        gate = self._gate(state, layout, tuple(data.x_test.shape[1:]), pid)
        if int(server_config.get("novel", 0)):
            self._train(model, gate, layout, data, generator, train_model=False,
                        epochs=self.options.novel_fit_epochs)
            self._save_gate(state, gate)
        elif self.options.eval_after_local_training:
            model = copy.deepcopy(model)  # the paper's protocol: personalise, then evaluate
            self._train(model, gate, layout, data, generator, train_model=True,
                        epochs=self.config.train.local_epochs)
        model.eval()
        gate.eval()
        loss = correct = density = 0.0
        step = self.config.train.batch_size  # batch-level gating sees batches as in training
        for start in range(0, len(data.y_test), step):
            x, y = data.x_test[start:start + step], data.y_test[start:start + step]
            parts = self._gated_eval(model, gate, layout, x, y)
            loss, correct, density = loss + parts[0], correct + parts[1], density + parts[2]
        n = max(len(data.y_test), 1)
        return {"accuracy": correct / n, "loss": loss / n, "num-examples": float(len(data.y_test)),
                "eval-density": density / n}
