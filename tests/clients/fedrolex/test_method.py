"""FedRolex: the window of channels rolls with the round and covers every channel over time."""

import torch

from fedsparse.budgets import Budget
from tests.clients.width.helpers import SHAPE, width_method


def kept_filters(method, model, server_round, density=0.3):
    method.begin_round(server_round)
    masks = method.client_masks(dict(model.named_parameters()), Budget(density=density))
    return torch.nonzero(masks["features.0.weight"].reshape(32, -1).any(dim=1)).reshape(-1).tolist()


def test_the_window_rolls_one_channel_per_round_and_wraps():
    method, model = width_method("fedrolex")
    k = len(kept_filters(method, model, 1))
    assert kept_filters(method, model, 1) == list(range(k))
    assert kept_filters(method, model, 2) == list(range(1, k + 1))
    assert kept_filters(method, model, 33) == list(range(k))  # 32 filters: back at the start
    covered = set()
    for server_round in range(1, 33):
        covered |= set(kept_filters(method, model, server_round))
    assert covered == set(range(32))


def test_the_step_option_moves_the_window_faster_and_full_width_is_whole():
    method, model = width_method("fedrolex", "method.fedrolex.step=5")
    k = len(kept_filters(method, model, 1))
    assert kept_filters(method, model, 2) == list(range(5, 5 + k))
    method.begin_round(7)
    assert method.client_masks(dict(model.named_parameters()), Budget(density=1.0)) is None
    graph = method.graph(model, SHAPE)
    assert len(graph.spaces) == 3


def test_the_cover_step_moves_each_layer_by_its_channels_over_the_rounds():
    method, model = width_method("fedrolex", "method.fedrolex.step=cover", "rounds=4")
    k = len(kept_filters(method, model, 1))
    # 32 filters over 4 rounds: 8 channels a round, so the run's windows cover every channel
    assert kept_filters(method, model, 2) == sorted((8 + i) % 32 for i in range(k))
    covered = set()
    for server_round in range(1, 5):
        covered |= set(kept_filters(method, model, server_round))
    assert covered == set(range(32))
    authors, _ = width_method("fedrolex", "rounds=4")  # the authors' step: one a round
    assert authors.options.step == 1
    assert len(set().union(*(kept_filters(authors, model, r) for r in range(1, 5)))) < 32
