"""A run killed with SIGKILL after round k resumes from its checkpoint and ends like an
uninterrupted run with the same seed."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ARGS = ["--clients", "5", "--rounds", "4", "--fraction", "0.6", "--budgets", "0.3:0.6,1.0:0.4",
        "--set", "eval.every=2", "--set", "simulation.checkpoint_every=1",
        "--strategy", "masked-fedadam", "--set", "strategy.options.server_lr=0.05"]
#: FedTiny's mask changes every round (adjust_every=1): a resume must restore the server's masks
FEDTINY = ["--clients", "5", "--rounds", "4", "--fraction", "0.6", "--budgets", "0.3:0.6,0.6:0.4",
           "--method", "fedtiny", "--strategy", "masked-fedavg", "--model", "mlp",
           "--set", "model.hidden=[16,64]", "--set", "method.pruning.adjust_every=1",
           "--set", "method.pruning.adjust_until=4", "--set", "eval.every=2",
           "--set", "simulation.checkpoint_every=1"]


def cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedsparse.cli", "simulate", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def kill_ray_left_by(before: set[int]) -> None:
    """SIGKILL of the driver leaves its Ray processes behind: stop them, by PID."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    for line in out.splitlines()[1:]:
        pid, _, args = line.strip().partition(" ")
        if "fsray-" in args and int(pid) not in before:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def fsray_pids() -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return {int(line.split()[0]) for line in out.splitlines()[1:] if "fsray-" in line}


def comparable(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    for key in ("wall_seconds", "run_dir"):
        summary.pop(key)
    return summary


def rounds_of(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("args", [ARGS, FEDTINY], ids=["pfedgate-fedadam", "fedtiny"])
def test_killed_run_resumes_to_the_same_summary(tmp_path, args):
    whole = cli("--out", str(tmp_path / "whole"), *args)
    assert whole.wait(timeout=300) == 0, whole.stderr.read()[-3000:]
    (reference,) = (tmp_path / "whole").iterdir()

    before = fsray_pids()
    victim = cli("--out", str(tmp_path / "killed"), *args)
    deadline = time.monotonic() + 240
    metrics = None
    while time.monotonic() < deadline:
        runs = list((tmp_path / "killed").glob("*/metrics.jsonl"))
        if runs and len(runs[0].read_text().splitlines()) >= 2:
            metrics = runs[0]
            break
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    kill_ray_left_by(before)
    assert metrics is not None, "the run never finished two rounds"
    killed = metrics.parent
    assert not (killed / "summary.json").exists()
    assert len(metrics.read_text().splitlines()) >= 2  # finished rounds survive the kill

    resumed = cli("--resume", str(killed))
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-3000:]
    assert comparable(killed) == comparable(reference)
    assert rounds_of(killed) == rounds_of(reference)
    assert (killed / "clients.csv").read_text() == (reference / "clients.csv").read_text()


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "config.yaml").write_text("rounds: 2\n")
    result = subprocess.run([sys.executable, "-m", "fedsparse.cli", "simulate", "--resume",
                             str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no checkpoint.npz" in result.stderr
