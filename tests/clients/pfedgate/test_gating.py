import itertools

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsparse.clients.pfedgate.gating import GateNet, gated_scales, kept_from_scales, knapsack, make_layout
from fedsparse.config import ModelConfig
from fedsparse.models import build_model

items = st.integers(1, 9).flatmap(lambda n: st.tuples(
    st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n),
    st.lists(st.integers(0, 30), min_size=n, max_size=n),
    st.integers(0, 120)))


def brute_force(scores, sizes, capacity) -> float:
    best = 0.0
    for picks in itertools.product([0, 1], repeat=len(scores)):
        if sum(p * w for p, w in zip(picks, sizes, strict=True)) <= capacity:
            best = max(best, sum(p * v for p, v in zip(picks, scores, strict=True)))
    return best


@settings(max_examples=150, deadline=None)
@given(items)
def test_knapsack_is_optimal_and_within_capacity(case):
    scores, sizes, capacity = np.array(case[0]), np.array(case[1]), case[2]
    picked = knapsack(scores, sizes, capacity)
    assert sizes[picked].sum() <= capacity
    assert scores[picked].sum() >= brute_force(scores, sizes, capacity) - 1e-9


@settings(max_examples=150, deadline=None)
@given(items)
def test_greedy_fallback_stays_within_capacity_and_half_optimal(case):
    scores, sizes, capacity = np.array(case[0]), np.array(case[1]), case[2]
    picked = knapsack(scores, sizes, capacity, exact_limit=0)
    assert sizes[picked].sum() <= capacity
    assert scores[picked].sum() >= 0.5 * brute_force(scores, sizes, capacity) - 1e-9


def _params():
    torch.manual_seed(0)
    return dict(build_model(ModelConfig(name="cnn-bn"), (1, 28, 28), 10).named_parameters())


@settings(max_examples=30, deadline=None)
@given(density=st.sampled_from([0.01, 0.05, 0.1, 0.19, 0.3, 0.5, 1.0]),
       split=st.sampled_from([1, 5, 8]), seed=st.integers(0, 1000))
def test_budget_is_a_hard_limit_for_every_s(density, split, seed):
    params = _params()
    layout = make_layout(params, density, split=split)
    g = torch.rand(layout.num_blocks, generator=torch.Generator().manual_seed(seed))
    kept = kept_from_scales(gated_scales(g, g, layout))
    achieved = sum(kept.values()) / layout.total
    assert achieved <= density + 1e-12
    assert all(kept[n] >= s0 for n, s0 in zip(layout.names, layout.sub0, strict=True))


def test_small_budgets_are_enforced_unlike_the_authors_code():
    layout = make_layout(_params(), 0.05, split=5)  # authors' code never went below 0.2
    ones = torch.ones(layout.num_blocks)
    achieved = sum(kept_from_scales(gated_scales(ones, ones, layout)).values()) / layout.total
    assert 0.03 < achieved <= 0.05


def test_full_budget_keeps_everything():
    layout = make_layout(_params(), 1.0)
    g = torch.full((layout.num_blocks,), 0.5)
    assert sum(kept_from_scales(gated_scales(g, g, layout)).values()) == layout.total


def test_straight_through_gradients_reach_the_gate():
    params = _params()
    layout = make_layout(params, 0.3)
    gate = GateNet((1, 28, 28), layout.num_blocks)
    g, m = (t.mean(0) for t in gate(torch.randn(8, 1, 28, 28)))
    scales = gated_scales(g, m, layout)
    loss = sum((p * scales[n]).sum() for n, p in params.items())
    loss.backward()
    assert gate.score[0].weight.grad is not None and gate.score[0].weight.grad.abs().sum() > 0
    picked = torch.cat([s.detach().flatten() for s in scales.values()])
    assert set(torch.unique(picked != 0).tolist()) <= {True, False}


def test_weight_head_and_vector_inputs():
    gate = GateNet((60,), 12, weight_head=True)
    g, m = gate(torch.randn(4, 60))
    assert g.shape == m.shape == (4, 12) and not torch.equal(g, m)
    assert ((g > 0) & (g < 1)).all()
