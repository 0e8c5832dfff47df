"""The mask-aware base strategy on real Flower Messages: validation, budgets, costs."""

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedsparse.budgets import Budget
from fedsparse.clients.dense import Dense
from fedsparse.clients.magnitude import Magnitude
from fedsparse.codec import decode, encode
from fedsparse.config import ModelConfig
from fedsparse.costs import CostModel
from fedsparse.method import NoOptions, RunInfo
from fedsparse.models import build_model
from fedsparse.strategies import FedAvg, MaskedFedAvg, StrategyContext
from fedsparse.training import TrainSettings
from fedsparse.updates import template_of

#: training samples the server knows each partition holds
TRAIN_SIZES = [10, 20, 30, 40]
BUDGETS = [Budget(density=0.2), Budget(density=0.5, upload_bytes=1e9), Budget(density=1.0),
           Budget(density=0.5, upload_bytes=100.0)]


def make(cls, method=Magnitude):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mlp", hidden=[16]), (6,), 3)
    ctx = StrategyContext(seed=0, clients_per_round=4, budgets=BUDGETS,
                          cost_model=CostModel(model, (6,)), template=template_of(model.state_dict()),
                          batch_size=8, momentum=False,
                          method=method(NoOptions(), RunInfo(0, 4, 1, TrainSettings())),
                          train_sizes=list(TRAIN_SIZES))
    strategy = cls(ctx)
    strategy.bind_nodes({p: 100 + p for p in range(4)})
    return strategy, ArrayRecord(model.state_dict())


def reply_to(msg, pid, arrays, **metrics):
    n = TRAIN_SIZES[pid]
    values = {"partition-id": pid, "num-examples": n, "samples-seen": n, "train-loss": 0.5}
    values.update(metrics)
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(values)}), reply_to=msg)


def trained_reply(strategy, msg, pid, shift=1.0, **metrics):
    """What a client sends back: the submodel it received, moved by ``shift`` where it holds it."""
    update = decode(msg.content["arrays"], strategy.context.template)
    state = update.to_state(strategy.context.template)
    masks = update.partial_masks(strategy.context.template, set(strategy.context.cost_model.param_sizes))
    moved = {k: (v + shift) * masks[k] if k in masks else v + shift for k, v in state.items()}
    return reply_to(msg, pid, encode(moved, masks), **metrics)


def test_each_client_gets_its_own_submodel_and_costs_are_counted(task_identity):
    strategy, arrays = make(MaskedFedAvg)
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid=None))
    assert [m.metadata.dst_node_id for m in messages] == [100, 101, 102, 103]
    sizes = strategy.context.cost_model.param_sizes
    densities = [decode(m.content["arrays"], strategy.context.template).density(sizes) for m in messages]
    assert densities[0] <= 0.2 and densities[2] == 1.0 and densities[0] < densities[1] < densities[2]
    replies = [trained_reply(strategy, m, p) for p, m in enumerate(messages[:3])]
    new, metrics = strategy.aggregate_train(1, replies)
    report = strategy.report
    assert not report.violations and not report.rejected and len(report.costs) == 3
    by_pid = {c.partition_id: c for c in report.costs}
    assert by_pid[2].train_flops == by_pid[2].dense_train_flops
    assert by_pid[0].train_flops < 0.3 * by_pid[0].dense_train_flops
    assert by_pid[0].upload_bytes < by_pid[0].dense_upload_bytes
    assert by_pid[0].download_bytes < by_pid[2].download_bytes == by_pid[2].dense_download_bytes
    assert math.isclose(metrics["train-loss"], 0.5)
    # coordinates held by the dense client moved by exactly +1 (every holder moved them by +1)
    old = arrays["net.1.weight"].numpy()
    got = new["net.1.weight"].numpy()
    np.testing.assert_allclose(got, old + 1, rtol=1e-6)


def test_reply_over_budget_is_rejected_and_counted(task_identity):
    strategy, arrays = make(MaskedFedAvg)
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid=None))
    dense_from_0 = reply_to(messages[0], 0, ArrayRecord(build_model(
        ModelConfig(name="mlp", hidden=[16]), (6,), 3).state_dict()))  # density 1 > 0.2
    too_big_upload = trained_reply(strategy, messages[3], 3)  # 100-byte upload limit
    ok = trained_reply(strategy, messages[2], 2)
    new, _ = strategy.aggregate_train(1, [dense_from_0, too_big_upload, ok])
    assert [p for p, _ in strategy.report.violations] == [3]
    assert "upload_bytes" in dict(strategy.report.violations)[3]
    # the 0.2 tier uploading the whole model touches coordinates it was never sent
    assert "outside the submodel the client was sent" in dict(strategy.report.rejected)[0]
    assert new is not None and len(strategy.report.costs) == 1


