"""Every method trains, evaluates and answers on an accelerator: the ClientApp places the task on
a (emulated, ``tests/fake_cuda.py``) CUDA device, and a method that mixes host and device
tensors, or reads a device tensor as numpy, fails its clients here as it would on a GPU."""

import pytest

from tests.clients.test_registry import EXAMPLE
from tests.fake_cuda import CUDA, FakeCuda
from tests.simulation.inprocess import invoke_here
from tests.simulation.test_methods_in_process import write_learnable_idx

SMALL = ["--clients", "4", "--rounds", "2", "--fraction", "1", "--set", "eval.every=2"]
SYNTHETIC = ["--set", "data.synthetic.iid=true"]
#: one run per code path: dense and personal baselines, flat-weight and channel gates, pruning at
#: weight and filter level (with FedTiny's query rounds), FedMef's activation pruning, widths,
#: and the example plug-in of the docs' "Custom methods"
RUNS = {
    "dense": ["--method", "dense", "--budgets", "1.0:1"],
    "ditto": ["--method", "ditto", "--budgets", "1.0:1"],
    "local": ["--method", "local", "--budgets", "1.0:1"],
    "pfedgate": ["--method", "pfedgate"],
    "fedtiny": ["--method", "fedtiny"],
    "snip": ["--method", "prune-at-init", "--set", "method.pruning.criterion=snip"],
    "feddst": ["--method", "feddst"],
    "heterofl": ["--method", "heterofl"],
    "fedrolex": ["--method", "fedrolex"],
    "fjord-cnn": ["--method", "fjord", "images"],
    "pfedgate-channels-cnn": ["--method", "pfedgate", "--set", "method.pfedgate.blocks=channel", "images"],
    "fedtiny-filters-cnn": ["--method", "fedtiny", "--set", "method.pruning.granularity=filter", "images"],
    "fedmef-cnn": ["--method", "fedmef", "images"],
    "example-plugin": ["--method", f"{EXAMPLE / 'federated_dropout.py'}:FederatedDropout"],
}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = write_learnable_idx(tmp_path_factory.mktemp("mnist") / "mnist", 160, 40)
    return ["--dataset", "mnist", "--data-dir", str(folder), "--model", "cnn-bn", "--partition", "iid"]


@pytest.mark.parametrize("run", list(RUNS), ids=list(RUNS))
def test_the_method_runs_on_an_accelerator(run, images, tmp_path, monkeypatch):
    monkeypatch.setattr("fedsparse.simulation.client_app.client_device", lambda _: CUDA)
    args = [a for a in RUNS[run] if a != "images"]
    data = images if "images" in RUNS[run] else SYNTHETIC
    with FakeCuda() as device:
        result = invoke_here("simulate", "--out", str(tmp_path), *SMALL, *data, *args)
    assert device.mixups == [], device.mixups[:3]
    assert result.exit_code == 0, (result.stderr or "")[-2000:]
    assert device.device_ops > 100  # the clients really computed on the device
    assert "failed" not in (result.stderr or "")
