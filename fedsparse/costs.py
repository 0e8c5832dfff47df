"""The cost model: training FLOPs over non-zero weights, peak training memory, per-round client costs.

Conventions (stated so the numbers can be checked by hand):

- A multiply-accumulate is 2 FLOPs. Per sample, a Linear layer's forward costs 2·nnz(W) + nnz(b);
  a Conv2d's forward costs (2·nnz(W) + nnz(b)) · H_out · W_out (only kept weights compute).
- A normalisation layer (BatchNorm, LayerNorm, GroupNorm) costs 5 FLOPs per output element in
  training forward (mean, variance, normalise, scale, shift).
- Backward costs 2x forward (gradients with respect to inputs and to the kept weights), the
  usual convention of the sparse-training literature (e.g. RigL, FedTiny).
- Training memory = 4 bytes x (kept weights + their gradients + optimizer state per kept
  weight: 1 for SGD with momentum, 0 without). Activations (outputs of every counted layer,
  kept for backward, at the training batch size) are reported separately.
- Message bytes are measured, not estimated, by the Flower codec (``fedsparse.codec``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
BYTES_PER_VALUE = 4
NORM_FLOPS_PER_ELEMENT = 5
BACKWARD_FACTOR = 2


@dataclass(frozen=True)
class LayerCost:
    """One compute layer: its weight/bias names, outputs per sample and spatial positions."""

    kind: str
    weight: str | None
    bias: str | None
    positions: int
    out_elements: int


@dataclass(frozen=True)
class TrainingCost:
    flops: float
    memory_bytes: float
    activation_bytes: float
    #: FLOPs of the Conv2d and Linear weights alone (the papers' counter); None: count them
    #: from the uploaded coordinates
    conv_linear_flops: float | None = None


@dataclass(frozen=True)
class ClientRoundCost:
    """What one client spent in one round, beside the dense model doing the same work."""

    partition_id: int
    density: float
    train_flops: float
    memory_bytes: float
    activation_bytes: float
    upload_bytes: int
    download_bytes: int
    dense_train_flops: float
    dense_memory_bytes: float
    dense_upload_bytes: int
    dense_download_bytes: int
    #: simulated seconds on the client's device (None when the clock is off)
    sim_seconds: float | None = None
    #: training FLOPs of the Conv2d and Linear weights alone over the uploaded coordinates (the
    #: counter of the FedTiny / FedPruning papers), and of the dense model
    conv_linear_flops: float = 0.0
    dense_conv_linear_flops: float = 0.0
    #: activations the dense model would keep for backward doing the same work
    dense_activation_bytes: float = 0.0


class CostModel:
    """Per-layer shapes of one architecture, measured once by a forward pass with hooks."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        self.layers: list[LayerCost] = []
        self.input_shape = tuple(input_shape)
        self.param_sizes = {n: p.numel() for n, p in model.named_parameters()}
        names = {m: n for n, m in model.named_modules()}
        hooks = []

        def record(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            prefix = names[module]
            weight = f"{prefix}.weight" if getattr(module, "weight", None) is not None else None
            bias = f"{prefix}.bias" if getattr(module, "bias", None) is not None else None
            per_sample = output[0]
            positions = per_sample[0].numel() if isinstance(module, nn.Conv2d) else 1
            kind = "norm" if isinstance(module, NORM_TYPES) else type(module).__name__.lower()
            self.layers.append(LayerCost(kind, weight, bias, positions, per_sample.numel()))

        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, *NORM_TYPES)):
                hooks.append(module.register_forward_hook(record))
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
        model.train(was_training)
        for hook in hooks:
            hook.remove()

    def forward_flops_per_sample(self, kept: Mapping[str, int]) -> float:
        """Forward FLOPs of one sample; ``kept`` maps parameter name -> non-zero count."""
        total = 0.0
        for layer in self.layers:
            if layer.kind == "norm":
                total += NORM_FLOPS_PER_ELEMENT * layer.out_elements
                continue
            w = kept.get(layer.weight, 0) if layer.weight else 0
            b = kept.get(layer.bias, 0) if layer.bias else 0
            total += (2 * w + b) * layer.positions
        return total

    def flops_per_coordinate(self) -> dict[str, float]:
        """Forward FLOPs per sample that one kept coordinate of each Conv2d / Linear tensor costs
        (2 per weight and 1 per bias at each output position): ``forward_flops_per_sample`` is
        linear in the kept counts with these slopes, plus the norm layers' constant."""
        out: dict[str, float] = {}
        for layer in self.layers:
            if layer.kind == "norm":
                continue
            if layer.weight:
                out[layer.weight] = 2.0 * layer.positions
            if layer.bias:
                out[layer.bias] = float(layer.positions)
        return out

    def activations_per_coordinate(self) -> dict[str, float]:
        """Activation elements per sample that one kept channel of each normalisation layer's
        weight stands for (its output per channel): a sliced network's BatchNorm, ReLU and
        pooling work, memory-bound on a CPU, follows these, not the FLOPs. Models without
        normalisation layers get none."""
        return {layer.weight: layer.out_elements / self.param_sizes[layer.weight]
                for layer in self.layers if layer.kind == "norm" and layer.weight}

    def multiply_flops_per_sample(self, kept: Mapping[str, int]) -> float:
        """Forward FLOPs of the Conv2d and Linear weights alone (2 per multiply-accumulate): what
        torch's ``FlopCounterMode`` and most papers' counters count."""
        return float(sum(2 * kept.get(layer.weight, 0) * layer.positions for layer in self.layers
                         if layer.kind != "norm" and layer.weight))

    def training_cost(self, kept: Mapping[str, int], samples: int, batch_size: int,
                      momentum: bool) -> TrainingCost:
        """Cost of training on ``samples`` samples with the given non-zero counts."""
        flops = samples * (1 + BACKWARD_FACTOR) * self.forward_flops_per_sample(kept)
        weights = sum(kept.get(n, 0) for n in self.param_sizes)
        copies = 2 + (1 if momentum else 0)
        activations = sum(layer.out_elements for layer in self.layers) * min(batch_size, max(samples, 1))
        return TrainingCost(flops=flops, memory_bytes=copies * weights * BYTES_PER_VALUE,
                            activation_bytes=activations * BYTES_PER_VALUE,
                            conv_linear_flops=samples * (1 + BACKWARD_FACTOR)
                            * self.multiply_flops_per_sample(kept))

    def dense_counts(self) -> dict[str, int]:
        return dict(self.param_sizes)
