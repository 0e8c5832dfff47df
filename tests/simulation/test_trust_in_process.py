"""What the server does with clients and inputs it cannot trust, through the real CLI, server loop
and ClientApp in one process: lies are rejected, runs without a result say so (non-zero exit),
a resume refuses an edited experiment."""

import csv
import json
import os
import signal
import threading
import time

import yaml

from fedsparse.clients.dense import Dense
from fedsparse.method import ClientTask
from tests.simulation.inprocess import invoke_here, simulate_here

SMALL = ["--clients", "4", "--rounds", "2", "--fraction", "1", "--set", "data.synthetic.iid=true",
         "--set", "eval.every=1", "--set", "eval.fraction=1", "--method", "dense", "--strategy", "fedavg",
         "--budgets", "1.0:1"]


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


class FlatteringValidation(Dense):
    """Reports a validation accuracy that steers selection: no share of its validation samples
    (odd clients), or a validation count that is not the partition's (client 2)."""

    name = "flattering"

    def evaluate(self, task: ClientTask) -> dict[str, float]:
        metrics = super().evaluate(task)
        if task.partition_id % 2:
            return {**metrics, "val-accuracy": 0.987654321}
        if task.partition_id == 2:
            return {**metrics, "val-num-examples": metrics["val-num-examples"] + 1}
        return metrics


def test_impossible_validation_scores_are_rejected(tmp_path):
    run = simulate_here(tmp_path, *SMALL, "--method",
                        "tests.simulation.test_trust_in_process:FlatteringValidation")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["eval_rejected"] == 3 and r["clients_evaluated"] == 1 for r in records)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["accuracy"]["val_mean"] != 0.987654321
    rows = (run / "clients.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[0].startswith("partition_id,") and "val_accuracy" in rows[0]


class InRangeLies(Dense):
    """Lies a range check cannot see: an accuracy no count of its test samples gives (client 0),
    metrics named like the server's own fields (clients 1 and 2); client 3 is honest."""

    name = "in-range-lies"

    def evaluate(self, task: ClientTask) -> dict[str, float]:
        metrics = super().evaluate(task)
        lie = {0: {"accuracy": 0.987654321}, 1: {"num_test": 1e6, "novel": 1.0},
               2: {"partition_id": 2.5}}.get(task.partition_id, {})
        return {**metrics, **lie}


def test_in_range_lies_and_server_field_names_are_rejected(tmp_path):
    run = simulate_here(tmp_path, *SMALL, "--method",
                        "tests.simulation.test_trust_in_process:InRangeLies")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["eval_rejected"] == 3 and r["clients_evaluated"] == 1 for r in records)
    rows = list(csv.DictReader((run / "clients.csv").open()))
    assert [row["partition_id"] for row in rows] == ["3"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["accuracy"]["mean"] == float(rows[0]["accuracy"])
    assert summary["accuracy_sources"] == {"mean": "client-reported", "bottom_decile": "client-reported",
                                           "val_mean": "client-reported", "global": "server-computed"}
    assert summary["budget"]["checked_on_client_reported"] == []  # dense: all server-counted


def test_rounds_between_evaluate_a_seeded_sample_and_the_last_evaluates_everyone(tmp_path):
    """``eval.fraction``: a cheap curve every round, the reported figures from every client."""
    runs = [simulate_here(tmp_path / name, *SMALL, "--rounds", "3", "--set", "eval.fraction=0.5")
            for name in ("a", "b")]
    records = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
               for run in runs]
    assert [r["clients_evaluated"] for r in records[0]] == [2, 2, 4]
    assert all("loss_mean" in r for r in records[0])
    assert records[0] == [{**r, "seconds": a["seconds"]} for r, a in zip(records[1], records[0], strict=True)]
    assert len((runs[0] / "clients.csv").read_text().splitlines()) == 1 + 4


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


