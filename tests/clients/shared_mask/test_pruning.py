"""Shared-mask pruning algorithms: densities, prune-at-init criteria, nested tiers, units."""

import math

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
from fedsparse.masks import prunable_weights


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
