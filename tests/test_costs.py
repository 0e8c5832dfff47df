import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import push_objects
from torch import nn

from fedsparse.codec import ByteCounter, encode, serialized_bytes
from fedsparse.costs import CostModel
from fedsparse.masks import layerwise_magnitude_masks


class Tiny(nn.Module):
    """conv(1->2, 3x3) on 5x5 -> 2x3x3 = 18 outputs; BatchNorm2d(2); linear(18 -> 4)."""

    def __init__(self, norm: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.norm = nn.BatchNorm2d(2) if norm else nn.Identity()
        self.fc = nn.Linear(18, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.norm(self.conv(x)), 1))


def test_flops_by_hand_dense_and_sparse():
    model = CostModel(Tiny(norm=False), (1, 5, 5))
    dense = model.dense_counts()
    # conv: (2*18 weights + 2 biases) * 9 positions = 342; fc: 2*72 + 4 = 148
    assert model.forward_flops_per_sample(dense) == 342 + 148
    kept = {"conv.weight": 9, "conv.bias": 2, "fc.weight": 36, "fc.bias": 4}
    assert model.forward_flops_per_sample(kept) == (2 * 9 + 2) * 9 + (2 * 36 + 4)
    cost = model.training_cost(kept, samples=10, batch_size=4, momentum=False)
    assert cost.flops == 10 * 3 * 256  # forward + backward (2x forward) per sample
    assert cost.memory_bytes == 4 * 2 * (9 + 2 + 36 + 4)  # weights + gradients
    assert cost.activation_bytes == 4 * 4 * (18 + 4)  # batch 4 x outputs of conv and fc
    with_momentum = model.training_cost(kept, samples=10, batch_size=4, momentum=True)
    assert with_momentum.memory_bytes == 4 * 3 * 51


def test_norm_layers_cost_five_flops_per_output():
    model = CostModel(Tiny(norm=True), (1, 5, 5))
    assert model.forward_flops_per_sample(model.dense_counts()) == 342 + 148 + 5 * 18
    assert model.training_cost(model.dense_counts(), 1, 1, False).memory_bytes == \
        4 * 2 * (20 + 4 + 76)


def test_kept_counts_from_magnitude_masks():
    net = Tiny(norm=False)
    masks = layerwise_magnitude_masks(dict(net.named_parameters()), 0.5)
    counts = {n: int(m.sum()) for n, m in masks.items()}
    assert sum(counts.values()) <= 0.5 * 96 and counts["fc.bias"] == 4


def test_measured_bytes_equal_what_flower_pushes(task_identity):
    state = Tiny(norm=True).state_dict()
    record = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord({"a": 1.0}),
                         "config": ConfigRecord({"round": 3})})
    msg = Message(record, message_type="train", dst_node_id=9)
    pushed: list[int] = []
    push_objects(get_all_nested_objects(msg), lambda _id, content: pushed.append(len(content)))
    assert serialized_bytes(msg) == sum(pushed)
    counter = ByteCounter()
    assert counter(msg) == sum(pushed) == counter(msg)


def test_sparse_upload_is_smaller_than_dense(task_identity):
    torch.manual_seed(0)
    state = {"fc.weight": torch.randn(256, 256), "fc.bias": torch.randn(256)}
    dense = serialized_bytes(encode(state))
    masks = layerwise_magnitude_masks(state, 0.1)
    sparse = serialized_bytes(encode(state, masks))
    raw = 4 * 256 * 256
    assert dense >= raw
    assert sparse / dense == pytest.approx(0.1 + 1 / 32, abs=0.01)  # values + 1 bit per weight


def test_counting_many_objects_at_once_equals_counting_each(task_identity):
    """One hashing pass for several objects (a model shared by messages) gives each object's
    exact serialized size."""
    torch.manual_seed(0)
    model = ArrayRecord({"w": torch.randn(300, 300), "z": torch.zeros(600, 600)})
    messages = [Message(RecordDict({"arrays": model, "config": ConfigRecord({"pid": k})}),
                        message_type="train", dst_node_id=k + 1) for k in range(3)]
    objects = [model, *(m.content for m in messages), messages[0]]
    expected = [serialized_bytes(o) for o in objects]
    counter = ByteCounter()
    assert counter.many(objects) == expected == counter.many(objects)


def test_derived_sizes_equal_flowers_serialization(task_identity):
    """Chunk sizes are derived, not serialized: each equals Flower's own deflate, for large
    (several chunks), empty and odd-sized arrays and the records around them."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    from fedsparse.codec import deflated_size

    torch.manual_seed(1)
    state = {"big": torch.randn(700_000), "empty": torch.zeros(0), "odd": torch.randn(3, 5, 7),
             "ints": torch.arange(11, dtype=torch.int64)}
    msg = Message(RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord({"a": 1.0})}),
                  message_type="train", dst_node_id=9)
    objects = get_all_nested_objects(msg)
    kinds = {type(o).__name__ for o in objects.values()}
    assert {"ArrayChunk", "Array", "ArrayRecord", "MetricRecord"} <= kinds
    assert sum(type(o).__name__ == "ArrayChunk" for o in objects.values()) > 2
    for obj in objects.values():
        assert deflated_size(obj) == len(obj.deflate())
