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


def _cnn_params():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="cnn-bn"), (1, 28, 28), 10)
    from fedsparse.clients.pfedgate.method import linear_or_other

    return model, dict(model.named_parameters()), linear_or_other(model)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.1, 0.3, 0.5]))
def test_grouped_knapsack_never_exceeds_either_group_and_is_optimal_per_group(seed, density):
    params = {"conv.weight": torch.zeros(6, 5), "conv.bias": torch.zeros(4),
              "fc.weight": torch.zeros(8, 4), "fc.bias": torch.zeros(3)}
    groups = {"conv.weight": "other", "conv.bias": "other", "fc.weight": "linear", "fc.bias": "linear"}
    layout = make_layout(params, density, split=3, sub0_fraction=0.5, groups=groups)
    assert len(layout.capacities) == 2
    scores = torch.rand(layout.num_blocks, generator=torch.Generator().manual_seed(seed))
    from fedsparse.clients.pfedgate.gating import pick_blocks

    picks = pick_blocks(scores, layout).numpy().astype(bool)
    sizes, block_groups = layout.block_sizes(), layout.block_groups()
    for g, capacity in enumerate(layout.capacities):
        members = block_groups == g
        assert sizes[picks & members].sum() <= capacity
        best = brute_force(scores.numpy()[members], sizes[members], capacity)
        assert scores.numpy()[picks & members].sum() >= best - 1e-9
    kept = sum(layout.sub0) + sizes[picks].sum()
    assert kept <= int(density * layout.total + 1e-9)  # still a hard limit on the whole model


def test_grouped_knapsack_thins_convolutions_so_flops_fall():
    """At s=0.3 on cnn-bn one joint knapsack spends the budget on the big linear layer and keeps
    the convolutions (~92% of the FLOPs) whole; grouped, the convolutions are thinned too."""
    from fedsparse.costs import CostModel

    model, params, groups = _cnn_params()
    cost = CostModel(model, (1, 28, 28))
    dense = cost.forward_flops_per_sample(cost.dense_counts())
    ratios = {}
    for mode in ("joint", "grouped"):
        layout = make_layout(params, 0.3, split=5, sub0_fraction=0.5,
                             groups=groups if mode == "grouped" else None)
        flops = []
        for seed in range(4):
            g = torch.rand(layout.num_blocks, generator=torch.Generator().manual_seed(seed))
            kept = kept_from_scales(gated_scales(g, g, layout))
            assert sum(kept.values()) <= int(0.3 * layout.total + 1e-9)
            flops.append(cost.forward_flops_per_sample(kept) / dense)
        ratios[mode] = max(flops)
    assert ratios["joint"] > 0.8 and ratios["grouped"] <= 0.45


def test_kept_only_straight_through_gives_dropped_blocks_no_gradient():
    params = {"w": torch.zeros(40), "v": torch.zeros(40)}
    layout = make_layout(params, 0.3, split=4, sub0_fraction=0.5)
    for ste, dropped_grad_zero in (("kept", True), ("full", False)):
        g = torch.rand(layout.num_blocks, generator=torch.Generator().manual_seed(1)).requires_grad_()
        scales = gated_scales(g, g, layout, ste=ste)
        (sum(s.sum() for s in scales.values())).backward()
        from fedsparse.clients.pfedgate.gating import pick_blocks

        dropped = pick_blocks(g, layout) == 0
        assert dropped.any()
        assert bool((g.grad[dropped] == 0).all()) is dropped_grad_zero


def test_blocks_that_fit_fill_the_budget_and_give_the_gate_a_choice():
    """Grouped at s=0.3 with B=5, no linear block fits the capacity (the mask is fixed and the
    model keeps ~0.15 of its weights); cut so that 4 fit, the budget is used and scores matter."""
    from fedsparse.clients.pfedgate.gating import pick_blocks

    _, params, groups = _cnn_params()
    plain = make_layout(params, 0.3, split=5, sub0_fraction=0.5, groups=groups)
    fitted = make_layout(params, 0.3, split=5, sub0_fraction=0.5, groups=groups, block_fit=4)
    picks = []
    for seed in range(3):
        g = torch.rand(fitted.num_blocks, generator=torch.Generator().manual_seed(seed))
        kept = sum(kept_from_scales(gated_scales(g, g, fitted)).values())
        assert 0.25 * fitted.total <= kept <= int(0.3 * fitted.total + 1e-9)
        picks.append(tuple(pick_blocks(g, fitted).tolist()))
    assert len(set(picks)) == 3
    g = torch.rand(plain.num_blocks, generator=torch.Generator().manual_seed(0))
    assert sum(kept_from_scales(gated_scales(g, g, plain)).values()) < 0.2 * plain.total


