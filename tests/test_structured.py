"""The structured-submodel engine: channel spaces, slicing, scattering, masks, costs."""

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fedsparse.aggregation import masked_fedavg
from fedsparse.config import ModelConfig
from fedsparse.costs import CostModel
from fedsparse.models import build_model
from fedsparse.structured import ChannelGraph, UnsupportedModel, channels_at
from fedsparse.updates import decode_arrays, encode_arrays, template_of

MODELS = [("mlp", (1, 8, 8)), ("lenet", (1, 28, 28)), ("cnn-bn", (1, 28, 28)),
          ("resnet18", (3, 32, 32)), ("vgg11-bn", (3, 32, 32))]


def model_and_graph(name, shape, seed=0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(name=name), shape, 10)
    with torch.no_grad():  # BatchNorm statistics and affine parameters that are not trivial
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model, ChannelGraph.trace(model, shape)


def random_keep(graph, share, seed):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.sort(torch.randperm(s.size, generator=g)[:channels_at(share, s.size)]).values
            for name, s in graph.spaces.items()}


def sliced_and_masked(name, shape, share, seed):
    """A model, its graph, a random channel set, the sliced submodel and the masked full model."""
    model, graph = model_and_graph(name, shape)
    keep = random_keep(graph, share, seed=seed)
    masked, _ = masked_copy(model, graph, keep)
    return model, graph, keep, graph.sliced_module(model, keep), masked


def masked_copy(model, graph, keep):
    """The full model with every coordinate outside the submodel zeroed."""
    masked = copy.deepcopy(model)
    masks = graph.masks(keep)
    with torch.no_grad():
        for name, tensor in [*masked.named_parameters(), *masked.named_buffers()]:
            if name in masks:
                tensor.mul_(masks[name].to(tensor.dtype))
    return masked, masks


def test_channel_spaces_follow_the_architecture():
    _, graph = model_and_graph("cnn-bn", (1, 28, 28))
    assert {n: s.size for n, s in graph.spaces.items()} == {
        "features.0": 32, "features.4": 64, "classifier.1": 128}
    axes = {(a.tensor, a.dim, a.group) for a in graph.spaces["features.4"].axes}
    # conv2's filters, its BatchNorm, and the classifier's columns of each channel's 7x7 map
    assert ("features.4.weight", 0, 1) in axes and ("features.5.running_var", 0, 1) in axes
    assert ("classifier.1.weight", 1, 49) in axes
    _, resnet = model_and_graph("resnet18", (3, 32, 32))
    stem = {a.tensor for a in resnet.spaces["features.0"].axes}
    # the identity shortcuts of layer1 tie the stem's channels to both blocks' outputs
    assert {"features.3.conv2.weight", "features.4.conv2.weight", "features.5.conv1.weight",
            "features.5.shortcut.0.weight"} <= stem


@pytest.mark.parametrize("name,shape", MODELS)
def test_a_sliced_submodel_computes_what_the_masked_full_model_computes(name, shape):
    model, graph, keep, small, masked = sliced_and_masked(name, shape, 0.4, seed=1)
    x = torch.randn(3, *shape)
    small.eval()
    masked.eval()
    assert torch.allclose(small(x), masked(x), atol=1e-5)
    assert sum(p.numel() for p in small.parameters()) == sum(
        graph.kept_counts(keep, [n for n, _ in model.named_parameters()]).values())


@pytest.mark.parametrize("name,shape", MODELS)
def test_scattering_a_slice_back_restores_exactly_the_kept_coordinates(name, shape):
    model, graph = model_and_graph(name, shape)
    keep = random_keep(graph, 0.3, seed=2)
    _, masks = masked_copy(model, graph, keep)
    full = {k: torch.full_like(v, 7) if v.is_floating_point() else v.clone()
            for k, v in model.state_dict().items()}
    graph.scatter(full, graph.slice_state(model.state_dict(), keep), keep)
    for key, value in model.state_dict().items():
        if key in masks:
            assert torch.equal(full[key][masks[key]], value[masks[key]])
            assert (full[key][~masks[key]] == 7).all()
        else:
            assert torch.equal(full[key], value)


