"""pFedGate's channel-aligned blocks: hard budget per group, a real choice, the sliced network
computing exactly what the masked dense network computes, updates confined to kept channels."""

import numpy as np
import pytest
import torch
from torch.func import functional_call

from fedsparse.clients.pfedgate.channels import ChannelGating, ChannelStep, make_channel_blocks
from fedsparse.clients.pfedgate.method import linear_or_other
from fedsparse.config import load_config
from fedsparse.costs import CostModel
from fedsparse.errors import ConfigError
from fedsparse.experiment import build_method
from fedsparse.method import LocalData
from fedsparse.models import build_model
from fedsparse.structured import ChannelGraph
from tests.clients.helpers import make_task

SHAPE = (1, 12, 12)


def cnn(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(load_config(None, ["model.name=cnn-bn"]).model, SHAPE, 4)
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model


def blocks_for(model: torch.nn.Module, density: float, grouped: bool = True, split: int = 4,
               activations: bool = False):
    """Blocks as the method builds them: weight limits per group, FLOPs and (with
    ``limit_activations``) activations."""
    graph = ChannelGraph.trace(model, SHAPE)
    groups = linear_or_other(model) if grouped else None
    cost = CostModel(model, SHAPE)
    limited = [cost.flops_per_coordinate()]
    if activations:
        limited.append(cost.activations_per_coordinate())
    return make_channel_blocks(graph, dict(model.named_parameters()), density, split, 0.5, groups,
                               limited)


def widths(blocks, keep) -> np.ndarray:
    return np.array([len(keep[s]) for s in blocks.spaces])


@pytest.mark.parametrize("activations", [True, False])
@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("density", [0.1, 0.3, 0.5, 1.0])
def test_picks_never_exceed_any_group_limit_and_are_maximal(density, grouped, activations):
    model = cnn()
    blocks = blocks_for(model, density, grouped, activations=activations)
    sizes = np.array([len(c) for c in blocks.block_channels])
    for seed in range(5):
        scores = np.random.default_rng(seed).random(blocks.num_blocks)
        picked = blocks.select(scores)
        keep = blocks.keep(picked)
        kept = blocks.graph.kept_counts(keep, blocks.params)
        assert sum(kept.values()) == blocks.count(widths(blocks, keep))  # the count is exact
        assert np.all(blocks.counts(widths(blocks, keep)) <= np.asarray(blocks.limits))
        assert sum(kept.values()) <= density * blocks.total + 1e-9
        cost = CostModel(model, SHAPE)  # and the Conv2d / Linear FLOPs (norms are a constant)
        norms = cost.forward_flops_per_sample({})
        dense = cost.forward_flops_per_sample(cost.dense_counts()) - norms
        assert cost.forward_flops_per_sample(kept) - norms <= density * dense * (1 + 1e-9)
        # and the normalised activations: kept channels x elements per channel
        acts = [(layer.weight, layer.out_elements) for layer in cost.layers if layer.kind == "norm"]
        kept_acts = sum(kept[w] * n / cost.param_sizes[w] for w, n in acts)
        assert not activations or kept_acts <= density * sum(n for _, n in acts) * (1 + 1e-9)
        for b in np.flatnonzero(~picked):  # nothing more fits: the budget is used
            grown = widths(blocks, keep)
            grown[blocks.block_space[b]] += sizes[b]
            assert np.any(blocks.counts(grown) > np.asarray(blocks.limits))


def test_the_gate_chooses_different_channels_for_different_scores_at_s_0_3():
    blocks = blocks_for(cnn(), 0.3)
    keeps = {tuple(torch.cat(list(blocks.keep(blocks.select(
        np.random.default_rng(seed).random(blocks.num_blocks)))
        .values())).tolist()) for seed in range(8)}
    assert len(keeps) > 1
    # and the grouped limits thin the convolutions too (not only the linear layers)
    keep = blocks.keep(blocks.select(np.random.default_rng(0).random(blocks.num_blocks)))
    conv = blocks.graph.kept_counts(keep, ["features.4.weight"])["features.4.weight"]
    assert conv <= 0.3 * np.prod(blocks.graph.shapes["features.4.weight"])


def test_too_small_a_budget_is_a_clear_error():
    with pytest.raises(ValueError, match="smallest channel submodel"):
        blocks_for(cnn(), 1e-5)


def dense_equivalent(model, gating, keep, weights):
    """The full model whose dropped channels are cut off (their input columns zeroed) and whose
    kept channels are weighted by ``weights``: what the sliced network must compute."""
    graph = gating.graph
    params = {}
    for name, p in model.named_parameters():
        t = p
        for space, axis in graph.axes_of.get(name, ()):
            if axis.dim != 1:
                continue
            full = torch.zeros(graph.spaces[space].size)
            full[keep[space]] = weights[space]
            column = full.repeat_interleave(axis.group)
            shape = [1] * t.dim()
            shape[1] = len(column)
            t = t * column.view(shape)
        params[name] = t
    return params


def test_the_sliced_network_computes_what_the_masked_dense_network_computes():
    model = cnn()
    model.eval()
    blocks = blocks_for(model, 0.3)
    gating = ChannelGating(model, blocks)
    picked = blocks.select(np.random.default_rng(1).random(blocks.num_blocks))
    keep = blocks.keep(picked)
    block_weight = torch.rand(blocks.num_blocks) + 0.5
    weights = gating.channel_weights(keep, picked, block_weight, None)
    index = gating.index(keep)
    x = torch.randn(5, *SHAPE)
    sliced = gating.forward(gating.sliced(index, [n for n, _ in model.named_parameters()], False),
                            gating.sliced(index, [n for n, _ in model.named_buffers()], False),
                            keep, weights, x)
    dense = functional_call(model, dense_equivalent(model, gating, keep, weights), (x,))
    assert torch.allclose(sliced, dense, atol=1e-5)


def test_a_sliced_step_moves_kept_coordinates_by_the_masked_dense_gradient_and_nothing_else():
    model = cnn()
    model.train()
    blocks = blocks_for(model, 0.3)
    gating = ChannelGating(model, blocks)
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    lr = 0.1
    step = ChannelStep(gating, lr=lr, momentum=0.0, weight_decay=0.0, train_model=True,
                       grad_clip=1e9)
    scores = torch.rand(blocks.num_blocks)
    x, y = torch.randn(8, *SHAPE), torch.randint(0, 4, (8,))
    gate_param = torch.nn.Parameter(torch.zeros(1))
    _, keep, _ = step(x, y, scores, scores, torch.optim.SGD([gate_param], lr=0.1))
    # the same batch through the masked dense network, from the same starting point
    reference = cnn()
    reference.load_state_dict(before)
    reference.train()
    picked = blocks.select(scores.numpy())
    weights = gating.channel_weights(keep, picked, scores * torch.from_numpy(picked).float(), None)
    params = dict(reference.named_parameters())
    loss = torch.nn.functional.cross_entropy(
        functional_call(reference, dense_equivalent(reference, gating, keep, weights), (x,)), y)
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
    masks = gating.graph.masks(keep)
    after = model.state_dict()
    for name, p in params.items():
        mask = masks.get(name, torch.ones_like(p, dtype=torch.bool))
        expected = before[name] - lr * grads[name]
        assert torch.allclose(after[name][mask], expected[mask], atol=1e-5), name
        assert torch.equal(after[name][~mask], before[name][~mask]), name
    for name in ("features.1.running_mean", "features.5.running_var"):  # BN statistics
        mask = masks[name]
        assert torch.equal(after[name][~mask], before[name][~mask])
        assert not torch.equal(after[name][mask], before[name][mask])


def channel_method(*sets: str):
    cfg = load_config(None, ["method.name=pfedgate", "model.name=cnn-bn", "train.batch_size=8",
                             "train.local_epochs=1", "train.momentum=0.9",
                             "method.pfedgate.blocks=channel", *sets])
    return build_method(cfg)


def image_data(n: int = 40) -> LocalData:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, *SHAPE, generator=g) + y.view(-1, 1, 1, 1).float()
    return LocalData(x, y, x[:0], y[:0], x[:16], y[:16])


