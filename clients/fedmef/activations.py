"""Activation pruning for backward (FedMef's SAP as the authors' code runs it), plain torch.

A Conv2d or Linear layer keeps its input for backward only to form its weight gradient. Under
``pruned_activations(model, keep)`` each such layer saves, instead of its whole input, the
``keep`` fraction of largest-magnitude input elements (float32) and a packed bit mask of where
they were (1 bit per element): ``4 * keep + 1/8`` bytes per element instead of 4. The forward
pass and the input gradient are exact; the weight gradient is formed from the pruned input.
An input autograd keeps anyway (the batch; a ReLU's output, which the ReLU saves) is left whole:
the authors prune every layer's input, which there frees nothing and costs gradient.

The authors' code (FedPruning, ``sap/sapiter.py``, strategy ``mink``) keeps int32 indices beside
the values, which at keep = 0.5 stores as many bytes as the dense input; the bit mask is what
makes the saving real. The paper's normalised convolution (NSConv, for BN-free training) is not
in that code and is not built here: fedsparse's models keep their BatchNorm layers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import torch
from torch import nn
from torch.nn import functional as F

_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_largest(x: torch.Tensor, keep: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``ceil(keep * numel)`` largest-magnitude elements of ``x`` (in flat order) and a
    packed bit mask of their positions."""
    flat = x.detach().reshape(-1)
    count = min(flat.numel(), max(1, math.ceil(keep * flat.numel())))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[flat.abs().topk(count, sorted=False).indices] = True
    values = flat[chosen]
    padded = F.pad(chosen, (0, (-chosen.numel()) % 8)).view(-1, 8).to(torch.uint8)
    bits = (padded * _BIT_WEIGHTS.to(padded.device)).sum(dim=1, dtype=torch.uint8)
    return values, bits


def unpack_largest(values: torch.Tensor, bits: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The dense tensor ``pack_largest`` stood for: kept elements in place, zeros elsewhere."""
    numel = math.prod(shape)
    chosen = (bits.unsqueeze(1) & _BIT_WEIGHTS.to(bits.device)).ne(0).view(-1)[:numel]
    out = torch.zeros(numel, dtype=values.dtype, device=values.device)
    out[chosen] = values
    return out.view(shape)


class _PrunedInputLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, keep):  # type: ignore[override]
        ctx.save_for_backward(*pack_largest(x, keep), weight)
        ctx.shape, ctx.has_bias = x.shape, bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        values, bits, weight = ctx.saved_tensors
        x = unpack_largest(values, bits, ctx.shape)
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_w = grad.reshape(-1, weight.shape[0]).T @ x.reshape(-1, weight.shape[1])
        grad_b = grad.reshape(-1, weight.shape[0]).sum(0) if ctx.has_bias else None
        return grad_x, grad_w, grad_b, None


class _PrunedInputConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, keep):  # type: ignore[override]
        ctx.save_for_backward(*pack_largest(x, keep), weight)
        ctx.shape, ctx.has_bias = x.shape, bias is not None
        ctx.conv = (stride, padding, dilation, groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        values, bits, weight = ctx.saved_tensors
        x = unpack_largest(values, bits, ctx.shape)
        stride, padding, dilation, groups = ctx.conv
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad, x, weight, None, stride, padding, dilation, False, [0, 0], groups,
            [ctx.needs_input_grad[0], True, False])
        grad_b = grad.sum((0, 2, 3)) if ctx.has_bias else None
        return grad_x, grad_w, grad_b, None, None, None, None, None


def held_anyway(x: torch.Tensor) -> bool:
    """Whether autograd keeps ``x`` whatever this layer saves: the batch itself (no producer), or
    a tensor its producer saves for its own backward (a ReLU's output). Pruning such an input
    would free nothing and add the pruned copy."""
    producer = x.grad_fn
    if producer is None:
        return True
    where = x.untyped_storage().data_ptr()
    for name in _saved_attributes(type(producer)):
        value = getattr(producer, name, None)
        if isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() == where:
            return True
    return False


@cache
def _saved_attributes(node_type: type) -> tuple[str, ...]:
    """The saved-tensor attributes of an autograd node type (asked once per type, not per batch)."""
    return tuple(name for name in dir(node_type) if name.startswith("_saved_"))


def _linear(module: nn.Linear, keep: float):
    def forward(x: torch.Tensor) -> torch.Tensor:
        if not (module.training and torch.is_grad_enabled()) or held_anyway(x):
            return F.linear(x, module.weight, module.bias)
        return _PrunedInputLinear.apply(x, module.weight, module.bias, keep)
    return forward


def _conv(module: nn.Conv2d, keep: float):
    def forward(x: torch.Tensor) -> torch.Tensor:
        padding = module.padding
        if module.padding_mode != "zeros":
            x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
            padding = (0, 0)
        if isinstance(padding, str):  # 'same' / 'valid': let the module resolve it
            return module._conv_forward(x, module.weight, module.bias)
        if not (module.training and torch.is_grad_enabled()) or held_anyway(x):
            return F.conv2d(x, module.weight, module.bias, module.stride, padding,
                            module.dilation, module.groups)
        return _PrunedInputConv2d.apply(x, module.weight, module.bias, module.stride, padding,
                                        module.dilation, module.groups, keep)
    return forward


@contextmanager
def pruned_activations(model: nn.Module, keep: float) -> Iterator[None]:
    """Within the block every Conv2d and Linear of ``model`` saves only the ``keep`` fraction of
    its input for backward (``keep`` >= 1: unchanged), unless that input is ``held_anyway``."""
    if keep >= 1.0:
        yield
        return
    patched = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.forward = _linear(module, keep)  # type: ignore[method-assign]
        elif isinstance(module, nn.Conv2d):
            module.forward = _conv(module, keep)  # type: ignore[method-assign]
        else:
            continue
        patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward  # back to the class's forward


def saved_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, keep: float = 1.0) -> int:
    """Bytes autograd keeps for backward in one training step on (x, y): every distinct saved
    storage except the parameters and the input batch, measured with saved-tensor hooks."""
    held = {p.untyped_storage().data_ptr() for p in model.parameters()}
    held.add(x.untyped_storage().data_ptr())
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in held:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    was_training = model.training
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pruned_activations(model, keep), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    del loss
    model.load_state_dict(state)  # the step moved BatchNorm statistics
    model.train(was_training)
    return sum(seen.values())
