import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsparse.config import ModelConfig
from fedsparse.masks import (
    apply_masks,
    intersection,
    layerwise_magnitude_masks,
    mask_gradients,
    overall_density,
    param_sizes,
    tensor_density,
    union,
)
from fedsparse.models import build_model

shapes = st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple)


def _random_mask(shape, seed, p):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) < p


@settings(max_examples=50, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), p=st.floats(0, 1), q=st.floats(0, 1))
def test_union_intersection_laws(shape, seed, p, q):
    a = {"w": _random_mask(shape, seed, p)}
    b = {"w": _random_mask(shape, seed + 1, q)}
    u, i = union(a, b)["w"], intersection(a, b)["w"]
    assert torch.equal(i & a["w"], i) and torch.equal(u | a["w"], u)  # i ⊆ a ⊆ u
    assert int(u.sum()) + int(i.sum()) == int(a["w"].sum()) + int(b["w"].sum())
    assert tensor_density(i) <= tensor_density(u)


def test_density_counts_unmasked_tensors_as_dense():
    sizes = {"a": 10, "b": 30}
    masks = {"a": torch.tensor([True] * 5 + [False] * 5)}
    assert overall_density(masks, sizes) == 35 / 40


def test_magnitude_masks_respect_the_budget_and_keep_the_largest():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="cnn-bn"), (1, 28, 28), 10)
    params = dict(model.named_parameters())
    for density in (0.05, 0.1, 0.3, 0.9, 1.0):
        masks = layerwise_magnitude_masks(params, density)
        achieved = overall_density(masks, param_sizes(model))
        assert achieved <= density + 1e-12 and achieved > density - 0.01
        for name, p in params.items():
            if p.dim() >= 2 and not masks[name].all() and masks[name].any():
                kept, dropped = p.detach().abs()[masks[name]], p.detach().abs()[~masks[name]]
                assert kept.min() >= dropped.max()
            if p.dim() < 2:
                assert masks[name].all()  # biases and norms stay dense


def test_magnitude_masks_refuse_impossible_budgets():
    model = build_model(ModelConfig(name="cnn-bn"), (1, 28, 28), 10)
    try:
        layerwise_magnitude_masks(dict(model.named_parameters()), 0.0001)
    except ValueError as exc:
        assert "biases and norm layers alone" in str(exc)
    else:
        raise AssertionError("expected ValueError")


def test_apply_and_gradient_masks_keep_pruned_weights_at_zero():
    model = build_model(ModelConfig(name="mlp", hidden=[8]), (4,), 3)
    masks = layerwise_magnitude_masks(dict(model.named_parameters()), 0.5)
    apply_masks(model, masks)
    model(torch.randn(5, 4)).sum().backward()
    mask_gradients(model, masks)
    for name, p in model.named_parameters():
        assert (p[~masks[name]] == 0).all() and (p.grad[~masks[name]] == 0).all()
