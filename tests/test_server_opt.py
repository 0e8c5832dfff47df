"""Mask-aware server optimizers and robust aggregators against per-coordinate references."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsparse.codec import decode, encode
from fedsparse.server_opt import ServerOptimizer, robust_aggregate
from fedsparse.updates import template_of

SHAPES = {"w": (3, 4), "b": (5,)}


def random_round(rng, clients):
    """Random sparse updates; returns (decoded updates, dense values, boolean masks, weights)."""
    template = template_of({k: torch.zeros(s) for k, s in SHAPES.items()})
    updates, values, masks = [], [], []
    for _ in range(clients):
        vals = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
        mask = {k: rng.random(s) < rng.uniform(0.2, 1.0) for k, s in SHAPES.items()}
        updates.append(decode(encode({k: torch.from_numpy(v) for k, v in vals.items()},
                                     {k: torch.from_numpy(m) for k, m in mask.items()}), template))
        values.append(vals)
        masks.append(mask)
    return updates, values, masks, rng.integers(1, 20, clients).astype(float).tolist()


def reference_opt(kind, x, rounds, lr, mom, b1, b2, tau):
    """Coordinate by coordinate, Reddi et al.'s update restricted to coordinates someone sent."""
    x = {k: v.astype(np.float64).reshape(-1).copy() for k, v in x.items()}
    m = {k: np.zeros_like(v) for k, v in x.items()}
    v2 = {k: np.zeros_like(v) for k, v in x.items()}
    for values, masks, weights in rounds:
        for name in x:
            for j in range(x[name].size):
                num = den = 0.0
                for vals, mask, w in zip(values, masks, weights, strict=True):
                    if mask[name].reshape(-1)[j]:
                        num += w * float(vals[name].reshape(-1)[j])
                        den += w
                if den == 0:
                    continue
                d = num / den - x[name][j]
                if kind == "avgm":
                    m[name][j] = mom * m[name][j] + d
                    x[name][j] += lr * m[name][j]
                    continue
                m[name][j] = b1 * m[name][j] + (1 - b1) * d
                if kind == "adam":
                    v2[name][j] = b2 * v2[name][j] + (1 - b2) * d * d
                else:
                    v2[name][j] -= (1 - b2) * d * d * np.sign(v2[name][j] - d * d)
                x[name][j] += lr * m[name][j] / (np.sqrt(v2[name][j]) + tau)
    return x


@pytest.mark.parametrize("kind", ["avgm", "adam", "yogi"])
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_server_optimizers_match_reference(kind, seed):
    rng = np.random.default_rng(seed)
    x0 = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    opt = ServerOptimizer(kind, lr=0.3, momentum=0.8, beta1=0.7, beta2=0.9, tau=0.01)
    state, rounds = dict(x0), []
    for _ in range(3):
        updates, values, masks, weights = random_round(rng, int(rng.integers(1, 4)))
        state = opt.step(state, updates, weights)
        rounds.append((values, masks, weights))
    want = reference_opt(kind, x0, rounds, 0.3, 0.8, 0.7, 0.9, 0.01)
    for name in x0:
        np.testing.assert_allclose(state[name].reshape(-1), want[name], rtol=1e-4, atol=1e-5)
    # state exists only where some client ever sent the coordinate
    never = np.ones(x0["w"].size, bool)
    for _values, masks, _ in rounds:
        for mask in masks:
            never &= ~mask["w"].reshape(-1)
    assert (opt.state["w"]["m"][never] == 0).all()
    assert np.array_equal(state["w"].reshape(-1)[never], x0["w"].reshape(-1)[never])


def reference_robust(x, values, masks, trim):
    out = {}
    for name, old in x.items():
        flat = old.reshape(-1).astype(np.float64).copy()
        for j in range(flat.size):
            held = sorted(float(v[name].reshape(-1)[j]) for v, m in zip(values, masks, strict=True)
                          if m[name].reshape(-1)[j])
            if not held:
                continue
            if trim is None:
                flat[j] = float(np.median(held))
            else:
                cut = int(np.floor(trim * len(held)))
                flat[j] = float(np.mean(held[cut:len(held) - cut]))
        out[name] = flat
    return out


@pytest.mark.parametrize("trim", [None, 0.0, 0.2, 0.34])
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), clients=st.integers(1, 7))
def test_median_and_trimmed_mean_match_reference(trim, seed, clients):
    rng = np.random.default_rng(seed)
    x0 = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    updates, values, masks, _ = random_round(rng, clients)
    got = robust_aggregate(x0, updates, trim=trim, min_holders=1)  # the plain statistic
    want = reference_robust(x0, values, masks, trim)
    for name in x0:
        np.testing.assert_allclose(got[name].reshape(-1), want[name], rtol=1e-5, atol=1e-6)


def test_median_resists_one_outlier():
    x0 = {"w": np.zeros(4, np.float32)}
    template = template_of({"w": torch.zeros(4)})
    ups = [decode(encode({"w": torch.full((4,), v)}), template) for v in (1.0, 1.1, 1e6)]
    assert np.allclose(robust_aggregate(x0, ups)["w"], 1.1)
    assert np.allclose(robust_aggregate(x0, ups, trim=0.34)["w"], 1.1)
    with pytest.raises(ValueError):
        robust_aggregate(x0, ups, trim=0.5)


def test_a_regrown_weight_starts_with_zero_optimizer_state():
    from fedsparse.updates import SparseUpdate, TensorUpdate

    opt = ServerOptimizer("adam", lr=0.1)
    old = {"w": np.array([1.0, 2.0, 3.0], dtype=np.float32)}
    update = SparseUpdate({"w": TensorUpdate(np.array([2.0, 3.0, 4.0], dtype=np.float32), None, 3)})
    stepped = opt.step(old, [update], [1.0])
    assert (opt.state["w"]["m"] != 0).all()
    # a method prunes coordinate 0 and regrows coordinate 2 at zero after the step
    adjusted = {"w": np.array([0.0, stepped["w"][1], 0.0], dtype=np.float32)}
    opt.forget_where_changed(stepped, adjusted)
    assert opt.state["w"]["m"][0] == 0 and opt.state["w"]["m"][2] == 0
    assert opt.state["w"]["v"][2] == 0 and opt.state["w"]["m"][1] != 0
