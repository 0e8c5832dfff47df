"""A deployed node reads the configured dataset from its own folder (node-config ``data-dir``).

The deployed ClientApp is called in process, as a SuperNode's ClientApp process calls it: the
experiment comes from the run config, the folder from the node's ``--node-config``.
"""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedsparse.config import ModelConfig
from fedsparse.errors import DataError
from fedsparse.models import build_model
from fedsparse.simulation.client_app import make_client_app
from tests.data.test_loaders import write_idx

EXPERIMENT = """num_clients: 2
data: {dataset: mnist}
partition: {kind: iid}
method: {name: dense}
strategy: {name: fedavg}
budgets: {tiers: [{density: 1.0, share: 1.0}]}
"""


def idx_folder(folder, n_train: int, seed: int):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("t10k", 10)):
        write_idx(folder / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    return folder


def message(kind: str, content: RecordDict, message_id: str) -> Message:
    msg = Message(content, dst_node_id=1, message_type=kind)
    msg.metadata.__dict__["_message_id"] = message_id
    return msg


def node(folder, experiment) -> Context:
    return Context(run_id=7, node_id=1, state=RecordDict(),
                   node_config={"partition-id": 0, "num-partitions": 2, "data-dir": str(folder)},
                   run_config={"config": str(experiment), "set": "", "out": ""})


@pytest.fixture
def experiment(tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_text(EXPERIMENT)
    return path


def test_each_node_trains_on_the_files_in_its_own_folder(tmp_path, experiment, task_identity):
    app = make_client_app(None, None)
    small = node(idx_folder(tmp_path / "small", 40, seed=1), experiment)
    large = node(idx_folder(tmp_path / "large", 200, seed=2), experiment)
    sizes = {}
    for name, context in (("small", small), ("large", large)):
        reply = app(message=message("query", RecordDict(), f"h-{name}"), context=context)
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        sizes[name] = int(reply.content["metrics"]["num-train"])
    # an iid half of 40 or of 200 images (train 60% of the client's share): each node's own files
    assert 0 < sizes["small"] < sizes["large"]

    model = build_model(ModelConfig(), (1, 28, 28), 10)  # the experiment's model, as nodes build it
    train = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                        "config": ConfigRecord({"server-round": 1, "budget-density": 1.0})})
    reply = app(message=message("train", train, "t-large"), context=large)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert int(reply.content["metrics"]["partition-id"]) == 0


def test_a_node_whose_folder_lacks_the_files_names_its_own_setting(tmp_path, experiment, task_identity):
    """In a deployment Flower turns this into the error reply the server counts as a failure."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"this SuperNode \(data-dir .*empty in its --node-config\): "
                                        r"mnist: .* lacks train-images-idx3-ubyte.*the node's data-dir"):
        make_client_app(None, None)(message=message("query", RecordDict(), "h-empty"),
                                    context=node(empty, experiment))
