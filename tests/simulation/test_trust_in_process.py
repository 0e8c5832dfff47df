"""What the server does with clients and inputs it cannot trust, through the real CLI, server loop
and ClientApp in one process: lies are rejected, runs without a result say so (non-zero exit),
a resume refuses an edited experiment."""

import json

import yaml

from fedsparse.clients.dense import Dense
from fedsparse.method import ClientTask
from tests.simulation.inprocess import invoke_here, simulate_here

SMALL = ["--clients", "4", "--rounds", "2", "--fraction", "1", "--set", "data.synthetic.iid=true",
         "--set", "eval.every=1", "--method", "dense", "--strategy", "fedavg", "--budgets", "1.0:1"]


class BoastfulEvaluation(Dense):
    """Trains honestly, reports an impossible accuracy at evaluation."""

    name = "boastful"

    def evaluate(self, task: ClientTask) -> dict[str, float]:
        metrics = super().evaluate(task)
        return {**metrics, "accuracy": 3.0} if task.partition_id % 2 else metrics


def test_impossible_evaluations_are_rejected_and_counted(tmp_path):
    run = simulate_here(tmp_path, *SMALL, "--method",
                        "tests.simulation.test_trust_in_process:BoastfulEvaluation")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["eval_rejected"] == 2 and r["clients_evaluated"] == 2 for r in records)
    summary = json.loads((run / "summary.json").read_text())
    assert 0 <= summary["accuracy"]["mean"] <= 1 and summary["accuracy"]["bottom_decile"] <= 1


def test_a_run_where_no_round_aggregates_has_no_result(tmp_path):
    result = invoke_here("simulate", "--out", str(tmp_path), *SMALL, "--inject-failures", "1.0",
                         "--set", "simulation.failure_kinds=[crash]")
    assert result.exit_code == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "no round aggregated an update (8 clients failed" in lines[0]
    (run,) = tmp_path.iterdir()
    assert not (run / "summary.json").exists()  # nothing is reported as a result
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_refuses_an_edited_experiment(tmp_path):
    run = simulate_here(tmp_path, *SMALL, "--set", "simulation.checkpoint_every=1")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["seed"] = 7
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    before = (run / "partitions.npz").read_bytes()
    result = invoke_here("simulate", "--resume", str(run))
    assert result.exit_code == 2 and "differs from the one its checkpoint was written with at 'seed'" \
        in result.stderr
    assert (run / "partitions.npz").read_bytes() == before  # refused before touching the folder
