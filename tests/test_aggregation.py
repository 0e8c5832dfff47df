import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsparse.aggregation import masked_fedavg
from fedsparse.codec import decode, encode
from fedsparse.updates import template_of


def reference(global_state, states, masks, weights):
    """Coordinate by coordinate, the rule as written in the issue."""
    out = {}
    for name, old in global_state.items():
        flat = old.reshape(-1).copy()
        if not np.issubdtype(old.dtype, np.floating):
            out[name] = old.copy()
            continue
        for j in range(flat.size):
            num = den = 0.0
            for state, mask, w in zip(states, masks, weights, strict=True):
                if name in mask and mask[name].reshape(-1)[j]:
                    num += w * float(state[name].reshape(-1)[j])
                    den += w
            if den > 0:
                flat[j] = num / den
        out[name] = flat.reshape(old.shape)
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), clients=st.integers(1, 5))
def test_matches_reference_on_random_masks(seed, clients):
    rng = np.random.default_rng(seed)
    shapes = {"w": (4, 3), "b": (5,)}
    global_state = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    global_state["n"] = np.array(3, dtype=np.int64)
    template = template_of({k: torch.from_numpy(v) for k, v in global_state.items()})
    states, masks, updates = [], [], []
    weights = rng.integers(1, 50, clients).tolist()
    for _ in range(clients):
        state = {k: torch.from_numpy(rng.normal(size=s).astype(np.float32)) for k, s in shapes.items()}
        mask = {k: torch.from_numpy(rng.random(s) < rng.random()) for k, s in shapes.items()
                if rng.random() < 0.8}  # some clients send no entry for a tensor
        sent = {k: v for k, v in state.items() if k in mask}
        states.append({k: v.numpy() for k, v in state.items()})
        masks.append({k: v.numpy() for k, v in mask.items()})
        updates.append(decode(encode(sent, mask), template))
    got = masked_fedavg(global_state, updates, weights)
    want = reference(global_state, states, masks, weights)
    for name in global_state:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
        assert got[name].dtype == global_state[name].dtype


def test_dense_updates_give_the_weighted_mean():
    g = {"w": np.zeros(3, np.float32)}
    template = template_of({"w": torch.zeros(3)})
    ups = [decode(encode({"w": torch.full((3,), v)}), template) for v in (1.0, 4.0)]
    np.testing.assert_allclose(masked_fedavg(g, ups, [3, 1])["w"], [1.75] * 3)


def test_unsent_coordinates_keep_their_value():
    g = {"w": np.array([9.0, 9.0, 9.0], np.float32)}
    template = template_of({"w": torch.zeros(3)})
    up = decode(encode({"w": torch.tensor([1.0, 2.0, 3.0])}, {"w": torch.tensor([True, False, True])}),
                template)
    np.testing.assert_allclose(masked_fedavg(g, [up], [1])["w"], [1.0, 9.0, 3.0])
    with pytest.raises(ValueError):
        masked_fedavg(g, [up], [1, 2])


def test_many_sparse_clients_match_float64_and_do_not_depend_on_threads(monkeypatch):
    """Float32 sums on a thread per tensor: within float32 rounding of a float64 numpy
    average, and the same bits whatever the number of threads."""
    import fedsparse.parallel as parallel

    rng = np.random.default_rng(3)
    shapes = {"a": (300, 40), "b": (7, 5, 3, 3), "c": (11,)}
    global_state = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    template = template_of({k: torch.from_numpy(v) for k, v in global_state.items()})
    weights = rng.integers(1, 600, 30).tolist()
    updates, num, den = [], {}, {}
    for w in weights:
        state = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
        mask = {k: rng.random(s) < 0.1 for k, s in shapes.items()}
        updates.append(decode(encode({k: torch.from_numpy(v) for k, v in state.items()},
                                     {k: torch.from_numpy(m) for k, m in mask.items()}), template))
        for k in shapes:
            num[k] = num.get(k, 0) + w * np.where(mask[k], state[k], 0).astype(np.float64)
            den[k] = den.get(k, 0) + w * mask[k]
    got = masked_fedavg(global_state, updates, weights)
    for k in shapes:
        expected = np.where(den[k] > 0, num[k] / np.maximum(den[k], 1), global_state[k])
        np.testing.assert_allclose(got[k], expected, rtol=2e-6, atol=1e-6)
        assert got[k].dtype == np.float32
    monkeypatch.setattr(parallel, "cores", lambda: 1)
    alone = masked_fedavg(global_state, updates, weights)
    assert all(np.array_equal(alone[k], got[k]) for k in shapes)


def test_clip_update_scales_the_change_not_the_values():
    from fedsparse.aggregation import clip_update
    from fedsparse.updates import SparseUpdate, TensorUpdate

    global_state = {"w": np.array([1.0, 1.0, 1.0, 1.0], dtype=np.float32),
                    "n": np.array([3], dtype=np.int64)}
    # change (3, 4) at positions 0 and 2: norm 5
    update = SparseUpdate({"w": TensorUpdate(np.array([4.0, 5.0], dtype=np.float32),
                                             np.array([0, 2]), 4),
                           "n": TensorUpdate(np.array([9]), None, 1)})
    clipped, was = clip_update(global_state, update, 1.0)
    assert was
    np.testing.assert_allclose(clipped.tensors["w"].values, [1.6, 1.8], rtol=1e-6)
    assert clipped.tensors["n"].values.tolist() == [9]  # integer buffers are not a change to clip
    same, was = clip_update(global_state, update, 5.0)
    assert not was and same is update
    huge = SparseUpdate({"w": TensorUpdate(np.array([3e38], dtype=np.float32), np.array([1]), 4)})
    tamed, was = clip_update(global_state, huge, 1.0)
    assert was and abs(float(tamed.tensors["w"].values[0]) - 2.0) < 1e-5


def test_a_median_of_fewer_than_three_holders_keeps_the_coordinate():
    from fedsparse.server_opt import robust_aggregate
    from fedsparse.updates import SparseUpdate, TensorUpdate

    old = {"w": np.zeros(3, dtype=np.float32)}
    sent = [SparseUpdate({"w": TensorUpdate(np.array(v, dtype=np.float32), np.array(i), 3)})
            for v, i in (([1.0, 1.0], [0, 1]), ([2.0, 100.0], [0, 1]), ([3.0], [0]))]
    stats: dict = {}
    new = robust_aggregate(old, sent, stats=stats)
    # position 0: three holders, median 2; position 1: two holders (one an attacker): kept
    assert new["w"].tolist() == [2.0, 0.0, 0.0] and stats == {"coordinates_held_back": 1}
