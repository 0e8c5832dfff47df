"""pFedGate's method on its own: budgets, private gate state, costs, novel clients."""

import re

import numpy as np
import pytest
import torch

from fedsparse.budgets import Budget
from fedsparse.clients.pfedgate.method import GATE_KEY, PFedGate
from fedsparse.costs import TrainingCost
from fedsparse.method import RunInfo
from fedsparse.models import build_model
from fedsparse.training import TrainSettings
from fedsparse.updates import UpdateRejected
from tests.clients.helpers import make_data, make_method, make_task


def setup(**options):
    # flat-weight blocks unless a test asks otherwise (the quickstart config runs channel blocks)
    extra = ["method.pfedgate.blocks=weights",
             *(f"method.pfedgate.{k}={v}" for k, v in options.items())]
    method, model = make_method("pfedgate", "train.momentum=0.9", "model.hidden=[16]",
                                "train.batch_size=16", *extra)
    return method, model


@pytest.mark.parametrize("density", [0.1, 0.3, 1.0])
def test_density_tracks_the_budget(density):
    method, model = setup()
    result = method.fit(make_task(model, make_data(0), density))
    metrics, touched = result.metrics, result.upload
    assert metrics["compute-density"] <= density + 1e-12
    assert metrics["mean-compute-density"] <= metrics["compute-density"]
    union = sum(int(t.sum()) for t in touched.values()) / sum(p.numel() for p in model.parameters())
    assert union >= metrics["compute-density"] - 1e-12  # the upload is the epoch's union
    evaluated = method.evaluate(make_task(model, make_data(0), density))
    assert evaluated["eval-density"] <= density + 1e-12 and 0 <= evaluated["accuracy"] <= 1


def test_untouched_weights_do_not_move():
    method, model = setup()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    touched = method.fit(make_task(model, make_data(0), 0.1)).upload
    for name, p in model.named_parameters():
        assert torch.equal(p.detach()[~touched[name]], before[name][~touched[name]])


def test_gate_persists_between_rounds_and_differs_between_clients():
    method, model = setup()
    states = [{}, {}]
    for pid, state in enumerate(states):
        torch.manual_seed(0)
        fresh = build_model(method_model_config(), (12,), 4)
        method.fit(make_task(fresh, make_data(pid), 0.5, seed=pid, partition_id=pid, state=state))
        assert GATE_KEY in state
    first = {k: v.copy() for k, v in states[0][GATE_KEY].items()}
    other = states[1][GATE_KEY]
    assert any(not np.array_equal(first[k], other[k]) for k in first)
    # round 2 starts from the saved gate, not a fresh one
    method.fit(make_task(model, make_data(0), 0.5, seed=5, state=states[0]))
    second = states[0][GATE_KEY]
    fresh_gate = method._gate({}, method._gate_outputs(method._gating(model, 0.5, (12,))), (12,), 0,
                              torch.device("cpu"))
    fresh_w = fresh_gate.state_dict()["score.0.weight"].numpy()
    assert not np.array_equal(second["score.0.weight"], fresh_w)
    assert not np.array_equal(second["score.0.weight"], first["score.0.weight"])


def method_model_config():
    from fedsparse.config import ModelConfig

    return ModelConfig(name="mlp", hidden=[16])


def test_novel_client_fits_only_its_gate_at_evaluation():
    method, model = setup()
    state: dict = {}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method.evaluate(make_task(model, make_data(3), 0.5, state=state, novel=1))
    assert GATE_KEY in state
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name])


def test_per_sample_gating_option():
    method, model = setup(eval_gating="sample")
    result = method.evaluate(make_task(model, make_data(1), 0.3))
    assert result["eval-density"] <= 0.3 + 1e-12
    assert method.summary() == {"eval_gating": "sample"}


def test_joint_training_learns():
    method, model = setup(eval_after_local_training="false")
    state, data = {}, make_data(0, n=300)
    acc0 = method.evaluate(make_task(model, data, 0.5, state=state))["accuracy"]
    for r in range(6):
        method.fit(make_task(model, data, 0.5, seed=r, state=state))
    acc = method.evaluate(make_task(model, data, 0.5, state=state))["accuracy"]
    assert acc > max(0.6, acc0 + 0.2)


