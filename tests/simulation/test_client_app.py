import pickle

import ray.cloudpickle as cloudpickle
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedsparse.config import load_config
from fedsparse.data.federation import build_federation, save_partitions, save_pool
from fedsparse.models import build_model
from fedsparse.results import POOL_DIR
from fedsparse.simulation.client_app import make_client_app


def test_the_app_pickles_by_reference_and_still_trains(tmp_path, task_identity):
    """Ray pickles the app with every message: it must be small and rebuild into a working app."""
    config = load_config(None, ["num_clients=4", "method.name=dense", "strategy.name=fedavg",
                                "budgets.tiers=[{density: 1.0, share: 1.0}]"])
    federation = build_federation(config)
    save_partitions(federation, tmp_path / "partitions.npz")
    save_pool(federation.pool, tmp_path / POOL_DIR)  # what the driver writes for its workers
    config_json = config.model_dump_json()
    app = make_client_app(config_json, str(tmp_path / "partitions.npz"))

    blob = cloudpickle.dumps(lambda: app)  # what Flower's backend ships per message
    assert len(blob) < len(config_json) + 1500
    rebuilt = pickle.loads(blob)()

    pool = federation.pool
    model = build_model(config.model, pool.input_shape, pool.num_classes)
    msg = Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                              "config": ConfigRecord({"server-round": 1, "budget-density": 1.0,
                                                      "novel": 0})}),
                  dst_node_id=3, message_type="train")
    msg.metadata.__dict__["_message_id"] = "m1"
    context = Context(run_id=42, node_id=3, node_config={"partition-id": 2, "num-partitions": 4},
                      state=RecordDict(), run_config={})
    reply = rebuilt(message=msg, context=context)
    assert not reply.has_error()
    assert int(reply.content["metrics"]["partition-id"]) == 2
    trained = reply.content["arrays"].to_torch_state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in model.state_dict().items())


def test_a_deployed_node_partitions_once_per_run_and_keeps_its_split(monkeypatch):
    """Each deployed ClientApp message runs in a fresh process: the node's split lives in its
    Flower state after the first message, so later messages neither re-partition nor differ,
    and the method never sees it as private state."""
    from fedsparse.simulation import client_app

    config = load_config(None, ["num_clients=4", "method.name=dense", "strategy.name=fedavg"])
    runtime = client_app.ClientRuntime(config, None)
    context = Context(run_id=1, node_id=3, node_config={"partition-id": 2}, state=RecordDict(),
                      run_config={})
    first = runtime.node_split(2, context)
    assert (first.train == build_federation(config).clients[2].train).all()

    def no_partitioning(*_):
        raise AssertionError("partitioned again")

    monkeypatch.setattr(client_app, "_local_partitions", no_partitioning)
    again = runtime.node_split(2, context)
    assert all((getattr(again, k) == getattr(first, k)).all() for k in ("train", "val", "test"))
    assert client_app._private_state(context) == {}
