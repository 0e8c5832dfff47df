import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsparse.codec import decode, encode
from fedsparse.updates import UpdateRejected, decode_arrays, encode_arrays, template_of

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
    sparse.view(-1)[::100] = True  # density ~1%: a byte per gap beats 512 bytes of bits
    assert set(encode(state, {"w": sparse})) == {"w#gaps"}
    rare = torch.zeros(64, 64, dtype=torch.bool)
    rare.view(-1)[[5, 4000]] = True  # 3,995 apart: 16 escape bytes cost more than an int32
    assert set(encode(state, {"w": rare})) == {"w#index"}
    half = torch.rand(64, 64) < 0.5
    assert set(encode(state, {"w": half})) == {"w#bits"}
    assert set(encode(state, {"w": torch.ones(64, 64, dtype=torch.bool)})) == {"w"}
    for masks in ({"w": sparse}, {"w": half}, {"w": rare}):
        rec = encode(state, masks)
        sizes = sum(a.numpy().nbytes for a in rec.values())
        nnz = int(masks["w"].sum())
        assert sizes <= nnz * 4 + min(4 * nnz, 512, 4 + nnz + 16)
        assert decode(rec, template).tensors["w"].nnz == nnz


@pytest.mark.parametrize("gap", [1, 254, 255, 256, 510, 511, 2000])
def test_gaps_round_trip_across_escapes(gap):
    """Gaps of 255 and more are written with escape bytes; positions come back exactly."""
    numel = 3 * gap + 10
    state = {"w": torch.arange(numel, dtype=torch.float32) + 1}
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[[gap - 1, 2 * gap - 1, 3 * gap - 1, 3 * gap + 9]] = True
    data = encode_arrays(state, {"w": mask})
    (key,) = data
    update = decode_arrays(data, template_of(state))
    assert np.array_equal(update.tensors["w"].index, np.flatnonzero(mask.numpy()))
    assert np.array_equal(update.tensors["w"].values, state["w"][mask].numpy())
    if key == "w#gaps":
        assert data[key].size == 4 + 4 + 3 * ((gap - 1) // 255) + 4 * 4


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
F, I32, U32 = np.float32, np.int32, np.uint32
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
        (_rec(w__gaps=np.uint8([1, 0])), "shorter than its 4-byte count"),
        (_rec(w__gaps=_bytes(U32([2]), np.uint8([1]), ONE_VALUE)), "too short for the 2"),
        (_rec(w__gaps=_bytes(U32([1]), np.uint8([1, 1]), ONE_VALUE)), "holds 2 gaps, not the 1"),
        (_rec(w__gaps=_bytes(U32([1]), np.uint8([0]), ONE_VALUE)), "holds 0 gaps, not the 1"),
        (_rec(w__gaps=_bytes(U32([1]), np.uint8([1, 0]), ONE_VALUE)), "ends in escape bytes"),
        (_rec(w__gaps=_bytes(U32([2]), np.uint8([12, 1]), np.ones(2, F))), "outside"),
        (_rec(w__gaps=_bytes(U32([1]), np.uint8([0, 1]), ONE_VALUE)), "outside"),
        (_rec(w__gaps=_bytes(U32([1]), np.uint8([1]), np.array([np.nan], F))), "NaN or Inf"),
    ],
)
def test_invalid_updates_are_rejected(record, needle):
    with pytest.raises(UpdateRejected, match=needle):
        decode(record, TEMPLATE)


@pytest.mark.parametrize("array", [np.arange(12, dtype=np.float32).reshape(3, 4),
                                   np.array(5, dtype=np.int64), np.zeros(0, np.uint8),
                                   np.arange(7, dtype=">f8"), np.ones((2, 3), np.float16)])
def test_arrays_read_without_numpys_parser_equal_flowers_reading(array):
    from fedsparse.codec import from_record

    record = ArrayRecord(array_dict={"x": Array(array)})
    for writeable in (True, False):
        got = from_record(record, writeable=writeable)["x"]
        expected = record["x"].numpy()
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert np.array_equal(got, expected)


def test_a_header_other_than_numpys_own_goes_through_flowers_reader():
    """A Fortran-ordered payload (whose header differs from the canonical C-ordered one) is
    read by Flower's ``Array.numpy`` and comes back the same."""
    from fedsparse.codec import from_record

    array = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    record = ArrayRecord(array_dict={"x": Array(array)})
    assert np.array_equal(from_record(record)["x"], array)
