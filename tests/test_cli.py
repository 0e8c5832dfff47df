"""The console script's error contract: one line naming the problem, exit code 2."""

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fedsparse.cli import app
from tests.fresh_interpreter import run_fresh


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """The real console script in its own process."""
    return subprocess.run([sys.executable, "-m", "fedsparse.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def invoke(*args: str) -> subprocess.CompletedProcess:
    """The same CLI in this process (no interpreter start-up), with the same result fields."""
    result = CliRunner().invoke(app, list(args), prog_name="fedsparse")
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "roundz=3"], "unknown key 'roundz'"),
        (["--fraction", "1.5"], "'fraction'"),
        (["--dataset", "mnist", "--data-dir", "/nonexistent/mnist"], "does not exist"),
        (["--model", "lenet"], "needs image inputs"),
        (["--config", "/nonexistent.yaml"], "not found"),
        (["--set", "strategy.name=nope"], "unknown strategy 'nope'"),
        (["--method", "dense", "--budgets", "0.1:0.5,1.0:0.5"], "density 1 (--budgets 1.0:1)"),
        (["--budgets", "0.1:0.7,1.0:0.2"], "--budgets"),
        (["--budgets", "0:1"], "--budgets"),
        (["--clients", "10", "--set", "simulation.min_clients=5"], "exceeds the 1 clients sampled"),
        (["--dataset", "fashion-mnist", "--data-dir", "/tmp"], "lacks train-images-idx3-ubyte"),
        (["--method", "magnitude", "--strategy", "krum", "--budgets", "0.3:1"],
         "cannot aggregate the sparse updates"),
        (["--method", "magnitude", "--strategy", "masked-fedavg", "--budgets", "0.001:1"],
         "biases and norm layers alone"),
        (["--strategy", "no.such.module:Strategy"], "importing no.such.module failed"),
        (["--strategy", "json:dumps"], "not a subclass"),
        (["--strategy", "fedprox", "--method", "magnitude", "--budgets", "0.5:1"],
         "cannot aggregate the sparse updates"),
        (["--strategy", "masked-fedadam", "--set", "strategy.options.lr=0.1"],
         "rejected strategy.options ['lr']"),
        (["--strategy", "masked-trimmed-mean", "--set", "strategy.options.trim=0.7"],
         "trim must be in"),
        (["--seed", "-1"], "'seed'"),
        (["--name", "../../x"], "'output.name' value error, must be a plain folder name"),
        (["--name", "a/b"], "must be a plain folder name"),
        (["--clients", "1000000000"], "would need about 286 TiB of memory"),
        (["--lr", "inf"], "'train.lr'"),
        (["--set", "train.momentum=.nan"], "'train.momentum'"),
        (["--out", "/dev/null"], "is a file, not a folder"),
        (["--out", "/proc/fedsparse-runs"], "cannot be created"),
        (["--partition", "shards", "--set", "partition.classes_per_client=11"], "exceeds the 10 classes"),
        (["--gpus-per-client", "0.5"], "sees no CUDA device"),
        (["--gpus-per-client", "-1"], "'simulation.gpus_per_client'"),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path, args, needle, monkeypatch):
    from fedsparse.simulation import runner

    # bad input is refused before Ray (or any process) starts
    monkeypatch.setattr(runner, "start_ray", lambda *_: pytest.fail("Ray started for bad input"))
    monkeypatch.setattr(runner, "visible_gpus", lambda: 0)  # as on CI, also where a GPU exists
    result = invoke("simulate", "--out", str(tmp_path), *args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert lines == errors, result.stderr  # the one line alone: no progress bar, no warning
    assert "Traceback" not in result.stderr


def test_a_config_of_random_bytes_is_one_line(tmp_path):
    config = tmp_path / "noise.yaml"
    config.write_bytes(bytes(range(256)) * 4)
    result = invoke("simulate", "--config", str(config), "--out", str(tmp_path))
    assert result.returncode == 2 and "is not text" in result.stderr


def test_bad_flag_type_is_a_usage_error(tmp_path):
    result = run_cli("simulate", "--clients", "many")
    assert result.returncode == 2 and "many" in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("simulate", "--out", str(tmp_path), "--set", "roundz=3", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_version_names_the_stack():
    result = invoke("--version")
    assert result.returncode == 0 and result.stdout.startswith("fedsparse 0.")
    assert "flwr 1.42" in result.stdout


def test_help_lists_the_flags():
    result = run_cli("simulate", "--help")
    assert result.returncode == 0
    for flag in ("--clients", "--rounds", "--fraction", "--dataset", "--data-dir", "--partition",
                 "--alpha", "--model", "--local-epochs", "--batch-size", "--lr", "--seed", "--out",
                 "--name", "--set", "--config", "--budgets", "--method", "--strategy"):
        assert flag in result.stdout


def test_results_table_shows_the_clock_when_it_ran():
    from rich.console import Console

    from fedsparse.cli import results_table as _results_table

    summary = {"method": "dense", "strategy": "fedavg", "dataset": "synthetic", "model": "mlp",
               "num_clients": 4, "clients_per_round": 2, "rounds": 2, "wall_seconds": 1.0,
               "run_dir": "r", "accuracy": {"mean": 0.5, "bottom_decile": 0.1, "global": 0.4},
               "failures": {"clients_failed": 0, "updates_rejected": 0}, "cost": {},
               "clock": {"total_seconds": 12.5, "target_accuracy": 0.7, "time_to_target": None,
                         "clients_late": 3, "clients_surplus": 1}}
    console = Console(record=True, width=120)
    console.print(_results_table(summary))
    text = console.export_text()
    assert "simulated time total (s)" in text and "12.5" in text
    assert "not reached" in text and "3 / 1" in text
    console = Console(record=True, width=120)
    console.print(_results_table({**summary, "clock": None}))
    assert "simulated" not in console.export_text()


def test_the_results_table_ends_with_the_reference_to_compare_with():
    from fedsparse.clients.registry import resolve
    from fedsparse.report import results_text

    summary = {"method": "pfedgate", "strategy": "zero-delta-avg", "dataset": "synthetic",
               "model": "mlp", "num_clients": 4, "clients_per_round": 2, "rounds": 2,
               "wall_seconds": 1.0, "accuracy": {"mean": 0.5, "bottom_decile": 0.1, "global": 0.4},
               "failures": {"clients_failed": 0, "updates_rejected": 0}, "cost": {},
               "compare_with": resolve("pfedgate").compare_with}
    text = " ".join(results_text(summary, width=200).split())
    assert text.rstrip().endswith("--method fedavg-ft --strategy fedavg --budgets 1.0:1, the config "
                                  "otherwise the same")
    assert resolve("dense").compare_with is None  # a reference has none
    assert "compare with" not in results_text({**summary, "compare_with": None})


def test_the_console_script_turns_numpys_huge_pages_off_unless_told_otherwise():
    """Set before numpy's first import (which reads it once); a user's own setting wins."""
    script = ("import sys, fedsparse.cli as cli\n"
              "sys.argv = ['fedsparse', '--version']\n"
              "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
              "import numpy\n"
              "print(numpy._core.multiarray._get_madvise_hugepage())\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    assert run_fresh(script, env).stdout.strip().endswith("False")
    assert run_fresh(script, {**env, "NUMPY_MADVISE_HUGEPAGE": "1"}).stdout.strip().endswith("True")
