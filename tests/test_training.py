import copy
import itertools
import math

import pytest
import torch
from torch import nn

from fedsparse.config import ModelConfig, TrainConfig
from fedsparse.models import build_model
from fedsparse.training import LocalSGD, TrainSettings, evaluate, train_local
from tests.fresh_interpreter import run_fresh


def _blobs(n: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (n,), generator=g)
    centers = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    return centers[y] + torch.randn(n, 2, generator=g) * 0.5, y


def test_local_training_learns_a_separable_problem():
    x, y = _blobs()
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mlp", hidden=[16]), (2,), 3)
    before = evaluate(model, x, y)
    loss, seen = train_local(model, x, y, TrainConfig(local_epochs=3, lr=0.1),
                             torch.Generator().manual_seed(1))
    assert seen == 1200
    after = evaluate(model, x, y)
    assert after.accuracy > 0.95 > before.accuracy
    assert after.loss < before.loss and loss < before.loss
    assert after.num_examples == 400


def test_training_is_deterministic_for_a_seed():
    x, y = _blobs()
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model(ModelConfig(name="mlp", hidden=[16]), (2,), 3)
        train_local(model, x, y, TrainConfig(), torch.Generator().manual_seed(5))
        states.append(model.state_dict())
    for a, b in zip(states[0].values(), states[1].values(), strict=True):
        assert torch.equal(a, b)


def test_batchnorm_model_skips_single_sample_tail_batch():
    x, y = torch.randn(33, 1, 28, 28), torch.randint(0, 10, (33,))
    model = build_model(ModelConfig(name="cnn-bn"), (1, 28, 28), 10)
    train_local(model, x, y, TrainConfig(batch_size=32), torch.Generator().manual_seed(0))


def test_proximal_term_keeps_weights_near_the_received_model():
    x, y = _blobs()
    drifts = []
    for mu in (0.0, 10.0):
        torch.manual_seed(0)
        model = build_model(ModelConfig(name="mlp", hidden=[16]), (2,), 3)
        start = [p.detach().clone() for p in model.parameters()]
        train_local(model, x, y, TrainConfig(local_epochs=2, lr=0.1), torch.Generator().manual_seed(1),
                    proximal_mu=mu)
        drifts.append(sum(float(((p - s) ** 2).sum()) for p, s in zip(model.parameters(), start,
                                                                       strict=True)))
    assert drifts[1] < 0.5 * drifts[0]


def test_lr_schedules_start_at_lr_and_fall_as_declared():
    constant = TrainSettings(lr=0.1)
    assert constant.at_round(7, 10) is constant
    cosine = TrainSettings(lr=0.1, lr_schedule="cosine", lr_min=0.01)
    rates = [cosine.lr_at(r, 10) for r in range(1, 11)]
    assert rates[0] == pytest.approx(0.1) and all(a > b for a, b in itertools.pairwise(rates))
    assert rates[5] == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert rates[-1] > 0.01
    exponential = TrainSettings(lr=0.1, lr_schedule="exponential", lr_decay=0.5)
    assert exponential.at_round(3, 10).lr == pytest.approx(0.025)
    assert exponential.at_round(3, 10).lr_schedule == "constant"  # a round's settings are final


def test_a_method_trains_each_round_at_the_schedules_rate():
    from tests.clients.helpers import make_method, make_task

    method, _ = make_method("dense", "train.lr_schedule=exponential", "train.lr_decay=0.5",
                            "train.lr=0.2")
    assert method.train_settings(make_task(None, None, **{"server-round": 3})).lr == pytest.approx(0.05)


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.9, 5e-4), (0.0, 1e-3)])
def test_local_sgd_updates_exactly_as_torch_optim_sgd(momentum, weight_decay):
    """Step for step, including a parameter left without a gradient for a step (frozen: no
    update, its momentum kept) and the momentum state carried across steps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    twin = copy.deepcopy(model)
    ours = LocalSGD(model.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    theirs = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for step in range(5):
        for net, opt in ((model, ours), (twin, theirs)):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            if step == 2:
                net[0].bias.grad = None  # skipped this step, as SGD skips gradient-less parameters
            opt.step()
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            assert torch.equal(a, b)


def test_local_training_leaves_torch_dynamo_unimported():
    """torch.optim's optimizers import torch._dynamo on first use (a second per Ray worker);
    local training must not (a fresh interpreter: nothing imported before)."""
    script = (
        "import sys, torch\n"
        "from fedsparse.training import TrainSettings, train_local\n"
        "model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), "
        "torch.nn.Linear(8, 2))\n"
        "x, y = torch.randn(40, 4), torch.randint(0, 2, (40,))\n"
        "train_local(model, x, y, TrainSettings(momentum=0.9, weight_decay=1e-4), "
        "torch.Generator().manual_seed(0))\n"
        "assert 'torch._dynamo' not in sys.modules\n"
    )
    run_fresh(script)
