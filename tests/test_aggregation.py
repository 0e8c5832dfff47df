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