def _signal_after_rounds(run_root, rounds: int, signum: int) -> threading.Thread:
    """Send ``signum`` to this process once a run under ``run_root`` has logged ``rounds`` rounds."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            logs = list(run_root.glob("*/metrics.jsonl"))
            if logs and len(logs[0].read_text().splitlines()) >= rounds:
                os.kill(os.getpid(), signum)
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _whole_and_stopped(tmp_path, args: list[str]):
    """The same run twice: whole, and stopped by SIGTERM after two rounds (its CLI result)."""
    whole = simulate_here(tmp_path / "whole", *args)
    watcher = _signal_after_rounds(tmp_path / "stopped", 2, signal.SIGTERM)
    result = invoke_here("simulate", "--out", str(tmp_path / "stopped"), *args)
    watcher.join()
    assert result.exit_code == 143, result.stderr
    (run,) = (tmp_path / "stopped").iterdir()
    return whole, run, result


def _rounds_without_timing(folder) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_signal_stops_after_the_round_and_the_run_resumes_to_the_same_end(tmp_path):
    args = [*SMALL, "--rounds", "12", "--set", "eval.every=4", "--set",
            "simulation.checkpoint_every=5"]
    whole, run, result = _whole_and_stopped(tmp_path, args)
    lines = [line for line in result.stderr.splitlines() if line.startswith("interrupted:")]
    assert len(lines) == 1 and "stopped by SIGTERM after round" in lines[0] and "--resume" in lines[0]
    done = len((run / "metrics.jsonl").read_text().splitlines())
    assert 2 <= done < 12 and not (run / "summary.json").exists()
    from fedsparse.checkpoint import load_checkpoint

    assert load_checkpoint(run).server_round == done  # resumable from the last finished round
    resumed = invoke_here("simulate", "--resume", str(run))
    assert resumed.exit_code == 0, resumed.stderr
    assert _rounds_without_timing(run) == _rounds_without_timing(whole)


def test_liars_are_rejected_and_byzantine_updates_are_survived_by_the_median(tmp_path):
    from fedsparse.faults import injected_fault

    args = [*SMALL, "--clients", "10", "--rounds", "3", "--seed", "1"]
    attack = ["--inject-failures", "0.2"]  # seed 1: 2, 3 and 2 of the 10 clients per round
    liar = simulate_here(tmp_path / "liar", *args, *attack, "--set", "simulation.failure_kinds=[liar]")
    records = [json.loads(line) for line in (liar / "metrics.jsonl").read_text().splitlines()]
    expected = [sum(injected_fault(1, r, p, 0.2, ["liar"]) is not None for p in range(10))
                for r in (1, 2, 3)]
    assert expected == [2, 3, 2] and [r["updates_rejected"] for r in records] == expected

    def accuracy(name: str, strategy: str, *extra: str) -> float:
        run = simulate_here(tmp_path / name, *args, "--strategy", strategy, *extra)
        summary = json.loads((run / "summary.json").read_text())
        assert summary["failures"]["updates_rejected"] == 0  # well-formed: only robust rules help
        return summary["accuracy"]["global"]

    byzantine = [*attack, "--set", "simulation.failure_kinds=[byzantine]"]
    fedavg = accuracy("fedavg", "fedavg", *byzantine)
    median = accuracy("median", "masked-median", *byzantine)
    clean = accuracy("clean", "masked-median")
    assert median > 0.8 * clean and fedavg < 0.5 * median
    # a norm bound in front of plain averaging: every attacker's tenfold update is clipped
    bounded = simulate_here(tmp_path / "bounded", *args, "--strategy", "fedavg", *byzantine,
                            "--set", "strategy.max_update_norm=1.0")
    records = [json.loads(line) for line in (bounded / "metrics.jsonl").read_text().splitlines()]
    attackers = [sum(injected_fault(1, r, p, 0.2, ["byzantine"]) is not None for p in range(10))
                 for r in (1, 2, 3)]
    assert all(rec["updates_clipped"] >= n for rec, n in zip(records, attackers, strict=True))
    bounded_acc = json.loads((bounded / "summary.json").read_text())["accuracy"]["global"]
    assert bounded_acc > 2 * fedavg
    unbounded = next((tmp_path / "fedavg").iterdir()) / "metrics.jsonl"
    assert "updates_clipped" not in json.loads(unbounded.read_text().splitlines()[0])


def test_a_partial_last_round_line_is_left_out_and_the_run_resumes(tmp_path):
    """A kill while a round's line was being written: report notes it, resume continues."""
    args = [*SMALL, "--rounds", "6", "--set", "eval.every=3", "--set",
            "simulation.checkpoint_every=1"]
    whole, run, _ = _whole_and_stopped(tmp_path, args)
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"round": 99, "train_loss": 0.')  # the kill came mid-line
    report = invoke_here("report", str(run))
    assert report.exit_code == 0, report.stderr
    assert "is incomplete" in report.stderr and "finished rounds read" in report.stderr
    resumed = invoke_here("simulate", "--resume", str(run))
    assert resumed.exit_code == 0, resumed.stderr
    assert _rounds_without_timing(run) == _rounds_without_timing(whole)


