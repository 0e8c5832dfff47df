"""The pFedGate client on its own: budgets, private gate state, costs, novel clients."""

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from fedsparse.clients import PFedGateClient
from fedsparse.clients.dense import LocalData
from fedsparse.clients.pfedgate import GATE_KEY
from fedsparse.config import load_config
from fedsparse.models import build_model


def make_data(seed: int, n: int = 96) -> LocalData:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 12, generator=g) + torch.nn.functional.one_hot(y, 12).float() * 3
    return LocalData(x, y, x[:0], y[:0], x[: n // 3], y[: n // 3])


def setup(density: float, **options):
    extra = [f"method.pfedgate.{k}={v}" for k, v in options.items()]
    cfg = load_config(None, ["method.name=pfedgate", "train.momentum=0.9", "model.hidden=[16]",
                             "train.batch_size=16", *extra])
    client = PFedGateClient(cfg)
    torch.manual_seed(0)
    model = build_model(cfg.model, (12,), 4)
    return client, model, {"budget-density": density, "partition-id": 0, "server-round": 1}


@pytest.mark.parametrize("density", [0.1, 0.3, 1.0])
def test_density_tracks_the_budget(density):
    client, model, conf = setup(density)
    metrics, touched = client.fit(model, None, make_data(0), torch.Generator().manual_seed(0), conf,
                                  RecordDict())
    assert metrics["compute-density"] <= density + 1e-12
    assert metrics["mean-compute-density"] <= metrics["compute-density"]
    union = sum(int(t.sum()) for t in touched.values()) / sum(p.numel() for p in model.parameters())
    assert union >= metrics["compute-density"] - 1e-12  # the upload is the epoch's union
    evaluated = client.evaluate(model, None, make_data(0), torch.Generator(), conf, RecordDict())
    assert evaluated["eval-density"] <= density + 1e-12 and 0 <= evaluated["accuracy"] <= 1


def test_untouched_weights_do_not_move():
    client, model, conf = setup(0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _, touched = client.fit(model, None, make_data(0), torch.Generator().manual_seed(0), conf,
                            RecordDict())
    for name, p in model.named_parameters():
        assert torch.equal(p.detach()[~touched[name]], before[name][~touched[name]])


def test_gate_persists_between_rounds_and_differs_between_clients():
    client, model, conf = setup(0.5)
    states = [RecordDict(), RecordDict()]
    for pid, state in enumerate(states):
        torch.manual_seed(0)
        fresh = build_model(client.config.model, (12,), 4)
        client.fit(fresh, None, make_data(pid), torch.Generator().manual_seed(pid),
                   {**conf, "partition-id": pid}, state)
        assert GATE_KEY in state.array_records
    first = {k: v.numpy().copy() for k, v in states[0][GATE_KEY].items()}
    other = states[1][GATE_KEY]
    assert any(not np.array_equal(first[k], other[k].numpy()) for k in first)
    # round 2 starts from the saved gate, not a fresh one
    client.fit(model, None, make_data(0), torch.Generator().manual_seed(5), conf, states[0])
    second = states[0][GATE_KEY]
    layout_gate = client._gate(RecordDict(), client._layout(model, conf), (12,), 0)
    fresh_w = layout_gate.state_dict()["score.0.weight"].numpy()
    assert not np.array_equal(second["score.0.weight"].numpy(), fresh_w)
    assert not np.array_equal(second["score.0.weight"].numpy(), first["score.0.weight"])


def test_novel_client_fits_only_its_gate_at_evaluation():
    client, model, conf = setup(0.5)
    state = RecordDict()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    client.evaluate(model, None, make_data(3), torch.Generator().manual_seed(0),
                    {**conf, "novel": 1}, state)
    assert GATE_KEY in state.array_records
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name])


def test_per_sample_gating_option():
    client, model, conf = setup(0.3, eval_gating="sample")
    result = client.evaluate(model, None, make_data(1), torch.Generator(), conf, RecordDict())
    assert result["eval-density"] <= 0.3 + 1e-12


def test_joint_training_learns():
    client, model, conf = setup(0.5, eval_after_local_training="false")
    state, data = RecordDict(), make_data(0, n=300)
    acc0 = client.evaluate(model, None, data, torch.Generator(), conf, state)["accuracy"]
    for r in range(6):
        client.fit(model, None, data, torch.Generator().manual_seed(r), conf, state)
    acc = client.evaluate(model, None, data, torch.Generator(), conf, state)["accuracy"]
    assert acc > max(0.6, acc0 + 0.2)


def test_evaluation_after_local_training_changes_no_state():
    client, model, conf = setup(0.5)
    state = RecordDict()
    client.fit(model, None, make_data(0), torch.Generator().manual_seed(0), conf, state)
    saved = {k: v.numpy().copy() for k, v in state[GATE_KEY].items()}
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    client.evaluate(model, None, make_data(0), torch.Generator().manual_seed(1), conf, state)
    assert all(np.array_equal(saved[k], v.numpy()) for k, v in state[GATE_KEY].items())
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
