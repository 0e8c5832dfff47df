"""Injected crashes and hangs: rounds complete with the others, failures are counted exactly."""

import json
import subprocess
import sys
import time

import pytest

from fedsparse.faults import injected_fault

pytestmark = pytest.mark.e2e


def test_thirty_percent_failures_finish_with_exact_counts(tmp_path):
    # seed 5: one crash in round 1, one hang in round 2. The round timeout stays at its 600 s:
    # the hung client is given up as a straggler (straggler_floor 3 s, slack 3 x the slowest
    # answer), well before its 30 s hang ends, and the run finishes in a fraction of a timeout
    clients, rounds, seed, rate = 6, 2, 5, 0.3
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "fedsparse.cli", "simulate", "--out", str(tmp_path),
         "--clients", str(clients), "--rounds", str(rounds), "--fraction", "1", "--seed", str(seed),
         "--method", "dense", "--strategy", "fedavg", "--budgets", "1.0:1",
         "--inject-failures", str(rate), "--set", "simulation.straggler_floor=3",
         "--set", "simulation.hang_seconds=30", "--set", "eval.every=2"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.monotonic() - started < 240  # the hang was not waited out for 600 s
    (run,) = tmp_path.iterdir()
    expected = {r: sum(injected_fault(seed, r, p, rate) is not None for p in range(clients))
                for r in range(1, rounds + 1)}
    assert sum(expected.values()) > 0  # the seed really injects something
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    failed = {r["round"]: r["clients_failed"] for r in records}
    warnings = [line for line in result.stderr.splitlines() if " failed: " in line]
    assert failed == expected, warnings
    assert all(r["clients_accepted"] == clients - expected[r["round"]] for r in records)
    assert all(r["aggregated"] for r in records if r["clients_accepted"] > 0)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["failures"]["clients_failed"] == sum(expected.values())
    assert summary["accuracy"]["mean"] > 0


def test_sigint_stops_a_ray_run_within_seconds_and_leaves_it_resumable(pfedgate_runs):
    """The pFedGate pair's second run got SIGINT after two rounds (``conftest.py``); the resume
    test continues it to the whole run's end."""
    from fedsparse.checkpoint import load_checkpoint

    stopped = pfedgate_runs.stopped
    assert stopped.seconds < 10, "the run did not stop within 10 s"
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "interrupted: stopped by SIGINT after round" in stopped.stderr
    assert "Traceback" not in stopped.stderr and "Stack trace" not in stopped.stderr
    run = pfedgate_runs.killed
    done = len((run / "metrics.jsonl").read_text().splitlines())
    assert load_checkpoint(run).server_round == done and not (run / "summary.json").exists()
    assert not stopped.leftovers, "Ray processes outlived the run"