def test_sub0_scores_scale_each_sub0_and_receive_gradient():
    params = _params()
    layout = make_layout(params, 0.3)
    tensors = len(layout.names)
    gate = GateNet((1, 28, 28), layout.num_blocks + tensors)
    g, m = (t.mean(0) for t in gate(torch.randn(8, 1, 28, 28)))
    scales = gated_scales(g, m, layout)
    for t, (name, sub0) in enumerate(zip(layout.names, layout.sub0, strict=True)):
        head = scales[name].flatten()[:sub0]
        assert torch.allclose(head, m[layout.num_blocks + t].expand(sub0))
    # the knapsack still picks among the gated blocks only, within the budget
    assert sum(kept_from_scales(scales).values()) <= 0.3 * layout.total
    sum(((p + 1) * scales[n]).sum() for n, p in params.items()).backward()  # + 1: biases start at 0
    grad = gate.score[0].weight.grad
    assert all(sub0 > 0 for sub0 in layout.sub0)
    assert grad[layout.num_blocks:].abs().sum(dim=1).gt(0).all()  # every sub0 score learns


def test_the_authors_rounded_greedy_pick_on_a_small_case():
    """round(10 x score) = 4, 5, 8: the authors take the block of value 8 first (size 10 fills
    the capacity), where the exact knapsack takes the two smaller ones worth 0.9 together."""
    from fedsparse.clients.pfedgate.gating import knapsack, rounded_greedy

    scores, sizes = np.array([0.44, 0.46, 0.8]), np.array([5, 5, 10])
    assert rounded_greedy(scores, sizes, 10).tolist() == [False, False, True]
    assert knapsack(scores, sizes, 10).tolist() == [True, True, False]
    # equal rounded values go in index order; a zero-valued block that fits is still taken
    assert rounded_greedy(np.array([0.41, 0.44, 0.02]), np.array([6, 6, 3]), 10).tolist() == [
        True, False, True]


def test_the_solver_option_reaches_the_training_step():
    import pytest

    from fedsparse.clients.pfedgate.method import PFedGate
    from tests.clients.helpers import make_data, make_method, make_task

    method, model = make_method("pfedgate", "method.pfedgate.blocks=weights",
                                "method.pfedgate.knapsack_solver=rounded-greedy",
                                "model.hidden=[16]", "train.batch_size=16")
    assert method._gating(model, 0.3, (12,)).solver == "rounded-greedy"
    result = method.fit(make_task(model, make_data(0), 0.3))
    assert result.metrics["compute-density"] <= 0.3 + 1e-12
    with pytest.raises(ValueError, match="built for flat-weight blocks"):
        PFedGate.Options(blocks="channel", knapsack_solver="rounded-greedy")


def test_the_gate_has_no_choice_when_every_block_that_fits_fits_together():
    from fedsparse.clients.pfedgate.gating import gate_has_choices
    from fedsparse.clients.pfedgate.method import linear_or_other
    from fedsparse.config import ModelConfig
    from fedsparse.models import build_model

    model = build_model(ModelConfig(name="cnn-bn"), (1, 28, 28), 10)
    params, groups = dict(model.named_parameters()), linear_or_other(model)
    # B = 5 at s = 0.3: no block of the large linear layer fits, and the few small blocks that
    # do fit all fit together, so every batch keeps the same blocks
    assert not gate_has_choices(make_layout(params, 0.3, 5, 0.5, groups))
    assert gate_has_choices(make_layout(params, 0.3, 5, 0.5, groups, block_fit=4))
    assert gate_has_choices(make_layout(params, 0.5, 5, 0.5, groups))
