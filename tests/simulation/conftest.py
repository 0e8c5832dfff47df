"""Runs several end-to-end tests share: each starts one whole run and, at the same time, a run
that is stopped after two rounds, with SIGINT (pFedGate: a clean stop) or SIGKILL (FedTiny: a
crash); the resume tests continue it. Sharing them keeps the suite's Ray start-ups few; running
the two side by side overlaps their start-up waits."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

#: pFedGate with two tiers, novel clients, momentum and a server optimizer (FedAdam), so a resume
#: must restore the optimizer's moments and the clients' gates
PFEDGATE = ["--clients", "6", "--rounds", "4", "--fraction", "0.5", "--budgets", "0.1:0.5,0.5:0.5",
            "--set", "method.pfedgate.novel_share=0.34", "--set", "train.momentum=0.9",
            "--strategy", "masked-fedadam", "--set", "strategy.options.server_lr=0.05",
            "--set", "eval.every=2", "--set", "eval.fraction=1", "--set", "simulation.checkpoint_every=1",
            # the pinned figures' options (the defaults became grouped / kept)
            "--set", "method.pfedgate.knapsack=joint", "--set", "method.pfedgate.block_fit=0",
            "--set", "method.pfedgate.ste=full", "--set", "method.pfedgate.blocks=weights"]
#: FedTiny with nested tiers; its mask changes in rounds 1 and 2 (T_end = 3 of 4), so a resume
#: must restore the server's masks and adjustment counter. Its whole run is also the suite's
#: plain Ray run (``test_end_to_end.py``)
FEDTINY = ["--clients", "8", "--rounds", "4", "--fraction", "0.5", "--model", "mlp",
           "--set", "model.hidden=[16,128,64]", "--strategy", "masked-fedavg",
           "--set", "method.pruning.adjust_every=1", "--set", "method.pruning.warmup_epochs=2",
           "--method", "fedtiny", "--budgets", "0.2:0.5,0.4:0.5",
           "--set", "simulation.checkpoint_every=1", "--set", "eval.every=2", "--set", "eval.fraction=1",
           # virtual clients: 8 served by 2 Flower nodes, across a crash and a resume
           "--set", "simulation.nodes=2"]


@dataclass(frozen=True)
class Stopped:
    """How the stopped run ended."""

    signum: int
    returncode: int
    stderr: str
    #: seconds from the signal to the process's end
    seconds: float
    #: Ray processes of the stopped run still alive a second after it ended
    leftovers: list[int]


@dataclass(frozen=True)
class RunPair:
    args: list[str]
    #: the uninterrupted run's folder
    whole: Path
    #: the folder of the run stopped after two rounds (resumable)
    killed: Path
    stopped: Stopped


def cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedsparse.cli", "simulate", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Ray's GCS, raylet and workers of a driver)."""
    out = subprocess.run(["ps", "-eo", "pid,ppid"], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines()[1:]:
        child, parent = (int(v) for v in line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def command_line(pid: int) -> str:
    """A live process's command line ("" once it has ended)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a driver and the Ray processes it started (they would outlive it), and remove
    their Ray session folder, which a killed driver cannot (it would stay in /tmp)."""
    tree = descendants(proc.pid)
    folders = {folder for pid in tree for folder in re.findall(r"/tmp/fsray-\w+", command_line(pid))}
    proc.send_signal(signal.SIGKILL)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def run_pair(root: Path, args: list[str], signum: int) -> RunPair:
    whole = cli("--out", str(root / "whole"), *args)
    victim = cli("--out", str(root / "killed"), *args)
    deadline = time.monotonic() + 240
    metrics = None
    while time.monotonic() < deadline and victim.poll() is None:
        runs = list((root / "killed").glob("*/metrics.jsonl"))
        if runs and len(runs[0].read_text().splitlines()) >= 2:
            metrics = runs[0]
            break
        time.sleep(0.2)
    tree = descendants(victim.pid)
    sent = time.monotonic()
    if signum == signal.SIGKILL:
        kill_tree(victim)
        stderr = ""
    else:
        victim.send_signal(signum)
        try:
            _, stderr = victim.communicate(timeout=60)
        finally:
            if victim.poll() is None:
                kill_tree(victim)
    seconds = time.monotonic() - sent
    time.sleep(1)
    leftovers = [pid for pid in tree if "fsray-" in command_line(pid)]
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert metrics is not None, f"the run never finished two rounds: {victim.stderr.read()[-3000:]}"
    assert whole.wait(timeout=300) == 0, whole.stderr.read()[-3000:]
    (reference,) = (root / "whole").iterdir()
    return RunPair(args, reference, metrics.parent,
                   Stopped(signum, victim.returncode, stderr, seconds, leftovers))


@pytest.fixture(scope="session")
def pfedgate_runs(tmp_path_factory: pytest.TempPathFactory) -> RunPair:
    return run_pair(tmp_path_factory.mktemp("pfedgate"), PFEDGATE, signal.SIGINT)


@pytest.fixture(scope="session")
def fedtiny_runs(tmp_path_factory: pytest.TempPathFactory) -> RunPair:
    return run_pair(tmp_path_factory.mktemp("fedtiny"), FEDTINY, signal.SIGKILL)
