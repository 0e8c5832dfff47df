"""The simulated device clock end to end: a deadline drops slow devices, one seed one clock."""

import csv
import json

import pytest

from tests.simulation.test_end_to_end import simulate

pytestmark = pytest.mark.e2e

SLOW = ("clock.profiles={slow: {flops_per_second: 1.0e5, download_bytes_per_second: 1.0e9, "
        "upload_bytes_per_second: 1.0e9}}")


def clocked_run(tmp_path):
    run = simulate(tmp_path, "--clients", "8", "--rounds", "3", "--fraction", "0.5",
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
