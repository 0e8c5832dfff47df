"""The width methods' shared base (through HeteroFL): budgets to widths, sliced training, the
coordinates uploaded, server-counted costs, BatchNorm modes."""

import numpy as np
import pytest
import torch

from fedsparse.budgets import Budget
from fedsparse.costs import CostModel, TrainingCost
from fedsparse.method import CostContext
from fedsparse.updates import decode_arrays, encode_arrays, template_of
from tests.clients.helpers import make_task
from tests.clients.width.helpers import SHAPE, image_data, received, width_method


@pytest.mark.parametrize("density", [0.1, 0.3, 0.5])
def test_a_budget_gets_the_widest_submodel_within_its_density(density):
    method, model = width_method("heterofl", densities=(density,))
    graph = method.graph(model, SHAPE)
    params = [n for n, _ in model.named_parameters()]
    ratio = method.ratio(density)
    assert graph.density(graph.prefix(ratio), params) <= density
    assert graph.density(graph.prefix(ratio + 0.05), params) > density
    assert method.ratio(1.0) == 1.0 and method.client_masks({}, Budget(density=1.0)) is None


def test_a_budget_below_one_channel_per_layer_is_refused_at_setup():
    with pytest.raises(ValueError, match="narrowest submodel"):
        width_method("heterofl", densities=(0.00001,))


def test_a_client_trains_its_channels_only_and_uploads_exactly_them():
    method, model = width_method("heterofl")
    masks = method.client_masks(dict(model.named_parameters()), Budget(density=0.3))
    params = {n for n, _ in model.named_parameters()}
    client_model = received(model, masks)
    before = {k: v.clone() for k, v in client_model.state_dict().items()}
    task = make_task(client_model, image_data(), 0.3, masks={n: m for n, m in masks.items() if n in params})
    result = method.fit(task)
    assert set(result.upload) == set(masks)
    assert all(torch.equal(result.upload[n], masks[n]) for n in masks)
    after = client_model.state_dict()
    for name, mask in masks.items():
        assert torch.equal(after[name][~mask], before[name][~mask])  # outside: untouched
    assert not torch.equal(after["features.4.weight"][masks["features.4.weight"]],
                           before["features.4.weight"][masks["features.4.weight"]])
    assert result.metrics["samples-seen"] == 64 and np.isfinite(result.metrics["train-loss"])
    update = decode_arrays(encode_arrays(after, result.upload), template_of(after))
    method.check_upload(Budget(density=0.3), masks, update, 64)  # the server accepts it
    scores = method.evaluate(make_task(client_model, image_data(), 0.3,
                                       masks={n: m for n, m in masks.items() if n in params}))
    assert 0.0 <= scores["accuracy"] <= 1.0 and scores["num-examples"] == 32


def test_the_server_counts_costs_on_the_sliced_network_it_assigned():
    method, model = width_method("heterofl", "train.momentum=0.9")
    context = CostContext(partition_id=3, server_round=2, num_examples=50, local_epochs=2,
                          batch_size=16, momentum=True)
    computed = TrainingCost(1.0, 2.0, 3.0)  # what masked counting says; replaced
    cost, density = method.round_cost(Budget(density=0.3), computed, 0.29, {}, context)
    graph = method.graph(model, SHAPE)
    small = graph.sliced_module(model, graph.prefix(method.ratio(0.3)))
    expected = CostModel(small, SHAPE).training_cost(
        {n: p.numel() for n, p in small.named_parameters()}, 100, 16, True)
    assert cost == expected and density == 0.29
    dense = CostModel(model, SHAPE).training_cost(CostModel(model, SHAPE).dense_counts(), 100, 16, True)
    # FLOPs and activations fall with the width too (norm layers included), not only weights
    assert cost.flops < 0.35 * dense.flops and cost.activation_bytes < 0.6 * dense.activation_bytes


def test_static_bn_needs_the_server_set_and_keeps_statistics_home():
    with pytest.raises(ValueError, match=r"partition\.server_set"):
        width_method("heterofl", "method.heterofl.bn=static")
    data = image_data(seed=5)
    method, model = width_method("heterofl", "method.heterofl.bn=static",
                                 server_data=(data.x_train, data.y_train))
    masks = method.client_masks(dict(model.named_parameters()), Budget(density=0.3))
    params = {n for n, _ in model.named_parameters()}
    sent = {n: m for n, m in masks.items() if n in params}
    result = method.fit(make_task(received(model, masks), image_data(), 0.3, masks=sent))
    assert not result.upload["features.1.running_mean"].any()  # statistics are not uploaded
    assert result.upload["features.1.weight"].any()
    arrays = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    recalibrated = method.after_aggregate(arrays, [0])
    assert not np.allclose(recalibrated["features.1.running_mean"], arrays["features.1.running_mean"])
    assert np.array_equal(recalibrated["features.0.weight"], arrays["features.0.weight"])


def test_the_scaler_divides_hidden_outputs_by_the_width():
    scaled, model = width_method("heterofl", "method.heterofl.scaler=true")
    plain, _ = width_method("heterofl")
    assert scaled.summary()["width"]["scaler"] and not plain.summary()["width"]["scaler"]
    graph = scaled.graph(model, SHAPE)
    small = graph.sliced_module(model, graph.prefix(0.5))
    x = torch.randn(2, *SHAPE)
    small.eval()
    hidden = small.classifier[1]
    out = {}
    hidden.register_forward_hook(lambda _m, _i, o: out.setdefault("plain", o))
    small(x)
    scaled.scale(small, graph, 0.5)
    hidden.register_forward_hook(lambda _m, _i, o: out.setdefault("scaled", o))
    small(x)
    assert torch.allclose(out["scaled"], out["plain"] / 0.5)
