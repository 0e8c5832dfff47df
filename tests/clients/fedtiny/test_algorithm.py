"""FedTiny's plain-torch algorithms and the prune-and-grow steps it shares with FedDST."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fedsparse.clients.fedtiny.algorithm import (
    average_bn,
    candidate_bn_stats,
    candidate_loss_sums,
    candidate_masks,
    local_batches,
    mean_losses,
)
from fedsparse.clients.shared_mask.pruning import (
    adjustment_count,
    adjustment_fraction,
    prune_and_grow,
    topk_pruned_gradients,
)
from fedsparse.config import ModelConfig
from fedsparse.masks import prunable_weights
from fedsparse.models import build_model
from fedsparse.training import reestimate_bn


def cnn():
    torch.manual_seed(0)
    return build_model(ModelConfig(name="cnn-bn"), (1, 28, 28), 10)


@pytest.mark.parametrize("rho", [0.1, 0.05, 0.01])
def test_candidates_hit_the_target_density_within_two_percent(rho):
    model = cnn()
    candidates = candidate_masks(model, rho, count=5, seed=0)
    assert len(candidates) == 5
    names = prunable_weights(dict(model.named_parameters()), keep_first_conv=True)
    assert "features.0.weight" not in names  # the first conv layer is never pruned
    assert all(set(c) == set(names) for c in candidates)
    for masks in candidates:
        density = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
        assert abs(density - rho) <= 0.02 * rho + 1e-3  # + rounding of small layers
    assert any(not torch.equal(candidates[0][n], candidates[1][n]) for n in names)


def test_bn_reestimation_and_averaging():
    model = cnn()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(16, 1, 28, 28, generator=g) + 2 for _ in range(3)]
    stats = reestimate_bn(model, batches)
    assert set(stats) == {"features.1.running_mean", "features.1.running_var",
                          "features.5.running_mean", "features.5.running_var"}
    assert stats["features.1.running_var"].min() > 0
    again = reestimate_bn(model, batches)
    assert all(torch.allclose(stats[k], again[k]) for k in stats)  # from scratch, not accumulated
    a = {"m": torch.tensor([1.0, 2.0])}
    b = {"m": torch.tensor([3.0, 6.0])}
    assert torch.allclose(average_bn([(a, 1), (b, 3)])["m"], torch.tensor([2.5, 5.0]))


def test_abns_keeps_the_lowest_mean_loss_candidate():
    losses = mean_losses([[(10.0, 10), (30.0, 10)], [(5.0, 10), (9.0, 10)], [(8.0, 4)]])
    assert losses == [2.0, 0.7, 2.0] and int(np.argmin(losses)) == 1


def test_cosine_schedule():
    assert adjustment_fraction(0, 100, 0.1) == pytest.approx(0.1)
    assert adjustment_fraction(50, 100, 0.1) == pytest.approx(0.05)
    assert adjustment_fraction(100, 100, 0.1) == 0.0
    assert adjustment_count(0.05, 101) == 6


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(0, 30), clients=st.integers(1, 4))
def test_prune_and_grow_keeps_density_and_grows_the_top_averaged_gradients(seed, k, clients):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(8, 16, generator=g)
    mask = torch.rand(8, 16, generator=g) < 0.3
    weight = weight * mask
    reports = [topk_pruned_gradients(torch.randn(8, 16, generator=g), mask, k) for _ in range(clients)]
    assert all(len(i) <= k for i, _ in reports)  # never more than K pairs per layer
    assert all(not mask.flatten()[torch.from_numpy(i)].any() for i, _ in reports)  # pruned positions only
    new_w, new_mask = prune_and_grow(weight, mask, reports, k)
    assert int(new_mask.sum()) == int(mask.sum())
    grown = torch.nonzero(new_mask.flatten() & ~mask.flatten()).flatten()
    dropped = torch.nonzero(mask.flatten() & ~new_mask.flatten()).flatten()
    kk = min(k, int((~mask).sum()), int(mask.sum()))
    assert len(grown) == len(dropped) == kk
    avg = torch.zeros(128, dtype=torch.float64)
    for index, values in reports:
        avg[torch.from_numpy(index)] += torch.from_numpy(values.astype(np.float64))
    avg = (avg / clients).abs()
    pruned = torch.nonzero(~mask.flatten()).flatten()
    if kk:
        threshold = torch.topk(avg[pruned], kk).values.min()
        assert (avg[grown] >= threshold).all()
        kept_active = torch.nonzero(mask.flatten() & new_mask.flatten()).flatten()
        if len(kept_active):
            assert weight.flatten()[dropped].abs().max() <= weight.flatten()[kept_active].abs().min()
    assert (new_w.flatten()[grown] == 0).all() and (new_w.flatten()[~new_mask.flatten()] == 0).all()


def test_abns_client_rounds_score_each_candidate_with_its_own_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[3].bias.zero_()
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    batches = local_batches(x, y, 3, 16, torch.Generator().manual_seed(0))
    assert [len(b[1]) for b in batches] == [16, 16, 16]
    keep_all = {"3.weight": torch.ones(3, 8, dtype=torch.bool)}
    keep_none = {"3.weight": torch.zeros(3, 8, dtype=torch.bool)}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = candidate_bn_stats(model, [keep_all, keep_none], batches)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # model untouched
    features = torch.cat([model[0](b[0]) for b in batches])
    assert torch.allclose(stats[0]["1.running_mean"], features.mean(0), atol=1e-5)
    sums = candidate_loss_sums(model, [keep_all, keep_none], stats, batches)
    assert sums[1] == pytest.approx(48 * math.log(3), rel=1e-4)  # a zeroed output layer: uniform logits
    assert mean_losses([[(sums[0], 48)], [(sums[1], 48)]])[1] == pytest.approx(math.log(3), rel=1e-4)