def test_malformed_and_lying_replies_are_rejected(task_identity):
    strategy, arrays = make(MaskedFedAvg)
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid=None))
    nan = ArrayRecord(array_dict={"net.1.bias": Array(np.full(16, np.nan, np.float32))})
    bad = [reply_to(messages[0], 0, nan),
           reply_to(messages[1], 2, arrays),  # claims another node's partition
           reply_to(messages[2], 2, arrays, **{"num-examples": -5}),
           Message(RecordDict({"arrays": arrays}), reply_to=messages[3])]  # no metrics at all
    new, metrics = strategy.aggregate_train(1, bad)
    assert new is None and metrics is None
    reasons = dict(strategy.report.rejected)
    assert "NaN" in reasons[0] and "absurd" in reasons[2] and "lacks" in reasons[-1]
    assert any("does not serve" in r for _, r in strategy.report.rejected)


def test_example_counts_are_the_servers_and_flops_follow_the_protocol(task_identity):
    """num-examples is the aggregation weight and samples-seen drove the FLOPs count: a client
    may choose neither."""
    strategy, arrays = make(MaskedFedAvg)
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid=None))
    greedy = trained_reply(strategy, messages[0], 0, **{"samples-seen": 1e6})
    modest = trained_reply(strategy, messages[1], 1, **{"samples-seen": 0})
    heavy = trained_reply(strategy, messages[2], 2, **{"num-examples": 1e18})
    strategy.aggregate_train(1, [greedy, modest, heavy])
    reasons = dict(strategy.report.rejected)
    assert "exceeds 1 epochs over 10 samples" in reasons[0]
    assert "is not the 30 training samples partition 2 holds" in reasons[2]
    (cost,) = strategy.report.costs
    model = strategy.context.cost_model
    kept = {n: t.nnz for n, t in decode(modest.content["arrays"], strategy.context.template).tensors.items()}
    # counted for the 20 samples partition 1 holds, not the 0 it reported
    assert cost.partition_id == 1 and cost.train_flops == model.training_cost(kept, 20, 8, False).flops > 0


def test_impossible_batchnorm_statistics_are_rejected(task_identity):
    from fedsparse.strategies.validation import ReplyValidator
    from fedsparse.updates import UpdateRejected

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    template = template_of(model.state_dict())
    validator = ReplyValidator(template, [Budget()], [5], 1, "arrays", True, "MaskedFedAvg")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["1.running_var"] = torch.tensor([1.0, -50.0, 1.0])
    msg = Message(RecordDict({"arrays": encode(state), "metrics": MetricRecord({
        "partition-id": 0, "num-examples": 5, "samples-seen": 5})}), dst_node_id=100,
        message_type="train")
    msg.metadata.__dict__["_src_node_id"] = 100
    with pytest.raises(UpdateRejected, match="negative variances"):
        validator.check(msg, {0: 100})


class _Exploding(MaskedFedAvg):
    """A buggy strategy: its aggregate is not finite."""

    def aggregate_updates(self, global_arrays, updates):
        out = super().aggregate_updates(global_arrays, updates)
        out["net.1.weight"] = np.full_like(out["net.1.weight"], np.inf)
        return out


def test_a_non_finite_aggregate_is_refused_and_the_model_kept(task_identity):
    strategy, arrays = make(_Exploding)
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid=None))
    new, metrics = strategy.aggregate_train(1, [trained_reply(strategy, messages[2], 2)])
    assert new is None and metrics is None
    assert "'net.1.weight' holds NaN or Inf" in strategy.report.refused


class _RoundAware(MaskedFedAvg):
    """A plug-in that schedules by round: it declares ``server_round`` and is given it."""

    def aggregate_updates(self, global_arrays, updates, server_round=0):
        self.rounds_seen = [*getattr(self, "rounds_seen", []), server_round]
        return super().aggregate_updates(global_arrays, updates)


