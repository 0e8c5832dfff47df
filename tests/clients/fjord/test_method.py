"""FjORD: ordered dropout draws a width per batch; the server replays the draws to count FLOPs."""

import numpy as np
import pytest
import torch

from fedsparse.budgets import Budget
from fedsparse.clients.fjord.method import OrderedDropout
from fedsparse.clients.fjord.width_stats import width_key
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
                     masks={n: m for n, m in masks.items() if n in params},
                     inbox=method.client_records(Budget(density=0.3)), **{"server-round": 3})
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


def _fit_at_full_width_only(method, model, monkeypatch):
    """One client of width 1.0 whose every batch draws width 1.0 (the last candidate)."""
    monkeypatch.setattr(type(method), "draws",
                        lambda self, pid, rnd, batches, count: np.full(batches, count - 1))
    task = make_task(received(model, None), image_data(n=64), 1.0, partition_id=1,
                     inbox=method.client_records(Budget(density=1.0)))
    return method.fit(task), task


def test_per_width_statistics_of_a_narrow_width_do_not_move_when_only_the_full_width_trains(
        monkeypatch):
    method, model = width_method("fjord", "method.fjord.widths=[0.25]", densities=(1.0,))
    assert method.options.bn == "per-width"  # the authors' ODBatchNorm is the default
    before = method.client_records(Budget(density=1.0))
    assert set(before) == {width_key(0.25), width_key(1.0)}
    result, _ = _fit_at_full_width_only(method, model, monkeypatch)
    assert set(result.outbox) == {width_key(1.0)}  # only the width it trained
    assert result.outbox[width_key(1.0)]["samples"][0] == 64
    # the model's own statistics are not uploaded: they travel per width
    assert not result.upload["features.1.running_mean"].any()
    method.begin_round(1)
    method.check_reply(1, Budget(density=1.0), result.outbox, {})
    arrays = method.after_aggregate({k: v.numpy().copy() for k, v in model.state_dict().items()}, [1])
    after = method.client_records(Budget(density=1.0))
    narrow, full = width_key(0.25), width_key(1.0)
    for key in before[narrow]:
        assert np.array_equal(after[narrow][key], before[narrow][key])
    assert not np.allclose(after[full]["features.1.running_mean"], before[full]["features.1.running_mean"])
    assert np.array_equal(arrays["features.1.running_mean"], after[full]["features.1.running_mean"])
    # with one shared set (bn: tracked) the same training moves the narrow prefix too
    shared, shared_model = width_method("fjord", "method.fjord.widths=[0.25]",
                                        "method.fjord.bn=tracked", densities=(1.0,))
    start = shared_model.features[1].running_mean.clone()
    _, shared_task = _fit_at_full_width_only(shared, shared_model, monkeypatch)
    k = before[narrow]["features.1.running_mean"].shape[0]
    assert not torch.allclose(shared_task.model.features[1].running_mean[:k], start[:k])


def test_per_width_statistics_that_are_malformed_are_rejected(monkeypatch):
    from fedsparse.updates import UpdateRejected

    method, model = width_method("fjord", "method.fjord.widths=[0.25]", densities=(0.3, 1.0))
    result, _ = _fit_at_full_width_only(method, model, monkeypatch)
    record = result.outbox[width_key(1.0)]
    bad = {**record, "features.1.running_var": -np.abs(record["features.1.running_var"]) - 1}
    with pytest.raises(UpdateRejected, match="negative"):
        method.check_reply(1, Budget(density=1.0), {width_key(1.0): bad}, {})
    short = {**record, "features.1.running_mean": record["features.1.running_mean"][:2]}
    with pytest.raises(UpdateRejected, match="shape"):
        method.check_reply(1, Budget(density=1.0), {width_key(1.0): short}, {})
    # a narrow client may not report the full width's statistics
    with pytest.raises(UpdateRejected, match="unexpected record"):
        method.check_reply(2, Budget(density=0.3), {width_key(1.0): record}, {})


def test_self_distillation_trains_the_widest_submodel_and_teaches_the_drawn_width(monkeypatch):
    method, model = width_method("fjord", "method.fjord.distill=true", "method.fjord.bn=tracked",
                                 densities=(1.0,))
    graph = method.graph(model, (1, 12, 12))
    small = graph.sliced_module(model, graph.full())
    wrapped = OrderedDropout(small, graph, teacher_width=1.0)
    wrapped.width = 0.2
    wrapped.active = {n: channels_at(0.2, s.size) for n, s in graph.spaces.items()}
    wrapped.train()
    x = image_data(n=16).x_train
    torch.manual_seed(0)
    out = wrapped(x)
    # the returned output is the whole submodel's (scored on the labels by train_local); the
    # drawn width's loss is a cross-entropy against its softened prediction
    plain = OrderedDropout(small, graph)
    torch.manual_seed(0)
    assert torch.allclose(out, plain(x), atol=1e-5)
    plain.active = wrapped.active
    student = plain(x)
    expected = torch.nn.functional.cross_entropy(student, out.detach().softmax(dim=1))
    assert float(wrapped.distill_loss) == pytest.approx(float(expected), rel=1e-5)

    # the server charges the widest submodel's pass on every batch
    plain_method, _ = width_method("fjord", "method.fjord.bn=tracked", densities=(0.3, 1.0))
    distilled, _ = width_method("fjord", "method.fjord.distill=true", "method.fjord.bn=tracked",
                                densities=(0.3, 1.0))
    context = CostContext(4, 3, 70, 1, 16, False)
    base, _ = plain_method.round_cost(Budget(density=0.3), TrainingCost(0, 0, 0), 0.3, {}, context)
    more, _ = distilled.round_cost(Budget(density=0.3), TrainingCost(0, 0, 0), 0.3, {}, context)
    widest = distilled.cost_model(distilled.ratio(0.3))
    assert more.flops - base.flops == pytest.approx(
        (1 + BACKWARD_FACTOR) * 70 * widest.forward_flops_per_sample(widest.dense_counts()))
    # and a distilled client trains and uploads as before
    masks = distilled.client_masks(dict(model.named_parameters()), Budget(density=0.3))
    params = {n for n, _ in model.named_parameters()}
    task = make_task(received(model, masks), image_data(n=70), 0.3, partition_id=4,
                     masks={n: m for n, m in masks.items() if n in params}, **{"server-round": 3})
    result = distilled.fit(task)
    assert np.isfinite(result.metrics["train-loss"]) and result.upload is not None