def test_evaluation_after_local_training_changes_no_state():
    method, model = setup()
    state: dict = {}
    method.fit(make_task(model, make_data(0), 0.5, state=state))
    saved = {k: v.copy() for k, v in state[GATE_KEY].items()}
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    method.evaluate(make_task(model, make_data(0), 0.5, seed=1, state=state))
    assert all(np.array_equal(saved[k], v) for k, v in state[GATE_KEY].items())
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def run(num_clients=10):
    return RunInfo(seed=3, num_clients=num_clients, rounds=5, train=TrainSettings())


def test_novel_clients_are_a_seeded_share_and_never_all():
    from fedsparse.method import ServerSetup

    options = PFedGate.Options(novel_share=0.3)
    method = PFedGate(options, run())
    model = build_model(method_model_config(), (12,), 4)
    method.setup(ServerSetup(model, [Budget()] * 10, cost_model=None))  # type: ignore[arg-type]
    novel = method.novel_clients()
    assert len(novel) == 3 and novel == _novel_of(options)
    with pytest.raises(ValueError, match="leaves no client"):
        PFedGate(PFedGate.Options(novel_share=0.99), run(2)).setup(
            ServerSetup(model, [Budget()] * 2, cost_model=None))  # type: ignore[arg-type]


def _novel_of(options):
    from fedsparse.method import ServerSetup

    other = PFedGate(options, run())
    other.setup(ServerSetup(build_model(method_model_config(), (12,), 4), [Budget()] * 10,
                            cost_model=None))  # type: ignore[arg-type]
    return other.novel_clients()


def _served(density: float = 0.3):
    """A pFedGate server side set up for one client of ``density`` on the helpers' MLP."""
    from fedsparse.costs import CostModel
    from fedsparse.method import ServerSetup

    method, model = setup()
    method.setup(ServerSetup(model, [Budget(density)], cost_model=CostModel(model, (12,))))
    return method, model


def _context(method, num_examples: int = 20):
    from fedsparse.method import CostContext

    return CostContext(partition_id=0, server_round=1, num_examples=num_examples,
                       local_epochs=method.run.train.local_epochs, batch_size=16, momentum=True)


def test_reported_costs_are_required_and_checked():
    method, model = _served()
    honest = method.fit(make_task(model, make_data(0, n=20), 0.3)).metrics
    computed = TrainingCost(10.0, 20.0, 5.0)
    cost, density = method.round_cost(Budget(0.3), computed, 0.9, honest, _context(method))
    assert (cost.flops, cost.memory_bytes, cost.activation_bytes, density) == (
        honest["train-flops"], honest["memory-bytes"], 5.0, honest["compute-density"])
    with pytest.raises(UpdateRejected, match="lacks the cost metric"):
        method.round_cost(Budget(0.3), computed, 0.9, {"train-flops": 3.0})
    with pytest.raises(UpdateRejected, match="implausible"):
        method.round_cost(Budget(0.3), computed, 0.9, {**honest, "compute-density": 1.5})


@pytest.mark.parametrize(("lie", "needle"), [
    ({"memory-bytes": 1.0}, "less than the"),
    ({"train-flops": 1.0, "conv-linear-flops": 0.5}, "below the"),
    ({"compute-density": 1e-6}, "below the sub0 share"),
])
def test_in_range_cost_lies_are_caught_by_server_side_bounds(lie, needle):
    """What only the client measures still has floors and ceilings the server can compute."""
    method, model = _served()
    honest = method.fit(make_task(model, make_data(0, n=20), 0.3)).metrics
    with pytest.raises(UpdateRejected, match=re.escape(needle)):
        method.round_cost(Budget(0.3), TrainingCost(10.0, 20.0, 5.0), 0.9, {**honest, **lie},
                          _context(method))


def test_the_server_bounds_what_a_gated_client_can_upload():
    """A client of the 0.1 tier reporting density 0.01 but uploading the whole model is caught:
    its few batches cannot have touched that much. An honest epoch's upload passes."""
    from fedsparse.codec import decode, encode
    from fedsparse.method import ServerSetup
    from fedsparse.updates import template_of

    method, model = setup()
    method.setup(ServerSetup(model, [Budget(0.1)], cost_model=None))  # type: ignore[arg-type]
    template = template_of(model.state_dict())
    data = make_data(0, n=20)  # 2 batches of 16: at most 2 * floor(0.1 * d) coordinates
    honest = method.fit(make_task(model, data, 0.1))
    update = decode(encode(model.state_dict(), honest.upload), template)
    method.check_upload(Budget(0.1), None, update, num_examples=20)
    dense = decode(encode(model.state_dict(), None), template)
    with pytest.raises(UpdateRejected, match="can touch at most"):
        method.check_upload(Budget(0.1), None, dense, num_examples=20)
    method.check_upload(Budget(1.0), None, dense, num_examples=20)  # the dense tier may