def test_aggregate_updates_gets_the_round_when_it_asks_for_it(task_identity):
    strategy, arrays = make(_RoundAware)
    for server_round in (1, 2):
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid=None))
        new, _ = strategy.aggregate_train(server_round, [trained_reply(strategy, messages[2], 2)])
        assert new is not None
    assert strategy.rounds_seen == [1, 2]


def test_records_a_method_did_not_ask_for_are_rejected(task_identity):
    """The base hands a reply's extra ArrayRecords to the method, whose default refuses them."""
    strategy, arrays = make(MaskedFedAvg)
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid=None))
    reply = trained_reply(strategy, messages[2], 2)
    reply.content["smuggled"] = ArrayRecord(array_dict={"x": Array(np.zeros(3, np.float32))})
    new, _ = strategy.aggregate_train(1, [reply])
    assert new is None and "unexpected records ['smuggled']" in strategy.report.rejected[0][1]


def test_fedavg_refuses_sparse_updates(task_identity):
    strategy, arrays = make(FedAvg)
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid=None))
    strategy.aggregate_train(1, [trained_reply(strategy, messages[1], 1)])
    assert "use strategy masked-fedavg" in strategy.report.rejected[0][1]


def test_sampling_is_seeded_and_bounded():
    strategy, _ = make(MaskedFedAvg)
    strategy.context = StrategyContext(**{**strategy.context.__dict__, "clients_per_round": 2})
    picks = [strategy.sample_partitions(r) for r in range(1, 6)]
    assert picks == [strategy.sample_partitions(r) for r in range(1, 6)]
    assert all(len(p) == 2 and len(set(p)) == 2 for p in picks)
    assert len({tuple(p) for p in picks}) > 1


@pytest.mark.parametrize("cls", [MaskedFedAvg, FedAvg])
def test_dense_runs_cost_exactly_dense(task_identity, cls):
    strategy, arrays = make(cls, method=Dense)
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid=None))
    replies = [reply_to(m, p, m.content["arrays"]) for p, m in enumerate(messages)]
    strategy.aggregate_train(1, replies)
    for cost in strategy.report.costs:
        assert cost.train_flops == cost.dense_train_flops
        assert cost.upload_bytes == cost.dense_upload_bytes
        assert cost.download_bytes == cost.dense_download_bytes


def test_flower_fedprox_adapter_sends_mu_and_aggregates_like_fedavg(task_identity):
    from flwr.serverapp.strategy import FedProx

    from fedsparse.strategies.flower_adapter import FlowerStrategy

    _, arrays = make(MaskedFedAvg, method=Dense)
    base, _ = make(MaskedFedAvg, method=Dense)
    dense_budgets = StrategyContext(**{**base.context.__dict__, "budgets": [Budget()] * 4})
    strategy = FlowerStrategy(dense_budgets, FedProx(proximal_mu=0.3))
    strategy.bind_nodes(base.node_of)
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid=None))
    assert all(m.content["config"]["proximal-mu"] == 0.3 for m in messages)
    replies = [trained_reply(strategy, m, p, shift=float(p)) for p, m in enumerate(messages)]
    new, _ = strategy.aggregate_train(1, replies)
    old = arrays["net.1.weight"].numpy()
    # sample-weighted mean shift: (0 * 10 + 1 * 20 + 2 * 30 + 3 * 40) / 100
    np.testing.assert_allclose(new["net.1.weight"].numpy(), old + 2.0, rtol=1e-5)
    assert new["net.1.weight"].numpy().dtype == old.dtype


def test_zero_delta_rule_is_the_authors_average_of_whole_local_models():
    """pFedGate's authors average whole local models: two clients that trained disjoint blocks
    each move their block by their share of the round's samples, not by the whole change
    (masked FedAvg) and not towards zero (the old rule that counted unsent values as zeros)."""
    from fedsparse.aggregation import zero_delta_fedavg
    from fedsparse.updates import SparseUpdate, TensorUpdate

    old = {"w": np.array([1.0, 1.0, 1.0, 1.0], dtype=np.float32)}
    a = SparseUpdate({"w": TensorUpdate(np.array([3.0, 5.0], dtype=np.float32), np.array([0, 1]), 4)})
    b = SparseUpdate({"w": TensorUpdate(np.array([-1.0], dtype=np.float32), np.array([2]), 4)})
    new = zero_delta_fedavg(old, [a, b], [10, 30])["w"]
    # authors: 1/4 * local_a + 3/4 * local_b, local_a = (3, 5, 1, 1), local_b = (1, 1, -1, 1)
    expected = 0.25 * np.array([3, 5, 1, 1]) + 0.75 * np.array([1, 1, -1, 1])
    np.testing.assert_allclose(new, expected, rtol=1e-6)
    # every client's samples as the total: the unsampled ones add no change, a damped step
    damped = zero_delta_fedavg(old, [a, b], [10, 30], total_weight=80)["w"]
    np.testing.assert_allclose(damped, 1 + 0.5 * (expected - 1), rtol=1e-6)


