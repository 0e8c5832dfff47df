import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsparse.codec import decode, encode
from fedsparse.updates import UpdateRejected, template_of

shapes = st.lists(st.integers(1, 40), min_size=1, max_size=3).map(tuple)


@settings(max_examples=80, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), p=st.sampled_from([0.0, 0.01, 0.2, 0.7, 1.0]))
def test_round_trip(shape, seed, p):
    g = torch.Generator().manual_seed(seed)
    state = {"w": torch.randn(shape, generator=g), "b": torch.randn(3, generator=g),
             "steps": torch.tensor(5)}
    masks = {"w": torch.rand(shape, generator=g) < p}
    update = decode(encode(state, masks), template_of(state))
    restored = update.to_state(template_of(state))
    assert torch.equal(restored["w"], state["w"] * masks["w"])
    assert torch.equal(restored["b"], state["b"]) and int(restored["steps"]) == 5
    assert torch.equal(update.masks(template_of(state))["w"], masks["w"])
    assert update.tensors["w"].nnz == int(masks["w"].sum())


def test_smallest_encoding_is_chosen():
    state = {"w": torch.randn(64, 64)}
    template = template_of(state)
    sparse = torch.zeros(64, 64, dtype=torch.bool)
    sparse.view(-1)[::100] = True  # density ~1%: indices are cheaper than 512 bytes of bits
    assert set(encode(state, {"w": sparse})) == {"w#index"}
    half = torch.rand(64, 64) < 0.5
    assert set(encode(state, {"w": half})) == {"w#bits"}
    assert set(encode(state, {"w": torch.ones(64, 64, dtype=torch.bool)})) == {"w"}
    for masks in ({"w": sparse}, {"w": half}):
        rec = encode(state, masks)
        sizes = sum(a.numpy().nbytes for a in rec.values())
        assert sizes <= int(masks["w"].sum()) * 4 + min(4 * int(masks["w"].sum()), 512)
        assert decode(rec, template).tensors["w"].nnz == int(masks["w"].sum())


def test_missing_tensors_are_allowed_and_read_as_not_sent():
    state = {"a": torch.ones(4), "b": torch.ones(2)}
    rec = ArrayRecord(array_dict={"a": Array(np.ones(4, np.float32))})
    update = decode(rec, template_of(state))
    assert set(update.tensors) == {"a"}
    assert not update.masks(template_of(state))["b"].any()


def _rec(**arrays):
    return ArrayRecord(array_dict={k.replace("__", "#"): Array(v) for k, v in arrays.items()})


def _bytes(*parts) -> np.ndarray:
    return np.frombuffer(b"".join(np.asarray(p).tobytes() for p in parts), dtype=np.uint8)


TEMPLATE = template_of({"w": torch.zeros(3, 4)})
F, I32 = np.float32, np.int32
ONE_VALUE = np.ones(1, F)


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        (_rec(v=np.zeros((3, 4), F)), "unknown tensor 'v'"),
        (_rec(w=np.zeros((4, 3), F)), "shape"),
        (_rec(w=np.zeros((3, 4), np.float64)), "dtype float64"),
        (_rec(w=np.full((3, 4), np.nan, F)), "NaN or Inf"),
        (_rec(w=np.zeros((3, 4), F), w__bits=_bytes(np.uint8([0x80, 0]), ONE_VALUE)), "sent twice"),
        (_rec(w__index=_bytes(I32([12]), ONE_VALUE)), "outside"),
        (_rec(w__index=_bytes(I32([-1]), ONE_VALUE)), "outside"),
        (_rec(w__index=_bytes(I32([3, 3]), np.ones(2, F))), "strictly increasing"),
        (_rec(w__index=_bytes(I32([3, 4]), np.ones(2, F))[:-1]), "whole number"),
        (_rec(w__index=np.ones(8, F)), "uint8"),
        (_rec(w__bits=_bytes(np.uint8([0x80, 0x01]), ONE_VALUE)), "padding"),
        (_rec(w__bits=np.uint8([0x80])), "shorter"),
        (_rec(w__bits=_bytes(np.uint8([0xC0, 0]), ONE_VALUE)), "keeps 2 coordinates but sends 1"),
        (_rec(w__bits=_bytes(np.uint8([0x80, 0]), np.array([np.inf], F))), "NaN or Inf"),
    ],
)
def test_invalid_updates_are_rejected(record, needle):
    with pytest.raises(UpdateRejected, match=needle):
        decode(record, TEMPLATE)
