"""Filter-level shared masks: channel counts per density, importance, growth that keeps the
network's function, growth scores on the sliced probe equal to the dense model's, and the
server's prune-and-grow step and report checks."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fedsparse.budgets import Budget
from fedsparse.clients.shared_mask.filter_server import FilterMaskServer
from fedsparse.clients.shared_mask.filters import (
    counts_density,
    fit_counts,
    fresh_values,
    growth_scores,
    importance,
    keep_by_importance,
    prune_and_grow_channels,
    reading_axes,
    report_top,
    uniform_counts,
    write_channels,
)
from fedsparse.clients.shared_mask.options import PruningOptions
from fedsparse.clients.shared_mask.server import PairsRejected
from tests.test_structured import masked_copy, model_and_graph, random_keep

CNN = ("cnn-bn", (1, 28, 28))
RESNET = ("resnet18", (3, 32, 32))


def params_of(model):
    return [n for n, _ in model.named_parameters()]


@pytest.mark.parametrize("density", [0.05, 0.1, 0.3, 0.7])
def test_counts_hold_at_most_the_density_and_come_within_one_channel_of_it(density):
    model, graph = model_and_graph(*CNN)
    params = params_of(model)
    counts = uniform_counts(graph, params, density)
    assert counts_density(graph, counts, params) <= density
    # one more channel in any space that can grow passes the density: the fit is tight
    for space, c in counts.items():
        if c < graph.spaces[space].size:
            assert counts_density(graph, {**counts, space: c + 1}, params) > density * 0.97
    # scaled up as well as down, and every space keeps one channel at least
    small = {s: 1 for s in counts}
    up = fit_counts(graph, small, params, density)
    assert counts_density(graph, up, params) <= density and sum(up.values()) > len(up)
    with pytest.raises(ValueError, match="narrowest"):
        fit_counts(graph, counts, params, 1e-5)


def test_importance_ranks_by_reading_weights_times_gamma():
    model, graph = model_and_graph(*CNN)
    state = model.state_dict()
    space = next(s for s in graph.spaces if norm_gamma(graph, s))
    (gamma,) = norm_gamma(graph, space)
    with torch.no_grad():
        state[gamma][3] = 0.0  # a channel its BatchNorm switched off matters not at all
        for axis in reading_axes(graph, space):
            state[axis.tensor].index_fill_(axis.dim, axis.coordinates(torch.tensor([5])), 0.0)
    scores = importance(graph, state, space)
    assert scores[3] == 0 and scores[5] == 0 and (scores > 0).sum() == graph.spaces[space].size - 2
    keep = keep_by_importance(graph, state, {s: 4 for s in graph.spaces})
    assert 3 not in keep[space].tolist() and 5 not in keep[space].tolist()


def norm_gamma(graph, space):
    sp = graph.spaces[space]
    return [a.tensor for a in sp.axes if a.dim == 0 and a.tensor.endswith(".weight")
            and a.tensor not in {f"{layer}.weight" for layer in sp.layers}]


@pytest.mark.parametrize("name_shape", [CNN, RESNET])
def test_growing_a_channel_leaves_the_function_unchanged(name_shape):
    model, graph = model_and_graph(*name_shape)
    keep = random_keep(graph, 0.5, seed=1)
    masked, _ = masked_copy(model, graph, keep)
    x = torch.randn(4, *name_shape[1])
    masked.eval()
    before = masked(x)
    state = masked.state_dict()
    for space, sp in graph.spaces.items():
        pruned = torch.tensor(sorted(set(range(sp.size)) - set(keep[space].tolist())))
        write_channels(state, graph, space, pruned,
                       fresh_values(graph, {n: tuple(t.shape) for n, t in state.items()}, space, 7, 3))
    assert torch.allclose(masked(x), before, atol=1e-5)
    # the fresh filters are the same on every call (clients and server agree) and not zero
    one = fresh_values(graph, graph.shapes, next(iter(graph.spaces)), 7, 3)
    two = fresh_values(graph, graph.shapes, next(iter(graph.spaces)), 7, 3)
    assert all(torch.equal(one[n], two[n]) for n in one)
    assert any(t.abs().sum() > 0 for n, t in one.items() if n.endswith(".weight"))


@pytest.mark.parametrize("name_shape", [CNN, RESNET])
def test_growth_scores_on_the_sliced_probe_equal_the_dense_models(name_shape):
    """The probe (every other space sliced) gives the gradient the masked dense model gives."""
    model, graph = model_and_graph(*name_shape)
    keep = random_keep(graph, 0.5, seed=2)
    masked, _ = masked_copy(model, graph, keep)
    x, y = torch.randn(6, *name_shape[1]), torch.randint(0, 10, (6,))
    buffers = {n: b.clone() for n, b in masked.named_buffers()}
    for space in list(graph.spaces)[-2:]:
        pruned = torch.tensor(sorted(set(range(graph.spaces[space].size)) - set(keep[space].tolist())))
        scores = growth_scores(graph, masked, keep, space, pruned, x, y, seed=3, server_round=4)
        assert all(torch.equal(b, buffers[n]) for n, b in masked.named_buffers())
        dense = copy.deepcopy(masked)
        state = dense.state_dict()
        write_channels(state, graph, space, pruned,
                       fresh_values(graph, {n: tuple(t.shape) for n, t in state.items()}, space, 3, 4))
        dense.train()
        nn.functional.cross_entropy(dense(x), y).backward()
        params = dict(dense.named_parameters())
        expected = torch.zeros(graph.spaces[space].size, dtype=torch.float64)
        for axis in reading_axes(graph, space):
            grad = params[axis.tensor].grad.movedim(axis.dim, 0)
            per = (grad.reshape(grad.shape[0], -1).double() ** 2).sum(dim=1)
            expected += per.view(-1, axis.group).sum(dim=1) if axis.group > 1 else per
        assert torch.allclose(scores.double(), expected[pruned], rtol=1e-3, atol=1e-9)
        assert (scores > 0).any()
        index, values = report_top(scores, pruned, 3)
        assert len(index) == 3 and set(index) <= set(pruned.tolist())
        assert np.all(values >= np.sort(scores.numpy())[-3] - 1e-12)


def test_prune_and_grow_keeps_the_count_grows_the_top_scores_and_zeroes_the_dropped():
    model, graph = model_and_graph(*CNN)
    keep = random_keep(graph, 0.5, seed=3)
    masked, _ = masked_copy(model, graph, keep)
    state = {n: t.detach().clone() for n, t in masked.state_dict().items()}
    space = list(graph.spaces)[-1]
    kept = keep[space]
    pruned = np.array(sorted(set(range(graph.spaces[space].size)) - set(kept.tolist())))
    reports = [(pruned[:3], np.array([5.0, 1.0, 4.0], np.float32)),
               (pruned[1:4], np.array([9.0, 0.5, 0.1], np.float32))]  # means: 2.5 5 2.25 0.05
    least = importance(graph, state, space)[kept].argsort()[:2]
    new, grown = prune_and_grow_channels(graph, state, space, kept, reports, 2, 11, 5)
    assert grown == 2 and len(new) == len(kept)
    assert set(new.tolist()) == (set(kept.tolist()) - set(kept[least].tolist())) | {pruned[0], pruned[1]}
    for axis in graph.spaces[space].axes:
        along = state[axis.tensor].movedim(axis.dim, 0)
        for channel in kept[least].tolist():
            rows = axis.coordinates(torch.tensor([channel]))
            if not axis.tensor.endswith("running_var"):
                assert along[rows].abs().sum() == 0  # a dropped channel is gone everywhere
        rows = axis.coordinates(torch.tensor([int(pruned[0])]))
        if axis.dim == 1:
            assert along[rows].abs().sum() == 0  # a grown channel is read by nothing yet
    assert not torch.isnan(torch.cat([t.flatten().float() for t in state.values()])).any()


def server_for(model, budgets, cfg=None):
    return FilterMaskServer("pairs", cfg or PruningOptions(granularity="filter"), model, (1, 28, 28),
                            budgets, False, adjust_until=8, adjust_every=1, seed=0)


def test_server_nests_tiers_plans_one_space_and_refuses_bad_reports():
    model, graph = model_and_graph(*CNN)
    budgets = [Budget(0.1), Budget(0.3)]
    server = server_for(model, budgets)
    state = model.state_dict()
    top = keep_by_importance(graph, state, server.uniform)
    server.set_masks(graph.masks(top, server.prunable))
    params = dict(model.named_parameters())
    low = server.masks_for(params, Budget(0.1))
    high = server.masks_for(params, Budget(0.3))
    for name in low:
        assert not (low[name] & ~high[name]).any()  # the small tier's channels are the top tier's
    low_keep = graph.keep_of({n: low[n] for n in server.prunable})
    assert counts_density(graph, {s: len(k) for s, k in low_keep.items()}, params_of(model)) <= 0.1
    plan = server.plan_round(1)
    (space, k), = plan.k.items()
    assert space == list(graph.spaces)[-1] and k >= 1
    config = server.train_config()
    assert config["adjust-channels"] == server.keep[space].tolist()
    pruned = np.array(sorted(set(range(graph.spaces[space].size)) - set(server.keep[space].tolist())))
    good = {space: (pruned[:k], np.ones(k, np.float32))}
    server.check_pairs(good)
    bad = [{space: (pruned[:k + 1], np.ones(k + 1, np.float32))},
           {space: (server.keep[space][:1].numpy(), np.ones(1, np.float32))},
           {space: (pruned[:1], -np.ones(1, np.float32))},
           {space: (np.array([graph.spaces[space].size]), np.ones(1, np.float32))},
           {"elsewhere": (pruned[:1], np.ones(1, np.float32))}, None]
    for report in bad:
        with pytest.raises(PairsRejected):
            server.check_pairs(report)
    arrays = {n: t.numpy().copy() for n, t in state.items()}
    out = server.after_aggregate(arrays, [good])
    assert len(server.keep[space]) == len(top[space]) and server.history[-1]["regrown"] == {space: k}
    saved = server.state()
    again = server_for(model, budgets)
    again.restore(saved)
    assert all(torch.equal(again.keep[s], server.keep[s]) for s in graph.spaces)
    masks = server.masks
    assert all(not out[n][~masks[n].numpy()].any() for n in masks)


def test_filter_granularity_refuses_what_it_cannot_serve():
    model, _ = model_and_graph(*CNN)
    with pytest.raises(ValueError, match="feddst"):
        FilterMaskServer("local", PruningOptions(granularity="filter"), model, (1, 28, 28),
                         [Budget(0.3)], False, 8, 1, 0)
    with pytest.raises(ValueError, match="narrowest"):
        server_for(model, [Budget(1e-5)])
