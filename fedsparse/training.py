"""Plain-torch local training and evaluation shared by every method."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.optim.sgd import sgd

from fedsparse.masks import Masks, apply_masks, mask_gradients


class TrainSettings(BaseModel):
    """Local training: the config's ``train`` section (strict: unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    local_epochs: int = Field(1, ge=1, description="local epochs per round")
    batch_size: int = Field(32, ge=1, description="local batch size")
    lr: float = Field(0.05, gt=0.0, description="local SGD learning rate (round 1's)")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="local SGD momentum")
    weight_decay: float = Field(0.0, ge=0.0, description="local SGD weight decay")
    #: how the clients' learning rate moves over the rounds (``lr`` is round 1's)
    lr_schedule: Literal["constant", "cosine", "exponential"] = Field(
        "constant", description="how the rate moves over the rounds")
    #: exponential: the rate is multiplied by this every round
    lr_decay: float = Field(0.98, gt=0.0, le=1.0, description="exponential: factor per round")
    #: cosine: the rate the last round approaches
    lr_min: float = Field(0.0, ge=0.0, description="cosine: the rate the last round approaches")

    def lr_at(self, server_round: int, rounds: int) -> float:
        """The learning rate of ``server_round`` (1-based) in a run of ``rounds`` rounds."""
        step = max(server_round, 1) - 1
        if self.lr_schedule == "exponential":
            return self.lr * self.lr_decay ** step
        if self.lr_schedule == "cosine":
            progress = min(step / max(rounds, 1), 1.0)
            return self.lr_min + (self.lr - self.lr_min) * 0.5 * (1 + math.cos(math.pi * progress))
        return self.lr

    def at_round(self, server_round: int, rounds: int) -> TrainSettings:
        """These settings with the schedule's learning rate for ``server_round``."""
        if self.lr_schedule == "constant":
            return self
        return self.model_copy(update={"lr": self.lr_at(server_round, rounds),
                                       "lr_schedule": "constant"})


class LocalSGD:
    """``torch.optim.SGD`` (no dampening, no Nesterov) as torch's own functional ``sgd``.

    The same update, step for step (a test compares both). The optimizer object is avoided
    because its first construction in a process imports ``torch._dynamo`` (its methods are
    wrapped to be skipped by ``torch.compile``): about a second of CPU inside each Ray worker's
    first client, on the critical path of every run's round 1.
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        self.params = list(params)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.momentum_buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    def step(self) -> None:
        """One update of the parameters that have a gradient (as ``SGD.step``: others keep
        their weights and momentum)."""
        active = [i for i, p in enumerate(self.params) if p.grad is not None]
        params = [self.params[i] for i in active]
        buffers = [self.momentum_buffers[i] for i in active]
        with torch.no_grad():
            sgd(params, [p.grad for p in params], buffers, weight_decay=self.weight_decay,
                momentum=self.momentum, lr=self.lr, dampening=0.0, nesterov=False, maximize=False)
        if self.momentum:
            for i, buffer in zip(active, buffers, strict=True):
                self.momentum_buffers[i] = buffer


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    num_examples: int


def train_local(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainSettings,
                generator: torch.Generator, masks: Masks | None = None,
                proximal_mu: float = 0.0,
                anchor: list[torch.Tensor] | None = None,
                before_batch: Callable[[], None] | None = None,
                penalty: Callable[[], torch.Tensor] | None = None) -> tuple[float, int]:
    """Run ``cfg.local_epochs`` epochs of minibatch SGD; return (mean loss, samples seen).

    With ``masks``, masked-out weights stay exactly zero: their gradients are zeroed before
    each step and the weights re-masked after it (momentum and weight decay would move them).
    ``proximal_mu`` > 0 adds the proximal term mu/2 * ||w - anchor||^2: FedProx's (Li et al.
    2020, anchor = the weights received, the default) or Ditto's (anchor = the global model).
    ``before_batch`` runs before each trained batch (FjORD samples its width there); the batches
    trained are ``batch_sizes``'s, so a server can replay them. ``penalty`` is added to every
    batch's objective (FedMef's extrusion); the reported loss is the task loss alone.
    """
    model.train()
    if proximal_mu > 0 and anchor is None:
        anchor = [p.detach().clone() for p in model.parameters()]
    anchor = anchor if proximal_mu > 0 else []
    if masks:
        apply_masks(model, masks)
    optimizer = LocalSGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                         weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    total, seen = 0.0, 0
    n = len(y)
    for _ in range(cfg.local_epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, cfg.batch_size):
            batch = order[start:start + cfg.batch_size]
            if len(batch) < 2 and n >= 2 and has_batchnorm(model):
                continue  # BatchNorm cannot train on a single sample
            if before_batch is not None:
                before_batch()
            optimizer.zero_grad()
            loss = loss_fn(model(x[batch]), y[batch])
            objective = loss
            if anchor:
                drift = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True))
                objective = loss + 0.5 * proximal_mu * drift
            if penalty is not None:
                objective = objective + penalty()
            objective.backward()
            if masks:
                mask_gradients(model, masks)
            optimizer.step()
            if masks:
                apply_masks(model, masks)
            total += float(loss.detach()) * len(batch)
            seen += len(batch)
    return total / max(seen, 1), seen


def batch_sizes(n: int, batch_size: int, has_batchnorm: bool) -> list[int]:
    """The sizes of the batches one epoch of ``train_local`` trains on ``n`` samples (a last batch
    of one sample is skipped when the model has BatchNorm)."""
    sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
    return [s for s in sizes if not (s < 2 and n >= 2 and has_batchnorm)]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` holds a BatchNorm layer (it cannot train on a single sample)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> EvalResult:
    """Mean cross-entropy and accuracy of ``model`` on (x, y)."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start:start + batch_size])
        target = y[start:start + batch_size]
        loss_sum += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(dim=1) == target).sum())
    n = len(y)
    return EvalResult(loss=loss_sum / max(n, 1), accuracy=correct / max(n, 1), num_examples=n)


def _norm_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def forward_batches(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """``x`` in consecutive batches of ``size`` (forward passes only: statistics, scoring)."""
    return [x[i:i + size] for i in range(0, len(x), size)]


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Recompute BatchNorm running statistics from scratch with forward passes (no gradients).

    Uses a cumulative average (momentum None) so the result is the plain mean over batches.
    """
    layers = _norm_layers(model)
    saved = [(m.momentum, m.training) for _, m in layers]
    for _, m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x in batches:
        model(x)
    stats = {}
    for (name, m), (momentum, _) in zip(layers, saved, strict=True):
        stats[f"{name}.running_mean"] = m.running_mean.clone()
        stats[f"{name}.running_var"] = m.running_var.clone()
        m.momentum = momentum
    return stats
