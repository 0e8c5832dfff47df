"""FedDST (Bibikar et al., AAAI 2022): clients prune-and-grow locally, the server prunes back.

In an adjustment round each client first prunes its K smallest kept weights and grows the K
pruned positions of largest gradient per layer (new weights start at 0), then trains and uploads
under its own new mask, so masks differ between clients; the server averages each weight over
its holders (the mask-aware FedAvg) and prunes every layer back to its count.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedsparse.budgets import Budget
from fedsparse.clients.shared_mask import Schedule, SharedMask
from fedsparse.clients.shared_mask.method import adjust_plan, one_batch
from fedsparse.clients.shared_mask.pruning import (
    prune_and_grow,
    pruned_gradients,
    topk_pruned_gradients,
)
from fedsparse.masks import Masks
from fedsparse.method import ClientTask, FitResult, LocalData
from fedsparse.updates import SparseUpdate, UpdateRejected, coordinates_outside


class FedDST(SharedMask):
    """FedDST: local prune-and-grow in adjustment rounds; the server prunes the average back."""

    name = "feddst"
    adjust = "local"
    #: the authors' timing (bibikar/feddst): readjust after local training, every 10 rounds, the
    #: adjusted share decaying to 0 at half the run
    authors = Schedule(end_share=0.5, every=10, readjust="after-training")

    def check_upload(self, budget: Budget, sent: Masks | None, update: SparseUpdate,
                     num_examples: int) -> None:
        """In an adjustment round a client may grow up to K positions of each adjusted layer
        outside its mask (keeping the layer's count); anywhere else the mask holds."""
        plan = self.mask_server.plan.k
        if sent is None:
            return
        outside = coordinates_outside(update, sent)
        for name, count in outside.items():
            kept = update.tensors[name].nnz
            if count > plan.get(name, 0) or kept > int(sent[name].sum()):
                raise UpdateRejected(f"{count} coordinates of '{name}' lie outside the mask the "
                                     f"client was sent (at most {plan.get(name, 0)} may be regrown)")

    def fit(self, task: ClientTask) -> FitResult:
        """Prune and grow in an adjustment round, before local training or (the authors) after
        it; the upload follows the client's new mask either way."""
        plan = adjust_plan(task.config)
        if not plan or not task.masks:
            return super().fit(task)
        if self.options.readjust == "before-training":
            task.masks = self._readjust(task.model, dict(task.masks), task.data, task.generator, plan)
            return super().fit(task)
        result = super().fit(task)
        result.upload = self._readjust(task.model, dict(task.masks), task.data, task.generator, plan)
        return result

    def _readjust(self, model: torch.nn.Module, masks: Masks, data: LocalData,
                  generator: torch.Generator, plan: Mapping[str, int]) -> Masks:
        x, y = one_batch(data, self.run.train.batch_size, generator)
        layers = [n for n in plan if n in masks]
        grads = pruned_gradients(model, x, y, layers)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name in layers:
                report = topk_pruned_gradients(grads[name], masks[name], plan[name])
                weight, masks[name] = prune_and_grow(params[name], masks[name], [report], plan[name])
                params[name].copy_(weight)
        return masks