def test_the_zero_delta_strategy_averages_through_the_real_round(task_identity):
    from fedsparse.strategies.masked_fedavg import ZeroDeltaAvg

    strategy, arrays = make(ZeroDeltaAvg)
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid=None))
    replies = [trained_reply(strategy, m, p, shift=1.0) for p, m in enumerate(messages[:3])]
    new, _ = strategy.aggregate_train(1, replies)
    template = strategy.context.template
    sent = [decode(r.content["arrays"], template) for r in replies]
    weights = np.array([10.0, 20.0, 30.0]) / 60.0
    name = "net.1.weight"
    old = arrays[name].numpy().reshape(-1)
    local = []
    for u in sent:  # a client's local model: what it sent, the broadcast value elsewhere
        flat = old.copy()
        tensor = u.tensors[name]
        flat[slice(None) if tensor.index is None else tensor.index] = tensor.values
        local.append(flat)
    expected = sum(w * x for w, x in zip(weights, local, strict=True))
    np.testing.assert_allclose(new[name].numpy().reshape(-1), expected, rtol=1e-5, atol=1e-6)
    assert (~sent[0].masks(template)[name].numpy()).any()  # client 0 (density 0.2) sent a part


def test_clock_samples_online_clients_over_selects_and_drops_late_ones(task_identity):
    from fedsparse.clock import ClockSettings, client_seconds
    from fedsparse.config import DeviceProfile

    slow = DeviceProfile(flops_per_second=1e3, download_bytes_per_second=1e9, upload_bytes_per_second=1e9)
    fast = DeviceProfile(flops_per_second=1e12, download_bytes_per_second=1e9, upload_bytes_per_second=1e9)
    strategy, arrays = make(MaskedFedAvg)
    clock = ClockSettings([fast, slow, fast, fast], deadline=1.0, over_select=1.5)
    strategy.context = StrategyContext(**{**strategy.context.__dict__, "clients_per_round": 2,
                                          "clock": clock})
    assert len(strategy.sample_partitions(1)) == 3  # ceil(2 * 1.5)
    strategy.context = StrategyContext(**{**strategy.context.__dict__, "clients_per_round": 4})
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid=None))
    replies = [trained_reply(strategy, m, p) for p, m in enumerate(messages[:3])]
    strategy.aggregate_train(1, replies)
    timing = strategy.report.timing
    assert timing.late == [1] and timing.kept == [0, 2]
    assert sorted(c.partition_id for c in strategy.report.costs) == [0, 2]
    cost = strategy.report.costs[0]
    assert cost.sim_seconds == pytest.approx(client_seconds(cost.train_flops, cost.download_bytes,
                                                            cost.upload_bytes, fast))
    assert timing.seconds == 1.0


def test_count_weighting_averages_each_coordinate_over_its_holders_once(task_identity):
    """HeteroFL's and FedRolex's rule: a coordinate's holders count once each, whatever their
    sample counts (10, 20, 30 here)."""
    strategy, arrays = make(lambda ctx: MaskedFedAvg(ctx, weighting="count"))
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid=None))
    replies = [trained_reply(strategy, m, p, shift=float(p + 1)) for p, m in enumerate(messages[:3])]
    new, _ = strategy.aggregate_train(1, replies)
    template = strategy.context.template
    sent = [decode(r.content["arrays"], template).masks(template) for r in replies]
    name = "net.1.weight"
    old = arrays[name].numpy()
    holders = sum(s[name].numpy().astype(float) for s in sent)
    shifts = sum((p + 1) * s[name].numpy() for p, s in enumerate(sent))
    expected = np.where(holders > 0, old + shifts / np.maximum(holders, 1), old)
    np.testing.assert_allclose(new[name].numpy(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="weighting"):
        MaskedFedAvg(strategy.context, weighting="clients")
