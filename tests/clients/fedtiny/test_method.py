"""FedTiny's client side: top-K pair uploads; its records survive the trip through Flower's codec."""

import numpy as np
import pytest
import torch

from fedsparse.clients.fedtiny.method import ADJUST_MASK, PAIRS, decode_pairs, encode_pairs
from fedsparse.clients.shared_mask.pruning import magnitude_masks
from fedsparse.codec import pack_records, unpack_records
from fedsparse.masks import pack_mask, prunable_weights
from tests.clients.helpers import make_data, make_method, make_task


def setup(method: str):
    method_obj, model = make_method(method, "model.hidden=[16,32]", "train.batch_size=16")
    params = dict(model.named_parameters())
    names = prunable_weights(params, keep_first_conv=True)
    masks = magnitude_masks({n: params[n].detach() for n in names}, 0.3)
    return method_obj, model, masks, names


def test_fedtiny_client_uploads_at_most_k_pairs_at_pruned_positions():
    method, model, masks, names = setup("fedtiny")
    task = make_task(model, make_data(n=64), masks=masks, seed=1,
                     **{"adjust-layers": names, "adjust-k": [5, 3, 2], "server-round": 5})
    result = method.fit(task)
    assert result.upload is masks and result.metrics["samples-seen"] > 0
    pairs = decode_pairs(result.outbox[PAIRS])
    assert set(pairs) == set(names)
    for name, k in zip(names, [5, 3, 2], strict=True):
        index, values = pairs[name]
        assert len(index) == k and np.all(np.isfinite(values))
        assert not masks[name].flatten()[torch.from_numpy(index)].any()
    plain = method.fit(make_task(model, make_data(n=64), masks=masks))
    assert PAIRS not in plain.outbox


def test_fedtiny_client_uses_the_top_mask_when_sent():
    method, model, masks, names = setup("fedtiny")
    name = names[-1]
    top = torch.zeros_like(masks[name])
    top.view(-1)[:-4] = True  # only the last 4 positions are pruned in the top tier's mask
    task = make_task(model, make_data(n=64), masks=masks, inbox={ADJUST_MASK: {name: pack_mask(top)}},
                     **{"adjust-layers": [name], "adjust-k": [10]})
    index, _ = decode_pairs(method.fit(task).outbox[PAIRS])[name]
    assert sorted(index) == list(range(top.numel() - 4, top.numel()))


def test_pairs_round_trip_through_flower_records_and_malformed_ones_are_refused():
    pairs = {"w": (np.array([3, 7], np.int64), np.array([0.5, -1.0], np.float32))}
    records = pack_records({PAIRS: encode_pairs(pairs)})
    from flwr.app import RecordDict

    back = decode_pairs(unpack_records(RecordDict(records), skip=())[PAIRS])
    assert np.array_equal(back["w"][0], pairs["w"][0]) and np.array_equal(back["w"][1], pairs["w"][1])
    with pytest.raises(ValueError, match="both index and value"):
        decode_pairs({"w#index": np.array([1])})
    with pytest.raises(ValueError, match="unexpected key"):
        decode_pairs({"w": np.array([1])})
    with pytest.raises(ValueError, match="integers"):
        decode_pairs({"w#index": np.array([1.0]), "w#value": np.array([1.0])})
