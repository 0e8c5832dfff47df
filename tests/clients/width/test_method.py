"""The width methods' shared base (through HeteroFL): budgets to widths, sliced training, the
coordinates uploaded, server-counted costs, BatchNorm modes."""

import copy

import numpy as np
import pytest
import torch

from fedsparse.aggregation import masked_fedavg
from fedsparse.budgets import Budget
from fedsparse.costs import CostModel, TrainingCost
from fedsparse.method import CostContext, LocalData
from fedsparse.training import reestimate_bn
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
    method, model = width_method("heterofl", "method.heterofl.label_split=none")
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
    method, model = width_method("heterofl", "train.momentum=0.9", "method.heterofl.bn=tracked")
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


def test_static_bn_uploads_statistics_equal_to_a_recomputation_on_the_training_data():
    method, model = width_method("heterofl")  # static BN: the authors' default
    assert method.summary()["width"]["bn"] == "static"
    masks = method.client_masks(dict(model.named_parameters()), Budget(density=0.3))
    params = {n for n, _ in model.named_parameters()}
    sent = {n: m for n, m in masks.items() if n in params}
    client_model = received(model, masks)
    data = image_data()
    result = method.fit(make_task(client_model, data, 0.3, masks=sent))
    assert result.upload["features.1.running_mean"].any()  # statistics are uploaded
    # they are the trained submodel's statistics recomputed over the whole training split
    graph = method.graph(model, SHAPE)
    keep = graph.keep_of(sent)
    small = graph.sliced_module(client_model, keep)
    stats = reestimate_bn(small, [data.x_train])
    uploaded = graph.slice_state(client_model.state_dict(), keep)
    for name in ("features.1.running_mean", "features.1.running_var", "features.5.running_var"):
        assert torch.allclose(uploaded[name], stats[name], atol=1e-5)
    # and the recomputing forward pass is charged
    context = CostContext(partition_id=3, server_round=2, num_examples=50, local_epochs=1,
                          batch_size=16, momentum=False)
    tracked, _ = width_method("heterofl", "method.heterofl.bn=tracked")
    static_cost, _ = method.round_cost(Budget(density=0.3), TrainingCost(0, 0, 0), 0.3, {}, context)
    tracked_cost, _ = tracked.round_cost(Budget(density=0.3), TrainingCost(0, 0, 0), 0.3, {}, context)
    narrow = method.cost_model(method.ratio(0.3))
    assert static_cost.flops - tracked_cost.flops == pytest.approx(
        50 * narrow.forward_flops_per_sample(narrow.dense_counts()))


def test_static_bn_with_a_server_set_recomputes_the_global_statistics_on_it():
    data = image_data(seed=5)
    method, model = width_method("heterofl", server_data=(data.x_train, data.y_train))
    arrays = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    recalibrated = method.after_aggregate(arrays, [0])
    expected = reestimate_bn(copy.deepcopy(model), [data.x_train])
    assert np.allclose(recalibrated["features.1.running_mean"],
                       expected["features.1.running_mean"].numpy(), atol=1e-5)
    assert np.array_equal(recalibrated["features.0.weight"], arrays["features.0.weight"])


def test_the_scaler_divides_hidden_outputs_by_the_width_in_training_only():
    scaled, model = width_method("heterofl")  # the authors' default
    plain, _ = width_method("heterofl", "method.heterofl.scaler=false")
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
    # scoring runs without it: the same client scores the same with and without the option
    masks = scaled.client_masks(dict(model.named_parameters()), Budget(density=0.3))
    params = {n for n, _ in model.named_parameters()}
    sent = {n: m for n, m in masks.items() if n in params}
    task = make_task(received(model, masks), image_data(), 0.3, masks=sent)
    assert scaled.evaluate(task) == plain.evaluate(task)


def test_a_label_split_client_masks_missing_logits_and_sends_only_its_labels_rows():
    method, model = width_method("heterofl", densities=(1.0,))
    data = image_data()
    keep = data.y_train != 3  # this client holds no sample of label 3
    data = LocalData(data.x_train[keep], data.y_train[keep], data.x_val, data.y_val,
                     data.x_test[data.y_test != 3], data.y_test[data.y_test != 3])
    client_model = received(model, None)
    before = {k: v.clone() for k, v in client_model.state_dict().items()}
    result = method.fit(make_task(client_model, data, 1.0))
    after = client_model.state_dict()
    weight, bias = "classifier.3.weight", "classifier.3.bias"
    assert not result.upload[weight][3].any() and result.upload[weight][:3].all()
    assert result.upload[bias].tolist() == [True, True, True, False]
    # label 3's logit was fixed at 0: its row got no gradient
    assert torch.equal(after[weight][3], before[weight][3]) and after[bias][3] == before[bias][3]
    assert not torch.equal(after[weight][0], before[weight][0])
    # a label-3 row nobody trained stays as it was; the others move (count-weighted holders)
    update = decode_arrays(encode_arrays(after, result.upload), template_of(after))
    arrays = {k: v.numpy().copy() for k, v in before.items()}
    merged = masked_fedavg(arrays, [update, update], [1.0, 1.0])
    assert np.array_equal(merged[weight][3], arrays[weight][3])
    assert np.array_equal(merged[bias][3], arrays[bias][3])
    assert not np.array_equal(merged[weight][0], arrays[weight][0])


def test_label_split_scoring_masks_the_logits_of_labels_the_client_lacks():
    on, model = width_method("heterofl", densities=(1.0,))
    train_only, _ = width_method("heterofl", "method.heterofl.label_split=train", densities=(1.0,))
    data = image_data()
    only = torch.isin(data.y_train, torch.tensor([0, 1]))
    data = LocalData(data.x_train[only], data.y_train[only], data.x_val, data.y_val,
                     data.x_test, data.y_test)
    with torch.no_grad():  # a model that always says "label 3"
        model.classifier[3].bias.copy_(torch.tensor([0.0, 0.0, 0.0, 1e4]))
    task = make_task(received(model, None), data, 1.0)
    assert train_only.evaluate(task)["accuracy"] == pytest.approx(
        float((data.y_test == 3).float().mean()))
    # with the client's labels {0, 1} only, label 3's logit is fixed at 0
    assert on.evaluate(task)["accuracy"] != train_only.evaluate(task)["accuracy"]
    assert "masked" in on.evaluation_protocol() and "masked" not in train_only.evaluation_protocol()


def test_static_bn_charges_the_recomputation_a_client_runs_before_it_scores():
    method, _ = width_method("heterofl")
    narrow = method.cost_model(method.ratio(0.3))
    cost = method.evaluation_cost(Budget(density=0.3), 40, novel=False)
    assert cost.flops == pytest.approx(40 * narrow.forward_flops_per_sample(narrow.dense_counts()))
    tracked, _ = width_method("heterofl", "method.heterofl.bn=tracked")
    assert tracked.evaluation_cost(Budget(density=0.3), 40, novel=False) is None