@pytest.mark.parametrize("name,shape", MODELS)
def test_a_sliced_step_has_the_masked_dense_gradient(name, shape):
    _, graph, keep, small, masked = sliced_and_masked(name, shape, 0.5, seed=3)
    # in float64: a deep network's float32 gradients differ by summation order alone (resnet18's
    # first conv by ~1e-3 relative), which would hide a real slicing error behind a tolerance
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, *shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (4,), generator=gen)
    for net in (small, masked):
        net.double().train()
        nn.functional.cross_entropy(net(x), y).backward()
    sliced_grads = {n: p.grad for n, p in small.named_parameters()}
    for name_, param in masked.named_parameters():
        expected = graph.slice_tensor(name_, param.grad, keep)
        assert torch.allclose(sliced_grads[name_], expected, atol=1e-10, rtol=1e-8), name_


@pytest.mark.parametrize("name,shape", MODELS)
def test_counted_flops_of_a_sliced_model_are_torchs(name, shape):
    model, graph = model_and_graph(name, shape)
    small = graph.sliced_module(model, graph.prefix(0.3))
    counter = FlopCounterMode(display=False)
    small.eval()
    with counter:
        small(torch.zeros(1, *shape))
    cost = CostModel(small, shape)
    assert cost.multiply_flops_per_sample(cost.dense_counts()) == counter.get_total_flops()


def test_nested_widths_average_by_holders_as_heterofl():
    model, graph = model_and_graph("cnn-bn", (1, 28, 28))
    template = template_of(model.state_dict())
    narrow, wide = graph.masks(graph.prefix(0.25)), graph.masks(graph.prefix(1.0))
    states = []
    for value in (1.0, 3.0):
        states.append({k: torch.full_like(v, value) if v.is_floating_point() else v
                       for k, v in model.state_dict().items()})
    updates = [decode_arrays(encode_arrays(states[0], narrow), template),
               decode_arrays(encode_arrays(states[1], wide), template)]
    old = {k: v.numpy() for k, v in model.state_dict().items()}
    new = masked_fedavg(old, updates, [1.0, 1.0])
    weight = new["features.4.weight"]
    both = narrow["features.4.weight"].numpy()
    assert np.allclose(weight[both], 2.0) and np.allclose(weight[~both], 3.0)


def test_masks_round_trip_to_the_channels_and_refuse_unstructured_ones():
    model, graph = model_and_graph("resnet18", (3, 32, 32))
    keep = graph.rolling(0.3, offset=60)
    params = {n for n, _ in model.named_parameters()}
    masks = {n: m for n, m in graph.masks(keep).items() if n in params}
    found = graph.keep_of(masks)
    assert all(torch.equal(found[s], keep[s]) for s in keep)
    assert graph.keep_of(None).keys() == keep.keys()
    masks["features.0.weight"] = masks["features.0.weight"].clone()
    masks["features.0.weight"][0, 0, 0, 0] = ~masks["features.0.weight"][0, 0, 0, 0]
    with pytest.raises(ValueError, match="not a channel-structured"):
        graph.keep_of(masks)


def test_rolling_windows_wrap_around_and_prefixes_round_up():
    _, graph = model_and_graph("cnn-bn", (1, 28, 28))
    window = graph.rolling(0.25, offset=30)["features.0"]  # 8 of 32 channels from 30
    assert window.tolist() == [0, 1, 2, 3, 4, 5, 30, 31]
    assert len(graph.prefix(0.1)["features.0"]) == 4  # ceil(3.2)
    assert channels_at(0.0001, 32) == 1


def test_narrowed_views_share_storage_with_the_submodel():
    model, graph = model_and_graph("cnn-bn", (1, 28, 28))
    state = dict(model.state_dict())
    views = graph.narrow_state(state, {"features.0": 4, "features.4": 8, "classifier.1": 16})
    assert views["features.4.weight"].shape == (8, 4, 3, 3)
    assert views["classifier.1.weight"].shape == (16, 8 * 49)
    assert views["features.1.running_mean"].data_ptr() == state["features.1.running_mean"].data_ptr()


def test_models_it_cannot_slice_are_named():
    grouped = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.LazyLinear(2))
    grouped(torch.zeros(1, 4, 6, 6))
    with pytest.raises(UnsupportedModel, match="grouped convolution"):
        ChannelGraph.trace(grouped, (4, 6, 6))

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x).softmax(dim=1)

    with pytest.raises(UnsupportedModel, match="softmax"):
        ChannelGraph.trace(Odd(), (4,))
