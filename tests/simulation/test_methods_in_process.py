"""Methods, strategies and plug-ins through the real CLI, ServerLoop, strategies and ClientApp,
in one process (``inprocess.py``): the behaviour of each, without a Ray start-up per test.
The Ray path is covered by the ``e2e`` tests."""

import csv
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

import fedsparse.data.federation as fed
from fedsparse.config import load_config
from tests.clients.test_registry import EXAMPLE as METHOD_EXAMPLE
from tests.simulation.inprocess import simulate_here
from tests.simulation.test_end_to_end import check_run_folder
from tests.simulation.test_pruning_end_to_end import SMALL as PRUNING_SMALL
from tests.simulation.test_pruning_end_to_end import client_rows
from tests.strategies.test_registry import EXAMPLE

SMALL = ["--clients", "4", "--rounds", "2", "--fraction", "1", "--set", "data.synthetic.iid=true",
         "--set", "eval.every=2"]


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def write_learnable_idx(folder: Path, train: int, test: int) -> Path:
    """Learnable 28x28 images in the real MNIST IDX format (class c lights rows 2c+4, 2c+5)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c + 4: 2 * c + 6, :] = 250
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


def test_method_fedavg_on_the_default_config_runs_the_dense_reference(tmp_path):
    """README's `--method fedavg`: the default config's sparse tiers are not applied, and the
    run says so; the summary records every client at density 1."""
    from tests.simulation.inprocess import invoke_here

    result = invoke_here("simulate", "--out", str(tmp_path), "--method", "fedavg", *SMALL)
    assert result.exit_code == 0, result.output
    assert "are not applied, every client declares density 1" in result.output
    run = next(tmp_path.iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "dense"
    assert [t["density"] for t in summary["budget"]["tiers"]] == [1.0]


def test_dense_fedavg_on_synthetic_beats_the_majority_class(tmp_path):
    """(On Ray, ``test_end_to_end.py`` checks the run itself; learning is the same code.)"""
    run = simulate_here(tmp_path, "--clients", "4", "--rounds", "4", "--fraction", "0.5",
                        "--method", "dense", "--strategy", "fedavg", "--budgets", "1.0:1",
                        "--local-epochs", "3", "--lr", "0.1", "--set", "data.synthetic.iid=true",
                        "--set", "eval.every=2")
    summary = check_run_folder(run, clients=4, rounds=4)
    # beat the majority class, not just 1/10: the labels of Synthetic are imbalanced
    cfg = load_config(run / "config.yaml")
    splits = fed.load_partitions(run / "partitions.npz", 4)
    labels = fed.cached_pool(cfg).y[np.concatenate([s.test for s in splits])]
    majority = np.bincount(labels).max() / len(labels)
    assert summary["accuracy"]["global"] > majority + 0.1
    assert summary["accuracy"]["mean"] > majority


def test_idx_images_with_a_cnn_dirichlet_and_flower_fedprox(tmp_path):
    """Learnable images in the real IDX format (class c lights up row band c), trained by a
    Flower strategy named like a built-in (FedProx: its proximal-mu reaches the clients)."""
    data = write_learnable_idx(tmp_path / "data", 900, 300)
    run = simulate_here(tmp_path / "runs", "--dataset", "mnist", "--data-dir", str(data), "--clients", "5",
                   "--rounds", "2", "--fraction", "1", "--partition", "dirichlet", "--alpha", "0.5",
                   "--model", "cnn-bn", "--lr", "0.05", "--method", "dense", "--strategy", "fedprox",
                   "--set", "strategy.options.proximal_mu=0.01", "--budgets", "1.0:1")
    summary = check_run_folder(run, clients=5, rounds=2)
    assert summary["accuracy"]["global"] > 0.5  # chance is 0.1
    assert summary["strategy"] == "fedprox"
    # measured bytes: Flower's content-addressed chunks make a trained and an initial dense
    # model differ by a few hundred bytes in ~1.7 MB
    assert summary["cost"]["upload_bytes_ratio"] == pytest.approx(1.0, rel=1e-3)


def test_heterogeneous_budgets_with_magnitude_submodels(tmp_path):
    """Three budget tiers train different masks in the same rounds; masked FedAvg merges them."""
    run = simulate_here(tmp_path, "--clients", "6", "--rounds", "2", "--fraction", "1",
                   "--method", "magnitude", "--strategy", "masked-fedavg",
                   "--budgets", "0.2:0.5,0.5:0.34,1.0:0.16", "--set", "data.synthetic.iid=true")
    summary = check_run_folder(run, clients=6, rounds=2)
    cost = summary["cost"]
    assert 0.2 < cost["density"] < 0.6
    for key in ("train_flops", "memory_bytes", "upload_bytes", "download_bytes"):
        assert cost[f"{key}_ratio"] < 0.75, key
    with (run / "clients.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    by_budget: dict[float, list[float]] = {}
    for row in rows:
        assert int(row["rounds_trained"]) == 2
        assert float(row["density"]) <= float(row["budget_density"]) + 1e-9
        by_budget.setdefault(float(row["budget_density"]), []).append(float(row["upload_bytes"]))
    assert sorted(by_budget) == [0.2, 0.5, 1.0]
    assert [len(v) for _, v in sorted(by_budget.items())] == [3, 2, 1]
    assert max(by_budget[0.2]) < min(by_budget[0.5]) < min(by_budget[1.0])



@pytest.mark.parametrize("method, extra", [("prune-at-init", ["--set", "method.pruning.criterion=snip"]),
                                           ("feddst", [])])
def test_fixed_and_dynamic_mask_baselines_run(tmp_path, method, extra):
    run = simulate_here(tmp_path, *PRUNING_SMALL, "--method", method, "--budgets", "0.3:1", *extra,
                   "--name", method)
    summary = check_run_folder(run, clients=8, rounds=4)
    assert summary["pruning"]["adjustments"] == (2 if method == "feddst" else 0)
    densities = {round(float(r["density"]), 6) for r in client_rows(run) if r["density"]}
    assert densities and max(densities) <= 0.3 + 1e-9



SLOW = ("clock.profiles={slow: {flops_per_second: 1.0e5, download_bytes_per_second: 1.0e9, "
        "upload_bytes_per_second: 1.0e9}}")


def clocked_run(tmp_path):
    run = simulate_here(tmp_path, "--clients", "8", "--rounds", "3", "--fraction", "0.5",
                   "--method", "magnitude", "--budgets", "0.3:0.5:slow,1.0:0.5:laptop",
                   "--set", SLOW, "--set", "clock.deadline=10", "--set", "eval.every=1",
                   "--name", "clock")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return run, records


def test_deadline_drops_slow_devices_and_never_aggregates_them(tmp_path):
    """Slow devices always miss the deadline: a round with one lasts exactly the deadline and
    they are never aggregated; rounds without one last their slowest client."""
    run, records = clocked_run(tmp_path / "a")
    summary = json.loads((run / "summary.json").read_text())
    clock = summary["clock"]
    assert clock["clients_late"] > 0 and clock["deadline"] == 10
    for r in records:
        assert r["clients_accepted"] + r["clients_late"] == r["clients_sampled"]
        # a slow client always misses the deadline, so a round with one waits exactly 10 s
        if r["clients_late"]:
            assert r["sim_round_seconds"] == 10.0
        else:
            assert 0 < r["sim_round_seconds"] < 10.0
    assert clock["total_seconds"] == pytest.approx(sum(r["sim_round_seconds"] for r in records))
    assert clock["time_to_target"] is not None
    assert (run / "plots" / "accuracy_vs_time.png").is_file()
    # one seed, one clock: the simulated times follow from the measured costs and the profiles
    # alone (seeded sampling and costs are checked run against run by the resume tests)
    by_client = {}
    with (run / "clients.csv").open() as handle:
        for row in csv.DictReader(handle):
            by_client[int(row["partition_id"])] = row
    slow_clients = [p for p, row in by_client.items() if float(row["budget_density"]) == 0.3]
    assert all(int(by_client[p]["rounds_trained"]) == 0 for p in slow_clients)


def test_example_plugins_by_path_with_sparse_budgets(tmp_path):
    """The example strategy and the example method, each one file named by path."""
    run = simulate_here(tmp_path, *SMALL,
                        "--strategy", f"{EXAMPLE / 'norm_clipped_fedavg.py'}:NormClippedFedAvg",
                        "--set", "strategy.options.max_norm=0.5",
                        "--method", f"{METHOD_EXAMPLE / 'federated_dropout.py'}:FederatedDropout",
                        "--set", "method.federated-dropout.redraw_every=1",
                        "--budgets", "0.3:0.5,0.5:0.5")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"].endswith("federated_dropout.py:FederatedDropout")
    assert summary["cost"]["density"] < 1.0 and summary["budget"]["violations"] == 0
    assert 0.3 < summary["federated_dropout"]["coverage"] < 1.0