def test_resume_refuses_a_changed_budget_file_or_data_set(tmp_path):
    from tests.simulation.test_methods_in_process import write_learnable_idx

    budgets = tmp_path / "budgets.csv"
    budgets.write_text("client,density\n" + "".join(f"{c},1.0\n" for c in range(4)))
    run = simulate_here(tmp_path / "b", *SMALL, "--set", f"budgets.file={budgets}",
                        "--set", "simulation.checkpoint_every=1")
    budgets.write_text("client,density,upload_bytes\n" + "".join(f"{c},1.0,1e9\n" for c in range(4)))
    result = invoke_here("simulate", "--resume", str(run))
    assert result.exit_code == 2 and "the run's budget file changed since its checkpoint" \
        in result.stderr, result.stderr

    data = write_learnable_idx(tmp_path / "mnist", 200, 60)
    run = simulate_here(tmp_path / "d", *SMALL, "--dataset", "mnist", "--data-dir", str(data),
                        "--partition", "iid", "--set", "simulation.checkpoint_every=1")
    before = (run / "partitions.npz").read_bytes()
    images = data / "train-images-idx3-ubyte.gz"
    images.write_bytes(_shifted_idx(images))  # same sizes and labels, other pixels
    result = invoke_here("simulate", "--resume", str(run))
    assert result.exit_code == 2 and "the run's data set's files changed" in result.stderr, result.stderr
    assert (run / "partitions.npz").read_bytes() == before  # refused before touching the folder


def _shifted_idx(path) -> bytes:
    """The same IDX images with every pixel moved by one grey level."""
    import gzip

    raw = bytearray(gzip.decompress(path.read_bytes()))
    header = 4 + 4 * raw[3]
    raw[header:] = bytes((b + 1) % 256 for b in raw[header:])
    return gzip.compress(bytes(raw))


def test_a_checkpoint_with_malformed_metadata_is_one_line(tmp_path):
    import pickle

    import numpy as np

    from fedsparse.checkpoint import CHECKPOINT_FILE, load_checkpoint
    from fedsparse.errors import FedsparseError

    meta = pickle.dumps({"round": "three", "outcome": None, "strategy": {}})
    np.savez(tmp_path / CHECKPOINT_FILE, __server_state__=np.frombuffer(meta, dtype=np.uint8))
    try:
        load_checkpoint(tmp_path)
    except FedsparseError as exc:
        assert "has malformed metadata (round 'three')" in str(exc)
    else:
        raise AssertionError("a malformed checkpoint was accepted")
    meta = pickle.dumps({"outcome": None})
    np.savez(tmp_path / CHECKPOINT_FILE, __server_state__=np.frombuffer(meta, dtype=np.uint8))
    try:
        load_checkpoint(tmp_path)
    except FedsparseError as exc:
        assert "is unreadable (KeyError" in str(exc)
