"""A run killed with SIGKILL after round k resumes from its checkpoint and ends like an
uninterrupted run with the same seed (the pair of runs comes from ``conftest.py``)."""

import json
from pathlib import Path

import pytest

from tests.simulation.conftest import cli
from tests.test_cli import invoke

pytestmark = pytest.mark.e2e


def comparable(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    for key in ("wall_seconds", "run_dir"):
        summary.pop(key)
    return summary


def rounds_of(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("runs", ["pfedgate_runs", "fedtiny_runs"])
def test_killed_run_resumes_to_the_same_summary(runs, request):
    """The killed run's first rounds already equal the whole run's (same seed, same metrics);
    resumed, it ends exactly like the whole run."""
    pair = request.getfixturevalue(runs)
    killed, reference = pair.killed, pair.whole
    assert not (killed / "summary.json").exists()
    assert len((killed / "metrics.jsonl").read_text().splitlines()) >= 2  # survived the kill
    resumed = cli("--resume", str(killed))
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-3000:]
    assert comparable(killed) == comparable(reference)
    assert rounds_of(killed) == rounds_of(reference)
    assert (killed / "clients.csv").read_text() == (reference / "clients.csv").read_text()


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "config.yaml").write_text("rounds: 2\n")
    result = invoke("simulate", "--resume", str(tmp_path))
    assert result.returncode == 2 and "no checkpoint.npz" in result.stderr
