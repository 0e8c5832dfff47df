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


def test_the_authors_preset_scales_their_schedule_to_the_run():
    from fedsparse.config import load_config
    from fedsparse.experiment import build_method

    cfg = load_config(None, ["method.name=fedtiny", "rounds=100", "method.pruning.preset=authors"])
    options = build_method(cfg).options
    # T_end 100 of 500 rounds, Delta T 10: 20 and 2 of 100; alpha 0.2, all layers, weighted pairs
    assert (options.adjust_until, options.adjust_every, options.alpha) == (20, 2, 0.2)
    assert (options.granularity, options.pair_weights) == ("model", "samples")
    tuned = build_method(load_config(None, ["method.name=fedtiny", "rounds=100"])).options
    assert (tuned.alpha, tuned.granularity, tuned.pair_weights) == (None, "auto", "equal")
    mine = load_config(None, ["method.name=fedmef", "rounds=100", "method.pruning.preset=authors",
                              "method.pruning.alpha=0.3"])
    assert build_method(mine).options.alpha == 0.3 and build_method(mine).options.adjust_until == 20


def test_sample_weighted_pairs_can_grow_a_different_position():
    from fedsparse.clients.shared_mask.pruning import prune_and_grow

    weight = torch.tensor([1.0, 2.0, 0.0, 0.0])
    mask = torch.tensor([True, True, False, False])
    reports = [(np.array([2]), np.array([1.0], np.float32)),   # 10 samples
               (np.array([3]), np.array([0.5], np.float32))]   # 30 samples
    _, equal = prune_and_grow(weight, mask, reports, 1)
    _, weighted = prune_and_grow(weight, mask, reports, 1, [10.0, 30.0])
    # equal: position 2 (0.5 vs 0.25); by samples: position 3 (0.375 vs 0.25)
    assert equal.tolist() == [False, True, True, False]
    assert weighted.tolist() == [False, True, False, True]
