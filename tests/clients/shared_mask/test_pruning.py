"""Shared-mask pruning algorithms: densities, prune-at-init criteria, nested tiers, units."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedsparse.clients.shared_mask.pruning import (
    adjustment_memory,
    layer_count,
    magnitude_masks,
    prunable_density,
    prune_back,
    random_masks,
    scoring_units,
    snip_masks,
    subset_masks,
)
from fedsparse.config import ModelConfig
from fedsparse.masks import prunable_weights
from fedsparse.models import build_model


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 8, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 3))


def prunable_of(model: nn.Module) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n].detach() for n in prunable_weights(params, True)}


def sizes(model: nn.Module) -> dict[str, int]:
    return {n: p.numel() for n, p in model.named_parameters()}


def test_prunable_density_makes_the_whole_model_hit_the_budget():
    model = net()
    names = prunable_weights(dict(model.named_parameters()), True)
    assert "0.weight" not in names and all(n.endswith("weight") for n in names)
    rho = prunable_density(sizes(model), names, 0.2)
    kept = sum(s for n, s in sizes(model).items() if n not in names) + rho * sum(
        sizes(model)[n] for n in names)
    assert kept == pytest.approx(0.2 * sum(sizes(model).values()))
    with pytest.raises(ValueError, match="first conv layer, biases and norm layers"):
        prunable_density(sizes(model), names, 0.001)


@pytest.mark.parametrize("density", [0.5, 0.1, 0.03])
def test_magnitude_and_random_masks_keep_each_layer_at_density(density):
    weights = prunable_of(net())
    for masks in (magnitude_masks(weights, density), random_masks(weights, density, seed=3)):
        for name, mask in masks.items():
            assert int(mask.sum()) == layer_count(weights[name].numel(), density)
    masks = magnitude_masks(weights, 0.1)
    for name, mask in masks.items():
        w = weights[name].abs()
        assert w[mask].min() >= w[~mask].max()
    assert all(torch.equal(random_masks(weights, 0.1, 3)[n], random_masks(weights, 0.1, 3)[n])
               for n in weights)


def test_snip_ranks_connection_sensitivity_globally():
    model = net()
    names = prunable_weights(dict(model.named_parameters()), True)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    masks = snip_masks(model, names, x, y, 0.1)
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == pytest.approx(0.1 * total, abs=len(names))
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    params = dict(model.named_parameters())
    scores = torch.cat([(params[n].grad * params[n]).abs().flatten() for n in names])
    kept = torch.cat([masks[n].flatten() for n in names])
    assert scores[kept].min() >= scores[~kept].max() - 1e-12


def test_subset_masks_are_nested_and_sized():
    weights = prunable_of(net())
    top = magnitude_masks(weights, 0.4)
    small = subset_masks(weights, top, 0.25)
    smaller = subset_masks(weights, small, 0.5)
    for name in top:
        assert not (small[name] & ~top[name]).any() and not (smaller[name] & ~small[name]).any()
        assert int(small[name].sum()) == max(1, math.floor(0.25 * int(top[name].sum())))


def test_prune_back_keeps_counts_of_largest_averaged_weights():
    w = {"a": torch.tensor([[0.1, -3.0], [2.0, 0.5]])}
    assert prune_back(w, {"a": 2})["a"].tolist() == [[False, True], [True, False]]


def test_scoring_units_cycle_from_the_output_end():
    names = ["features.0.conv1.weight", "features.0.conv2.weight", "features.1.conv1.weight",
             "classifier.1.weight"]
    assert scoring_units(names, "model") == [names]
    assert scoring_units(names, "layer")[0] == ["classifier.1.weight"]
    assert scoring_units(names, "block") == [["classifier.1.weight"], ["features.1.conv1.weight"],
                                             names[:2]]


def test_adjustment_memory_counts_dense_gradient_and_pairs():
    assert adjustment_memory(["a"], {"a": 100}, {"a": 10}, 0.1) == 100 * 4 + 1 * 8


def test_er_and_erk_allocations_match_hand_computed_densities():
    from fedsparse.clients.shared_mask.pruning import layer_densities

    shapes = {"conv": (8, 4, 3, 3), "fc": (10, 32)}  # 288 and 320 weights
    # ERK: scores 18/288 and 42/320; scale = 0.2 * 608 / (18 + 42)
    erk = layer_densities(shapes, 0.2, "erk")
    assert erk["conv"] == pytest.approx(0.2 * 608 / 60 * 18 / 288)
    assert erk["fc"] == pytest.approx(0.2 * 608 / 60 * 42 / 320)
    # ER ignores the kernel: scores 12/32 and 42/320
    er = layer_densities(shapes, 0.2, "er")
    assert er["conv"] == pytest.approx(0.2 * 608 / (108 + 42) * 12 / 32)
    assert layer_densities(shapes, 0.2, "uniform") == {"conv": 0.2, "fc": 0.2}
    # a layer that would pass 1 stays dense; the others take the rest
    capped = layer_densities(shapes, 0.9, "erk")
    assert capped["fc"] == 1.0 and capped["conv"] == pytest.approx((0.9 * 608 - 320) / 288)
    for allocation in ("er", "erk"):
        for rho in (0.01, 0.05, 0.3):
            densities = layer_densities(shapes, rho, allocation)
            overall = (densities["conv"] * 288 + densities["fc"] * 320) / 608
            assert overall == pytest.approx(rho, rel=1e-9)


def test_erk_keeps_more_of_the_small_output_layer_of_cnn_bn():
    from fedsparse.clients.shared_mask.pruning import layer_densities, magnitude_masks

    model = build_model(ModelConfig(name="cnn-bn"), (1, 28, 28), 10)
    params = dict(model.named_parameters())
    names = prunable_weights(params, keep_first_conv=True)
    shapes = {n: tuple(params[n].shape) for n in names}
    erk = layer_densities(shapes, 0.01, "erk")
    masks = magnitude_masks({n: params[n].detach() for n in names}, erk)
    kept = {n: int(m.sum()) for n, m in masks.items()}
    assert kept["classifier.3.weight"] > 5 * round(0.01 * 1280)  # uniform keeps 12 of 1,280
    total = sum(params[n].numel() for n in names)
    assert abs(sum(kept.values()) / total - 0.01) <= 0.02 * 0.01


def test_the_extra_gradient_batch_leaves_batchnorm_statistics_alone():
    from fedsparse.clients.shared_mask.pruning import pruned_gradients

    torch.manual_seed(0)
    model = build_model(ModelConfig(name="cnn-bn"), (1, 28, 28), 10)
    before = {n: b.clone() for n, b in model.named_buffers()}
    x, y = torch.randn(8, 1, 28, 28) * 3 + 1, torch.randint(0, 10, (8,))
    grads = pruned_gradients(model, x, y, ["features.4.weight"])
    assert grads["features.4.weight"].abs().sum() > 0
    assert all(torch.equal(b, before[n]) for n, b in model.named_buffers())


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_streamed_scoring_reports_what_the_dense_gradient_does(step):
    from fedsparse.clients.shared_mask.pruning import (
        pruned_gradients,
        streamed_topk_pruned_gradients,
        topk_pruned_gradients,
    )

    torch.manual_seed(1)
    model = build_model(ModelConfig(name="cnn-bn"), (1, 28, 28), 10)
    params = dict(model.named_parameters())
    plan = {"features.4.weight": 40, "classifier.1.weight": 60, "classifier.3.weight": 7}
    masks = {n: torch.rand(params[n].shape) < 0.1 for n in plan}
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    before = {n: b.clone() for n, b in model.named_buffers()}
    streamed = streamed_topk_pruned_gradients(model, x, y, plan, masks, {n: step for n in plan})
    dense = pruned_gradients(model, x, y, list(plan))
    for name, k in plan.items():
        index, values = streamed[name]
        want_index, want_values = topk_pruned_gradients(dense[name], masks[name], k)
        assert len(index) == k and np.array_equal(index, want_index)
        assert np.allclose(values, want_values, rtol=1e-4, atol=1e-6)
        assert not masks[name].flatten()[torch.from_numpy(index)].any()
    assert all(torch.equal(b, before[n]) for n, b in model.named_buffers())
    assert all(p.requires_grad for p in model.parameters())
