"""Finding strategies by name, entry point and module:Class, and the errors when that fails."""

from pathlib import Path

import pytest
from flwr.serverapp.strategy import FedProx

from fedsparse.config import load_config
from fedsparse.errors import ConfigError
from fedsparse.experiment import method_class
from fedsparse.strategies import check_strategy
from fedsparse.strategies.registry import available, resolve

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_strategy"


def write_dist_info(root: Path) -> None:
    """What `pip install examples/custom_strategy` leaves on sys.path, written by hand."""
    info = root / "fedsparse_norm_clip-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fedsparse-norm-clip\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(
        "[fedsparse.strategies]\nnorm-clipped = norm_clipped_fedavg:NormClippedFedAvg\n")


def test_builtin_and_flower_names():
    assert resolve("masked-fedavg").accepts_sparse
    spec = resolve("fedprox")
    assert spec.flower and spec.cls is FedProx and not spec.accepts_sparse
    names = [name for name, _ in available()]
    assert {"fedavg", "masked-fedavg", "masked-fedadam", "masked-median", "fedprox", "krum"} <= set(names)


def test_module_path_and_entry_point(tmp_path, monkeypatch):
    by_path = resolve(f"{EXAMPLE / 'norm_clipped_fedavg.py'}:NormClippedFedAvg")
    assert by_path.cls.__name__ == "NormClippedFedAvg" and by_path.accepts_sparse
    monkeypatch.syspath_prepend(str(EXAMPLE))
    assert resolve("norm_clipped_fedavg:NormClippedFedAvg").cls.__name__ == "NormClippedFedAvg"
    write_dist_info(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve("norm-clipped").cls.__name__ == "NormClippedFedAvg"
    assert any(name == "norm-clipped" for name, _ in available())


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("nope", "unknown strategy 'nope'"),
        ("fedadm", "did you mean 'fedadam'"),
        ("Masked-FedAvgg", "did you mean 'masked-fedavg'"),
        ("no_such_module_xyz:Thing", "importing no_such_module_xyz failed"),
        ("json:nothing_here", "has no attribute 'nothing_here'"),
        ("json:dumps", "not a subclass"),
        ("/nonexistent/plugin.py:X", "not found"),
    ],
)
def test_resolution_errors(name, needle):
    with pytest.raises(ConfigError, match=needle):
        resolve(name)


def test_broken_plugin_file(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match="RuntimeError: boom"):
        resolve(f"{bad}:X")


def test_flower_strategy_refuses_sparse_methods():
    cfg = load_config(None, ["strategy.name=fedprox", "method.name=magnitude"])
    with pytest.raises(ConfigError, match="cannot aggregate the sparse updates"):
        check_strategy(cfg, method_class(cfg).sparse_updates)


@pytest.mark.parametrize(
    ("method", "name", "expected", "noted"),
    [
        ("pfedgate", "FedAvg", "masked-fedavg", True),
        ("pfedgate", "FedAdam", "masked-fedadam", True),
        ("magnitude", "FEDMEDIAN", "masked-median", True),
        ("fedtiny", "FedTrimmedAvg", "masked-trimmed-mean", True),
        ("dense", "FedAvg", "fedavg", False),
        ("dense", "FedMedian", "fedmedian", False),
        ("pfedgate", "Masked-FedYogi", "masked-fedyogi", False),
        ("pfedgate", "FedProx", "fedprox", False),
    ],
)
def test_flower_names_in_any_case_map_to_what_the_method_can_use(method, name, expected, noted):
    """Flower's class names work as written; with sparse updates a dense strategy that has a
    mask-aware counterpart means that counterpart, and the config says so."""
    cfg = load_config(None, [f"method.name={method}", f"strategy.name={name}"])
    assert cfg.strategy.name == expected
    notes = [note for note in cfg.notes if note.startswith("strategy")]
    assert bool(notes) is noted and (not noted or expected in notes[0])
    if expected != "fedprox":
        check_strategy(cfg, method_class(cfg).sparse_updates)


def test_a_dense_only_strategy_names_its_counterpart_or_the_robust_ones():
    cfg = load_config(None, ["strategy.name=krum", "method.name=magnitude"])
    with pytest.raises(ConfigError, match=r"use --strategy masked-fedavg \(or masked-median"):
        check_strategy(cfg, method_class(cfg).sparse_updates)
