"""The first exchange of a run waits for the workers to start: it gets ``startup_grace`` on top
of ``round_timeout``; every later one waits ``round_timeout``."""

import pytest

from fedsparse.simulation import queries, server_app
from tests.simulation.inprocess import simulate_here


@pytest.fixture
def timeouts(monkeypatch):
    seen: list[tuple[str, float]] = []

    def recording(where, original):
        def send_and_receive(grid, messages, timeout, *args, **kwargs):
            seen.append((where, timeout))
            return original(grid, messages, timeout, *args, **kwargs)
        return send_and_receive

    monkeypatch.setattr(server_app, "send_and_receive",
                        recording("round", server_app.send_and_receive))
    monkeypatch.setattr(queries, "send_and_receive", recording("query", queries.send_and_receive))
    return seen


TIMEOUTS = ["--set", "simulation.round_timeout=30", "--set", "simulation.startup_grace=7"]


def test_only_the_first_round_waits_for_the_workers_to_start(tmp_path, timeouts):
    simulate_here(tmp_path, "--clients", "4", "--rounds", "3", "--fraction", "0.5",
                  "--method", "dense", "--strategy", "fedavg", "--budgets", "1.0:1",
                  "--set", "eval.every=2", *TIMEOUTS)
    # train 1; train 2, evaluate 2; train 3, evaluate 3 (the final round)
    assert timeouts == [("round", 37.0)] + [("round", 30.0)] * 4


def test_a_methods_queries_before_round_one_are_the_first_exchange(tmp_path, timeouts):
    simulate_here(tmp_path, "--clients", "4", "--rounds", "2", "--fraction", "0.5",
                  "--model", "mlp", "--method", "fedtiny", "--budgets", "0.3:1",
                  "--set", "method.pruning.warmup_epochs=1", "--set", "eval.every=2", *TIMEOUTS)
    queried = [t for where, t in timeouts if where == "query"]
    assert queried and set(queried) == {37.0}  # FedTiny's ABNS queries, before any round
    assert [t for where, t in timeouts if where == "round"] == [30.0] * 3
