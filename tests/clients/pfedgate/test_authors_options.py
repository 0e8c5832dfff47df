"""pFedGate's mechanisms as its authors' code runs them, each an option: SwitchNorm as the gate's
pre-norm, the score floor before the knapsack, one gradient clip each for gate and model."""

import pytest
import torch
from torch import nn

from fedsparse.clients.pfedgate.gating import GateNet, SwitchNorm, clip_gradients, score_floor


def _only(norm: SwitchNorm, kind: int) -> None:
    """Mixture weights that pick one kind of statistics (softmax of a large logit)."""
    with torch.no_grad():
        for weights in (norm.mean_weight, norm.var_weight):
            weights.fill_(-1e4)
            weights[kind] = 1e4


def test_switchnorm_mixes_instance_layer_and_batch_statistics():
    x = torch.randn(8, 3, 5, 5) * 2 + 1
    norm = SwitchNorm(3, spatial=True)
    _only(norm, 2)  # batch statistics only: BatchNorm
    reference = nn.BatchNorm2d(3)
    assert torch.allclose(norm(x), reference(x), atol=1e-4)
    assert torch.allclose(norm.running_mean, reference.running_mean, atol=1e-5)
    _only(norm, 0)  # instance statistics only: InstanceNorm
    assert torch.allclose(norm(x), nn.functional.instance_norm(x), atol=1e-4)
    _only(norm, 1)  # layer statistics only
    flat = x.reshape(8, -1)
    expected = ((flat - flat.mean(1, keepdim=True)) / torch.sqrt(flat.var(1, unbiased=False, keepdim=True)
                                                                   + 1e-5)).reshape(x.shape)
    assert torch.allclose(norm(x), expected, atol=1e-4)
    # at evaluation the batch part is the running statistics
    _only(norm, 2)
    norm.eval()
    assert torch.allclose(norm(x), (x - norm.running_mean.view(1, 3, 1, 1))
                          / torch.sqrt(norm.running_var.view(1, 3, 1, 1) + 1e-5), atol=1e-4)
    # flat inputs (no positions): layer and batch statistics only
    flat_norm = SwitchNorm(6, spatial=False)
    assert flat_norm.mean_weight.numel() == 2 and flat_norm(torch.randn(4, 6)).shape == (4, 6)


def test_the_gate_uses_switchnorm_when_asked_and_trains_its_mixture():
    gate = GateNet((1, 6, 6), 4, norm="switch")
    assert isinstance(gate.pre_norm, SwitchNorm)
    g, _ = gate(torch.randn(5, 1, 6, 6))
    g.sum().backward()
    assert gate.pre_norm.mean_weight.grad is not None and gate.pre_norm.mean_weight.grad.abs().sum() > 0


def test_the_score_floor_lifts_low_scores_for_the_knapsack_only():
    assert score_floor(5, 0.3) == pytest.approx(0.2) and score_floor(20, 0.5) == pytest.approx(0.1)
    assert score_floor(5, 0.05) == pytest.approx(0.05)  # never above the budget itself
    gate = GateNet((6,), 3)
    with torch.no_grad():  # scores of about 0.999, 0.5 and 0.0
        gate.score[0].weight.zero_()
        gate.score[0].bias.copy_(torch.tensor([7.0, 0.0, -7.0]))
    gate.eval()
    x = torch.randn(4, 6)
    with torch.no_grad():
        g, m = gate.pooled(x)
    assert g[2] < 0.01 and torch.equal(g, m)
    gate.floor = 0.2
    with torch.no_grad():
        g, m = gate.pooled(x)
    assert g[2] == pytest.approx(0.2) and m[2] < 0.01  # the block weight stays unclipped
    assert g[0] > 0.99


def test_separate_clips_bound_gate_and_model_each_a_joint_clip_both_together():
    def grads():
        gate, model = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
        gate.grad, model.grad = torch.tensor([60.0, 80.0]), torch.tensor([0.6, 0.8])
        return gate, model

    gate, model = grads()
    clip_gradients([gate], [model], 10.0, separate=True)
    assert gate.grad.norm() == pytest.approx(10.0) and model.grad.norm() == pytest.approx(1.0)
    gate, model = grads()
    clip_gradients([gate], [model], 10.0, separate=False)
    # the joint norm is ~100.005: both scaled by ~0.1, the model's gradient shrinks too
    assert gate.grad.norm() == pytest.approx(10.0, rel=1e-3) and model.grad.norm() < 0.11
