"""Strategies and methods from outside the package, and Flower's own strategies, through the real
CLI, Flower and Ray: a plug-in needs one file (by path) or one installed package (by name).
Flower's FedProx by name runs in ``test_end_to_end``'s image test."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clients.test_registry import EXAMPLE as METHOD_EXAMPLE
from tests.clients.test_registry import write_dist_info as write_method_dist_info
from tests.strategies.test_registry import EXAMPLE, write_dist_info

pytestmark = pytest.mark.e2e
SMALL = ["--clients", "4", "--rounds", "2", "--fraction", "1", "--set", "data.synthetic.iid=true",
         "--set", "eval.every=2"]


def simulate(out: Path, *args: str, env: dict | None = None) -> dict:
    result = subprocess.run([sys.executable, "-m", "fedsparse.cli", "simulate", "--out", str(out),
                             *SMALL, *args], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = out.iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["failures"] == {"clients_failed": 0, "updates_rejected": 0, "aggregates_refused": 0}
    assert 0.0 < summary["accuracy"]["global"] <= 1.0
    return summary


def test_example_plugins_by_entry_point(tmp_path):
    """Both examples installed (their entry points on the path) and named like built-ins."""
    site = tmp_path / "site"
    write_dist_info(site)
    write_method_dist_info(site)
    path = os.pathsep.join([str(site), str(EXAMPLE), str(METHOD_EXAMPLE),
                            os.environ.get("PYTHONPATH", "")])
    summary = simulate(tmp_path / "runs", "--strategy", "norm-clipped", "--method",
                       "federated-dropout", "--budgets", "0.5:1", env={"PYTHONPATH": path})
    assert summary["strategy"] == "norm-clipped" and summary["method"] == "federated-dropout"
    assert summary["sparse_updates"] and summary["cost"]["train_flops_ratio"] < 0.8
