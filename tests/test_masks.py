import torch

from fedsparse.config import ModelConfig
from fedsparse.masks import apply_masks, layerwise_magnitude_masks, mask_gradients
from fedsparse.models import build_model


def test_magnitude_masks_respect_the_budget_and_keep_the_largest():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="cnn-bn"), (1, 28, 28), 10)
    params = dict(model.named_parameters())
    for density in (0.05, 0.1, 0.3, 0.9, 1.0):
        masks = layerwise_magnitude_masks(params, density)
        achieved = sum(int(m.sum()) for m in masks.values()) / sum(p.numel() for p in params.values())
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