def test_an_upload_outside_the_blocks_a_budget_can_pick_is_rejected():
    """With enough batches the count bound allows a whole model; the positions do not: at
    s = 0.1 with 5 blocks per tensor no block fits its knapsack, so only sub0 is ever trained."""
    from fedsparse.codec import decode, encode
    from fedsparse.updates import template_of

    method, model = _served(0.1)
    template = template_of(model.state_dict())
    data = make_data(0, n=96)
    honest = method.fit(make_task(model, data, 0.1))
    method.check_upload(Budget(0.1), None, decode(encode(model.state_dict(), honest.upload),
                                                  template), num_examples=2000)
    dense = decode(encode(model.state_dict(), None), template)
    with pytest.raises(UpdateRejected, match=r"that no batch at density 0\.1 can keep"):
        method.check_upload(Budget(0.1), None, dense, num_examples=2000)


def test_a_gate_with_sub0_scores_trains_within_the_budget():
    method, model = setup(sub0_scaled="true", knapsack="grouped", ste="kept")
    result = method.fit(make_task(model, make_data(0), 0.3))
    assert result.metrics["compute-density"] <= 0.3 + 1e-12
    state = {}
    method.fit(make_task(model, make_data(0), 0.3, state=state))
    gate = state[GATE_KEY]
    outputs = next(v for k, v in gate.items() if k.endswith("score.0.weight")).shape[0]
    assert outputs > 5 * len(list(model.parameters()))  # gated blocks plus one sub0 score each
    assert 0 <= method.evaluate(make_task(model, make_data(0), 0.3, state=state))["accuracy"] <= 1


def test_at_s_0_3_on_cnn_bn_different_clients_train_different_blocks():
    """Blocks cut to fit (block_fit 4, grouped knapsack) give the gate a real choice: two
    clients with different data, starting from the same model, touch different coordinates.
    With blocks too large to fit (block_fit 0, the default) every client's mask is the same."""
    from fedsparse.config import load_config
    from fedsparse.experiment import build_method
    from tests.clients.pfedgate.test_channels import cnn, image_data

    touched = []
    for pid in (0, 1):
        method = build_method(load_config(None, ["method.name=pfedgate", "model.name=cnn-bn",
                                                 "train.batch_size=8", "train.momentum=0.9",
                                                 "method.pfedgate.blocks=weights",
                                                 "method.pfedgate.block_fit=4"]))
        data = image_data(32)
        if pid:  # other labels: the client's classes differ
            data = type(data)(data.x_train.flip(-1), (data.y_train + 1) % 4, data.x_val,
                              data.y_val, data.x_test, data.y_test)
        result = method.fit(make_task(cnn(), data, 0.3, seed=pid, partition_id=pid))
        assert result.metrics["compute-density"] <= 0.3
        touched.append({name: mask.clone() for name, mask in result.upload.items()})
    assert touched[0].keys() == touched[1].keys()
    differ = [n for n in touched[0] if not torch.equal(touched[0][n], touched[1][n])]
    assert any("features" in n for n in differ), differ  # convolutions' blocks too
    assert any("classifier" in n for n in differ), differ


@pytest.mark.parametrize("blocks", ["weights", "channel"])
def test_the_authors_gate_options_keep_the_budget_and_learn(blocks):
    method, model = setup(score_floor="true", clips="separate", gate_norm="switch", blocks=blocks,
                          eval_after_local_training="false")
    state, data = {}, make_data(0, n=300)
    for r in range(6):
        result = method.fit(make_task(model, data, 0.5, seed=r, state=state))
        assert result.metrics["compute-density"] <= 0.5 + 1e-12
    assert any("pre_norm.mean_weight" in k for k in state["pfedgate-gate"])  # the SwitchNorm gate persists
    assert method.evaluate(make_task(model, data, 0.5, state=state))["accuracy"] > 0.6