def test_a_channel_client_stays_in_budget_and_uploads_only_what_it_touched():
    method, model = channel_method(), cnn()
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    result = method.fit(make_task(model, image_data(), 0.3))
    assert result.metrics["compute-density"] <= 0.3
    after = model.state_dict()
    for name, touched in result.upload.items():
        assert torch.equal(after[name][~touched], before[name][~touched]), name
    evaluated = method.evaluate(make_task(model, image_data(), 0.3, state={}))
    assert evaluated["eval-density"] <= 0.3 and 0 <= evaluated["accuracy"] <= 1


def test_flops_of_a_known_channel_choice_counted_by_hand(monkeypatch):
    """Force the choice (sub0 plus the first block of every space) and count by hand."""
    method, model = channel_method("method.pfedgate.knapsack=joint"), cnn()
    data = image_data(16)  # two batches of 8
    blocks = blocks_for(model, 0.5, grouped=False, split=5)
    first = np.array([b == min(i for i, s in enumerate(blocks.block_space) if s == space)
                      for b, space in enumerate(blocks.block_space)])
    monkeypatch.setattr(type(blocks), "select", lambda self, scores: first)
    result = method.fit(make_task(model, data, 0.5))
    w1, w2, w3 = (blocks.sub0[i] + len(blocks.block_channels[list(blocks.block_space).index(i)])
                  for i in range(3))
    hand = {"features.0.weight": w1 * 1 * 9, "features.1.weight": w1, "features.1.bias": w1,
            "features.4.weight": w2 * w1 * 9, "features.5.weight": w2, "features.5.bias": w2,
            "classifier.1.weight": w3 * w2 * 3 * 3, "classifier.1.bias": w3,
            "classifier.3.weight": 4 * w3, "classifier.3.bias": 4}
    cost = CostModel(model, SHAPE)
    gate = 2 * (144 * blocks.num_blocks) + blocks.num_blocks  # Linear(144 -> blocks)
    expected = 16 * (3 * cost.forward_flops_per_sample(hand) + 3 * gate)
    assert result.metrics["train-flops"] == pytest.approx(expected)
    assert result.metrics["compute-density"] == pytest.approx(sum(hand.values()) / blocks.total)


def test_channel_blocks_with_the_full_straight_through_estimator_are_refused():
    with pytest.raises(ConfigError, match=r"^method.pfedgate: blocks: channel .* use ste: kept"):
        channel_method("method.pfedgate.ste=full")


def test_limiting_activations_thins_the_full_resolution_convolution():
    """At s=0.3 weights and FLOPs leave conv1 (1 input channel, 12x12 here) nearly whole; with
    limit_activations its kept channels fall to what s of the activations allows."""
    model = cnn()
    kept = {}
    for flag in (False, True):
        method = channel_method(f"method.pfedgate.limit_activations={str(flag).lower()}")
        gating = method._gating(model, 0.3, SHAPE)
        picked = gating.blocks.select(np.random.default_rng(0).random(gating.blocks.num_blocks))
        keep = gating.blocks.keep(picked)
        kept[flag] = len(keep[gating.blocks.spaces[0]])
    conv1 = model.features[0].out_channels
    assert kept[True] < kept[False] and kept[True] <= 0.3 * conv1 + 1
