"""The server's side of FedTiny / FedDST / prune-at-init: plans, pair checks, the prune/grow step."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedsparse.budgets import Budget
from fedsparse.clients.shared_mask.options import PruningOptions
from fedsparse.clients.shared_mask.pruning import adjustment_fraction, adjustment_memory, magnitude_masks
from fedsparse.clients.shared_mask.server import PairsRejected, SharedMaskServer
from fedsparse.costs import CostModel
from fedsparse.masks import prunable_weights

#: the family member each adjustment mode belongs to
MODES = {"fedtiny": "pairs", "feddst": "local", "prune-at-init": "fixed"}


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 8, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 3))


def make(method="fedtiny", budgets=(Budget(0.3),), **cfg) -> tuple[SharedMaskServer, nn.Module]:
    model = net()
    params = dict(model.named_parameters())
    server = SharedMaskServer(MODES[method], PruningOptions(**cfg), prunable_weights(params, True),
                              {n: tuple(p.shape) for n, p in model.named_parameters()}, list(budgets),
                              CostModel(model, (1, 8, 8)), False, adjust_until=20)
    weights = {n: p.detach() for n, p in model.named_parameters() if n in server.prunable}
    server.set_masks(magnitude_masks(weights, server.top_density))
    return server, model


def state(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def test_plan_cycles_units_with_cosine_k():
    server, _ = make(granularity="layer", adjust_every=5)
    assert server.plan_round(3).k == {}
    plan = server.plan_round(5)
    (name, k), = plan.k.items()
    assert name == server.prunable[-1]
    alpha = server.cfg.initial_alpha
    assert k == math.ceil(adjustment_fraction(5, 20, alpha) * int(server.masks[name].sum()))
    assert server.train_config() == {"adjust-layers": [name], "adjust-k": [k]}
    server.after_aggregate(state(net()), [])
    assert list(server.plan_round(10).k) == [server.prunable[-2]]
    assert server.plan_round(20).k == {}  # T_end reached


def test_check_pairs_enforces_k_pruned_positions_and_shape():
    server, _ = make(granularity="layer", adjust_every=1)
    plan = server.plan_round(1)
    (name, k), = plan.k.items()
    pruned = np.flatnonzero(~server.masks[name].numpy().ravel())
    kept = np.flatnonzero(server.masks[name].numpy().ravel())
    good = {name: (pruned[:k], np.ones(k, np.float32))}
    server.check_pairs(good)
    bad = [
        ({name: (pruned[:k + 1], np.ones(k + 1, np.float32))}, "more than K"),
        ({name: (kept[:1], np.ones(1, np.float32))}, "not pruned"),
        ({name: (np.array([pruned[0], pruned[0]]), np.ones(2, np.float32))}, "repeated"),
        ({name: (np.array([10**9]), np.ones(1, np.float32))}, "out of range"),
        ({name: (pruned[:1], np.array([np.nan], np.float32))}, "non-finite"),
        ({"0.weight": (pruned[:1], np.ones(1, np.float32))}, "not being adjusted"),
        (None, "lacks"),
    ]
    for pairs, message in bad:
        with pytest.raises(PairsRejected, match=message):
            server.check_pairs(pairs)


def test_fedtiny_step_keeps_layer_density_and_grows_top_averaged_gradients():
    server, model = make(granularity="layer", adjust_every=1)
    (name, k), = server.plan_round(1).k.items()
    before = server.masks[name].clone()
    pruned = np.flatnonzero(~before.numpy().ravel())
    rng = np.random.default_rng(0)
    reports = [{name: (np.sort(rng.choice(pruned, k, replace=False)),
                       rng.normal(size=k).astype(np.float32))} for _ in range(3)]
    avg = np.zeros(before.numel())
    for r in reports:
        avg[r[name][0]] += r[name][1] / 3
    expected_grow = set(np.argsort(-np.abs(avg), kind="stable")[:k])
    new = server.after_aggregate(state(model), reports)
    after = server.masks[name]
    assert int(after.sum()) == int(before.sum())
    grown = set(np.flatnonzero((after & ~before).numpy().ravel()))
    assert grown == expected_grow
    assert np.all(new[name].ravel()[list(grown)] == 0)
    assert np.all(new[name][~after.numpy()] == 0)


def test_nested_tier_masks_and_adjust_mask_only_below_top():
    server, model = make(budgets=(Budget(0.1), Budget(0.3)), granularity="layer", adjust_every=1)
    params = dict(model.named_parameters())
    small = server.masks_for(params, Budget(0.1))
    top = server.masks_for(params, Budget(0.3))
    for name in server.prunable:
        assert not (small[name] & ~top[name]).any()
        assert torch.equal(top[name], server.masks[name])
    server.plan_round(1)
    assert server.adjust_mask_bits(Budget(0.3)) == {}
    assert list(server.adjust_mask_bits(Budget(0.1))) == list(server.plan.k)
    assert server.extra_memory(Budget(0.1)) > server.extra_memory(Budget(0.3)) > 0


def test_granularity_follows_the_tightest_memory_budget():
    server, _ = make()
    base = server.training_memory(0.3, CostModel(net(), (1, 8, 8)), False)
    # no declared budget: memory first, scoring may at most double the sparse model's memory
    assert server.granularity == "chunk" and server.scoring_memory("layer", {
        n: math.ceil(1.5 * server.top_density * server.sizes[n]) for n in server.prunable}) > base
    nnz = {n: math.ceil(1.5 * server.top_density * server.sizes[n]) for n in server.prunable}
    largest_layer = max(adjustment_memory([n], server.sizes, nnz, server.cfg.initial_alpha)
                        for n in server.prunable)
    assert adjustment_memory(server.prunable, server.sizes, nnz, server.cfg.initial_alpha) > largest_layer
    tight = make(budgets=(Budget(0.3, memory_bytes=base + largest_layer),))[0]
    assert tight.granularity == "block"  # a plain Sequential: each block is one layer
    roomy = make(budgets=(Budget(0.3, memory_bytes=base + largest_layer), Budget(0.3, memory_bytes=1e9)))
    assert roomy[0].granularity == "block"  # the tightest client decides
    # below the largest layer: its gradient is formed a few rows at a time
    assert make(budgets=(Budget(0.3, memory_bytes=base + largest_layer - 1),))[0].granularity == "chunk"
    streamed = server.scoring_memory("chunk", nnz)
    assert streamed < largest_layer
    with pytest.raises(ValueError, match=r"cannot train density 0\.3 and score its largest chunk"):
        make(budgets=(Budget(0.3, memory_bytes=base + streamed - 1),))
    assert make(granularity="model")[0].granularity == "model"  # asked for, no budget declared


def test_feddst_prunes_the_average_back_to_each_layer_count():
    server, model = make("feddst", adjust_every=1)
    counts = {n: int(m.sum()) for n, m in server.masks.items()}
    assert set(server.plan_round(1).k) == set(server.prunable)
    arrays = state(model)
    arrays[server.prunable[0]] = np.random.default_rng(1).normal(size=arrays[server.prunable[0]].shape
                                                                 ).astype(np.float32)
    out = server.after_aggregate(arrays, [])
    assert {n: int(m.sum()) for n, m in server.masks.items()} == counts
    name = server.prunable[0]
    kept = np.abs(arrays[name][server.masks[name].numpy()])
    assert kept.min() >= np.abs(arrays[name][~server.masks[name].numpy()]).max()
    assert np.count_nonzero(out[name]) == counts[name]


def test_state_round_trips():
    server, _ = make()
    server.adjustments, server.info = 3, {"chosen": 2}
    other, _ = make()
    other.masks = {n: torch.zeros_like(m) for n, m in other.masks.items()}
    other.restore(server.state())
    assert other.adjustments == 3 and other.info == {"chosen": 2}
    assert all(torch.equal(other.masks[n], server.masks[n]) for n in server.masks)


def test_adjustment_rounds_cost_an_extra_batch_and_the_dense_unit_gradient():
    server, _ = make(granularity="layer", adjust_every=5)
    server.batch_size = 8
    server.plan_round(4)
    assert server.extra_flops(Budget(0.3)) == 0 and server.extra_memory(Budget(0.3)) == 0
    server.plan_round(5)
    (name, k), = server.plan.k.items()
    assert server.extra_memory(Budget(0.3)) == server.sizes[name] * 4 + k * 8
    assert server.extra_flops(Budget(0.3)) > 8 * 2 * server.sizes[name]


def test_the_schedule_scales_with_the_run():
    from fedsparse.clients.shared_mask.options import PruningOptions

    default = PruningOptions()
    assert default.end_round(30) == 22 and default.every(30) == 2  # ~8 adjustments, not 4
    assert default.every(300) == 28 and default.every(4) == 1
    assert PruningOptions(adjust_every=5).every(30) == 5
    # one unit adjusted per round in turn: each of 3 layers still gets ~8 adjustments
    assert default.every(30, units=3) == 1 and default.every(300, units=3) == 9
    assert PruningOptions(adjust_every=5).every(30, units=3) == 5
    # alpha: 0.5 for weights, 0.1 for whole filters (not re-measured), a set value wins
    assert default.initial_alpha == 0.5 and PruningOptions(granularity="filter").initial_alpha == 0.1
    assert PruningOptions(alpha=0.2, granularity="filter").initial_alpha == 0.2


def test_a_layer_by_layer_server_adjusts_each_layer_about_eight_times():
    server, _ = make(granularity="layer")
    assert len(server.units) >= 2
    per_unit = len(range(0, server.adjust_until, server.adjust_every)) / len(server.units)
    assert server.adjust_every == max(1, server.adjust_until // (8 * len(server.units)))
    assert per_unit >= 8 or server.adjust_every == 1
