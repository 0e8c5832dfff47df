"""The server's score of the global model: on the pooled tests of the clients that evaluate
(a seeded sample between the first and the final round), on every client's at the final round."""

import json

import numpy as np
import pytest
import torch

from fedsparse.checkpoint import load_checkpoint
from fedsparse.config import load_config
from fedsparse.data.federation import build_federation
from fedsparse.models import build_model
from fedsparse.sampling import evaluation_sample
from fedsparse.training import evaluate
from tests.simulation.inprocess import simulate_here

# "local" never moves the (warmed-up) global model: the checkpoint holds the model every round scored
RUN = ["--clients", "10", "--rounds", "4", "--fraction", "0.5", "--method", "local",
       "--strategy", "masked-fedavg", "--budgets", "1.0:1",
       "--set", "eval.every=2", "--set", "eval.fraction=0.3",
       "--set", "partition.server_set=true", "--set", "partition.server_warmup_epochs=10"]


def test_global_model_is_scored_on_the_evaluated_clients_tests(tmp_path):
    run = simulate_here(tmp_path, *RUN)
    config = load_config(run / "config.yaml")
    federation = build_federation(config)
    pool = federation.pool
    model = build_model(config.model, pool.input_shape, pool.num_classes)
    model.load_state_dict({k: torch.from_numpy(np.array(v))
                           for k, v in load_checkpoint(run).arrays.items()})
    records = {r["round"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}

    sampled = evaluation_sample(config.seed, 2, range(10), 3)
    on_sample = evaluate(model, *pool.tensors(np.concatenate(
        [federation.clients[p].test for p in sampled]))).accuracy
    on_all = evaluate(model, *pool.tensors(federation.pooled_test())).accuracy
    assert records[2]["clients_evaluated"] == 3
    assert records[2]["accuracy_global"] == pytest.approx(on_sample)
    assert records[4]["clients_evaluated"] == 10
    assert records[4]["accuracy_global"] == pytest.approx(on_all)
    assert on_all > 0.3 and on_sample != pytest.approx(on_all)  # a learned model; the two differ
