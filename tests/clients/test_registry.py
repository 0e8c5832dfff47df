"""Finding methods by name, entry point and module:Class; their options in the config."""

from pathlib import Path

import numpy as np
import pytest
import torch

from fedsparse.budgets import Budget
from fedsparse.clients.registry import BUILTIN, available, resolve
from fedsparse.config import load_config
from fedsparse.errors import ConfigError
from fedsparse.experiment import build_method
from fedsparse.method import ServerSetup
from fedsparse.models import build_model

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_method"
PLUGIN = f"{EXAMPLE / 'federated_dropout.py'}:FederatedDropout"


def write_dist_info(root: Path) -> None:
    """What `pip install examples/custom_method` leaves on sys.path, written by hand."""
    info = root / "fedsparse_federated_dropout-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fedsparse-federated-dropout\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(
        "[fedsparse.methods]\nfederated-dropout = federated_dropout:FederatedDropout\n")


def test_builtins_are_listed_with_one_line_each():
    rows = dict(available())
    assert set(BUILTIN) == {"dense", "fedavg-ft", "local", "ditto", "magnitude", "pfedgate",
                            "fedtiny", "prune-at-init", "feddst", "fedmef", "heterofl", "fjord",
                            "fedrolex"} <= set(rows)
    assert all(line and "\n" not in line for line in rows.values())
    assert resolve("fedtiny").section() == "pruning" and resolve("pfedgate").section() == "pfedgate"


def test_plugin_by_path_module_and_entry_point(tmp_path, monkeypatch):
    assert resolve(PLUGIN).name == "federated-dropout"
    monkeypatch.syspath_prepend(str(EXAMPLE))
    assert resolve("federated_dropout:FederatedDropout").name == "federated-dropout"
    write_dist_info(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve("federated-dropout").__name__ == "FederatedDropout"
    assert any(name == "federated-dropout" for name, _ in available())
    cfg = load_config(None, ["method.name=federated-dropout",
                             "method.federated-dropout.redraw_every=3"])
    assert build_method(cfg).options.redraw_every == 3


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (["method.name=nope"], "unknown method 'nope'"),
        (["method.name=fedtinny"], "did you mean 'fedtiny'"),
        (["method.name=json:dumps"], "not a concrete subclass"),
        (["method.name=fedsparse.method:Method"], "abstract"),
        (["method.name=/nonexistent/m.py:X"], "not found"),
        (["method.pfedgate.splitt=3"], "unknown key 'method.pfedgate.splitt'"),
        (["method.pfedgate.split=0"], "'method.pfedgate.split'"),
        (["method.nosuch.x=1"], "unknown options section 'method.nosuch'"),
        (["method.finetune_epochs=2"], "unknown options section 'method.finetune_epochs'"),
    ],
)
def test_bad_methods_and_options_are_one_line_errors(sets, needle):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(None, sets)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("name", "expected"), [("FedAvg", "dense"), ("fedavg", "dense"),
                                              ("FjORD", "fjord"), ("pFedGate", "pfedgate")])
def test_method_names_in_any_case_and_fedavg_as_dense(name, expected):
    assert load_config(None, [f"method.name={name}"]).method.name == expected


def test_other_methods_sections_stay_valid_when_switching_methods():
    cfg = load_config(None, ["method.name=dense"])  # quickstart.yaml carries method.pfedgate
    assert cfg.method.options_of("pfedgate")["split"] == 5
    assert cfg.method.options_of("dense") == {}


def test_plugin_with_server_state_resumes_its_draws():
    cfg = load_config(None, [f"method.name={PLUGIN}", "model.hidden=[16]"])
    torch.manual_seed(0)
    model = build_model(cfg.model, (12,), 4)
    budgets = [Budget(0.3), Budget(1.0)]

    def fresh():
        method = build_method(cfg)
        method.setup(ServerSetup(model, budgets, cost_model=None))  # type: ignore[arg-type]
        return method

    def draw(method, server_round):
        method.begin_round(server_round)
        masks = method.client_masks(dict(model.named_parameters()), budgets[0])
        method.after_aggregate({}, [0])
        return masks

    first, resumed = fresh(), fresh()
    for r in (1, 2):
        draw(first, r)
    resumed.load_state_dict(first.state_dict())
    a, b = draw(first, 3), draw(resumed, 3)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(a["net.1.weight"], draw(fresh(), 1)["net.1.weight"])
    kept = sum(int(a[n].sum()) for n in a) / sum(m.numel() for m in a.values())
    assert kept <= 0.3 + 1e-9
    coverage = first.summary()["federated_dropout"]["coverage"]
    assert 0.3 < coverage < 1.0 and np.isclose(coverage, resumed.summary()["federated_dropout"]["coverage"])
    with pytest.raises(ValueError, match="biases and norm"):
        build_method(cfg).setup(ServerSetup(model, [Budget(0.001)], cost_model=None))  # type: ignore[arg-type]
