"""Scaled activation pruning: exact forward and input gradient, the weight gradient from the
kept inputs, and the bytes autograd really keeps."""

import copy

import pytest
import torch
from torch import nn

from fedsparse.clients.fedmef.activations import (
    pack_largest,
    pruned_activations,
    saved_bytes,
    unpack_largest,
)
from fedsparse.models import cnn_bn


def test_pack_keeps_the_largest_magnitudes_in_place():
    x = torch.tensor([[1.0, -5.0, 2.0], [0.5, 3.0, -0.1]])
    values, bits = pack_largest(x, 0.5)
    assert bits.dtype == torch.uint8 and bits.numel() == 1
    assert torch.equal(unpack_largest(values, bits, x.shape),
                       torch.tensor([[0.0, -5.0, 2.0], [0.0, 3.0, 0.0]]))


def _step(model, x, y, keep):
    model = copy.deepcopy(model)
    x = x.clone().requires_grad_(True)
    with pruned_activations(model, keep):
        out = model(x)
        nn.functional.cross_entropy(out, y).backward()
    return out.detach(), x.grad, {n: p.grad for n, p in model.named_parameters()}


@pytest.fixture
def net():
    torch.manual_seed(0)
    return cnn_bn((1, 12, 12), 4), torch.randn(6, 1, 12, 12), torch.randint(0, 4, (6,))


def test_forward_and_input_gradient_are_exact_and_weight_gradients_use_the_kept_inputs(net):
    model, x, y = net
    out, grad_x, grads = _step(model, x, y, 1.0)
    out_p, grad_x_p, grads_p = _step(model, x, y, 0.5)
    torch.testing.assert_close(out_p, out)
    torch.testing.assert_close(grad_x_p, grad_x)  # the input gradient needs the weights only
    # the first conv's input is the batch itself, the last linear's the ReLU's saved output:
    # both held anyway, so kept whole
    for name in ("features.0.weight", "classifier.3.weight"):
        torch.testing.assert_close(grads_p[name], grads[name])
    assert not torch.allclose(grads_p["classifier.1.weight"], grads["classifier.1.weight"])
    # keeping (almost) everything gives the dense gradients back
    _, _, grads_all = _step(model, x, y, 1 - 1e-9)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_all[name], grad)


def test_the_classifier_weight_gradient_is_formed_from_the_pruned_input(net):
    model, x, y = net
    _, _, grads_p = _step(model, x, y, 0.25)
    seen = {}

    def capture(_module, inputs, output):
        output.retain_grad()
        seen.update(x=inputs[0].detach(), out=output)

    model.classifier[1].register_forward_hook(capture)
    nn.functional.cross_entropy(model(x), y).backward()
    kept = unpack_largest(*pack_largest(seen["x"], 0.25), seen["x"].shape)
    assert (kept == 0).float().mean() >= 0.75 - 1e-6
    torch.testing.assert_close(grads_p["classifier.1.weight"], seen["out"].grad.T @ kept)


def test_saved_bytes_fall_by_what_the_pruned_inputs_free(net):
    model, x, y = net
    dense = saved_bytes(model, x, y, 1.0)
    pruned = saved_bytes(model, x, y, 0.5)
    # pruned: conv2's input (6x32x6x6, the max-pool's output) and the first classifier input
    # (6x576), each from 4 bytes to 4 * ceil(0.5 n) / n + 1/8 per element; the batch and the
    # ReLU output the last linear reads are held anyway and stay whole
    inputs = [6 * 32 * 6 * 6, 6 * 576]
    freed = sum(4 * n - (4 * -(-n // 2) + -(-n // 8)) for n in inputs)
    assert dense - pruned == freed
    state = copy.deepcopy(model.state_dict())
    saved_bytes(model, x, y, 0.5)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name  # BatchNorm statistics restored
