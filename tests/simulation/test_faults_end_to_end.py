"""Injected crashes and hangs: rounds complete with the others, failures are counted exactly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsparse.faults import injected_fault

pytestmark = pytest.mark.e2e


def test_thirty_percent_failures_finish_with_exact_counts(tmp_path):
    clients, rounds, seed, rate = 6, 2, 5, 0.3  # seed 5: one crash and one hang
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "fedsparse.cli", "simulate", "--out", str(tmp_path),
         "--clients", str(clients), "--rounds", str(rounds), "--fraction", "1", "--seed", str(seed),
         "--method", "dense", "--strategy", "fedavg", "--budgets", "1.0:1",
         "--inject-failures", str(rate), "--set", "simulation.round_timeout=6",
         "--set", "simulation.hang_seconds=9", "--set", "eval.every=2"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.monotonic() - started < 240  # no hang: each round waits at most its timeout
    (run,) = tmp_path.iterdir()
    expected = {r: sum(injected_fault(seed, r, p, rate) is not None for p in range(clients))
                for r in range(1, rounds + 1)}
    assert sum(expected.values()) > 0  # the seed really injects something
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["round"]: r["clients_failed"] for r in records} == expected
    assert all(r["clients_accepted"] == clients - expected[r["round"]] for r in records)
    assert all(r["aggregated"] for r in records if r["clients_accepted"] > 0)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["failures"]["clients_failed"] == sum(expected.values())
    assert summary["accuracy"]["mean"] > 0


def test_sigint_stops_a_ray_run_within_seconds_and_leaves_it_resumable(tmp_path):
    from fedsparse.checkpoint import load_checkpoint
    from tests.simulation.conftest import descendants

    proc = subprocess.Popen(
        [sys.executable, "-m", "fedsparse.cli", "simulate", "--out", str(tmp_path), "--clients", "4",
         "--rounds", "60", "--fraction", "1", "--method", "dense", "--strategy", "fedavg",
         "--budgets", "1.0:1", "--set", "eval.every=50"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        logs = list(tmp_path.glob("*/metrics.jsonl"))
        if logs and len(logs[0].read_text().splitlines()) >= 2:
            break
        time.sleep(0.1)
    tree = descendants(proc.pid)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 10, "the run did not stop within 10 s"
    assert proc.returncode == 130, stderr[-3000:]
    assert "interrupted: stopped by SIGINT after round" in stderr
    assert "Traceback" not in stderr and "Stack trace" not in stderr
    (run,) = tmp_path.iterdir()
    done = len((run / "metrics.jsonl").read_text().splitlines())
    assert load_checkpoint(run).server_round == done and not (run / "summary.json").exists()
    time.sleep(1)
    alive = [pid for pid in tree if os.path.exists(f"/proc/{pid}")
             and "fsray-" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]
    assert not alive, "Ray processes outlived the run"
