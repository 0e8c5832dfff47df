"""FjORD: ordered dropout draws a width per batch; the server replays the draws to count FLOPs."""

import pytest
import torch

from fedsparse.budgets import Budget
from fedsparse.clients.fjord.method import OrderedDropout
from fedsparse.costs import BACKWARD_FACTOR, TrainingCost
from fedsparse.method import CostContext
from fedsparse.structured import channels_at
from tests.clients.helpers import make_task
from tests.clients.width.helpers import image_data, received, width_method


def test_each_batch_runs_the_width_the_server_replays(monkeypatch):
    method, model = width_method("fjord", densities=(0.3, 1.0))
    seen: list[dict] = []
    forward = OrderedDropout.forward

    def recording(self, x):
        if self.training:
            seen.append((dict(self.active), len(x)))
        return forward(self, x)

    monkeypatch.setattr(OrderedDropout, "forward", recording)
    masks = method.client_masks(dict(model.named_parameters()), Budget(density=0.3))
    params = {n for n, _ in model.named_parameters()}
    task = make_task(received(model, masks), image_data(n=70), 0.3, partition_id=4,
                     masks={n: m for n, m in masks.items() if n in params}, **{"server-round": 3})
    method.fit(task)
    ratio = method.ratio(0.3)
    widths = method.candidates(ratio)
    assert widths[-1] == ratio and all(w < ratio for w in widths[:-1])
    graph = method.graph(model, (1, 12, 12))
    # 70 samples in batches of 16: 16, 16, 16, 16, 6
    assert [size for _, size in seen] == [16, 16, 16, 16, 6]
    draws = method.draws(4, 3, 5, len(widths))
    assert [active for active, _ in seen] == [
        {n: channels_at(widths[d], s.size) for n, s in graph.spaces.items()} for d in draws]
    assert len({tuple(a.values()) for a, _ in seen}) > 1  # the width really varies

    context = CostContext(4, 3, 70, 1, 16, False)
    cost, _ = method.round_cost(Budget(density=0.3), TrainingCost(0, 0, 0), 0.3, {}, context)
    per_sample = [method.cost_model(w).forward_flops_per_sample(method.cost_model(w).dense_counts())
                  for w in widths]
    expected = (1 + BACKWARD_FACTOR) * sum(size * per_sample[d]
                                           for size, d in zip([16, 16, 16, 16, 6], draws, strict=True))
    assert cost.flops == pytest.approx(expected)
    widest = method.cost_model(ratio)
    assert cost.flops < (1 + BACKWARD_FACTOR) * 70 * widest.forward_flops_per_sample(widest.dense_counts())
    assert cost.memory_bytes == 2 * sum(widest.param_sizes.values()) * 4


def test_a_narrow_batch_moves_only_its_prefix_of_channels():
    method, model = width_method("fjord", "method.fjord.widths=[0.25]", densities=(1.0,))
    task = make_task(model, image_data(n=16), 1.0, partition_id=0, masks=None)
    graph = method.graph(model, (1, 12, 12))
    small = graph.sliced_module(model, graph.full())
    wrapped = OrderedDropout(small, graph)
    wrapped.active = {n: channels_at(0.25, s.size) for n, s in graph.spaces.items()}
    wrapped.train()
    torch.nn.functional.cross_entropy(wrapped(task.data.x_train), task.data.y_train).backward()
    grad = small.features[4].weight.grad
    k_out, k_in = wrapped.active["features.4"], wrapped.active["features.0"]
    assert grad[:k_out, :k_in].abs().sum() > 0
    assert grad[k_out:].abs().sum() == 0 and grad[:, k_in:].abs().sum() == 0


def test_widths_must_lie_in_the_unit_interval():
    from fedsparse.errors import ConfigError

    with pytest.raises((ConfigError, ValueError), match="width"):
        width_method("fjord", "method.fjord.widths=[0.5,1.5]")
