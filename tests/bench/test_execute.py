"""Suites end to end in this process (``tests/simulation/inprocess.py``): every run is a real
``run_experiment``, with the in-process grid in place of Ray."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from fedsparse.bench import execute
from fedsparse.bench.execute import run_suite
from fedsparse.bench.leaderboard import HEADLINE_MD, REPORT_CSV, REPORT_MD, collect
from fedsparse.bench.manifest import Manifest, run_folder
from fedsparse.errors import ConfigError
from fedsparse.simulation.stopping import Interrupted
from tests.simulation.inprocess import in_process, invoke_here

SMOKE = Path(__file__).resolve().parents[2] / "benchmarks" / "suites" / "smoke.yaml"
PEEKING = Path(__file__).resolve().parent / "peeking_method.py"
TINY = {"num_clients": 4, "rounds": 2, "fraction": 1.0, "model.hidden": [16],
        "train.local_epochs": 1, "eval.every": 2, "eval.fraction": 1.0,
        "data.synthetic.iid": True, "data.synthetic.max_samples": 200}


def tiny_suite(tmp_path: Path, **changes) -> Path:
    suite = {"name": "tiny", "base": "quickstart.yaml", "set": TINY, "seeds": [0],
             "tune": {"seeds": [5]}, "baseline": "fedavg",
             "entries": [{"name": "fedavg", "method": "dense", "strategy": "fedavg",
                          "budgets": "1.0:1", "grid": {"train.lr": [0.05, 0.2]}},
                         {"name": "ft", "method": "fedavg-ft", "strategy": "fedavg",
                          "budgets": "1.0:1", "grid": {"train.lr": [0.05, 0.2]}}]}
    suite.update(changes)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


class Counting(execute.Listener):
    def __init__(self) -> None:
        self.started_keys: list[str] = []

    def started(self, key: str) -> None:
        self.started_keys.append(key)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The shipped smoke suite, run once in this process."""
    out = tmp_path_factory.mktemp("smoke") / "suite"
    with in_process():
        run_suite(SMOKE, out, command="fedsparse bench smoke.yaml")
    return out


def test_smoke_suite_runs_tunes_and_reports(smoke):
    manifest = Manifest.open(smoke, "smoke")
    assert len(manifest.runs) == 12
    assert {s.status for s in manifest.runs.values()} == {"done"}
    for entry in ("fedavg", "fedavg-ft", "pfedgate"):
        assert manifest.selection[entry]["point"] in (0, 1)
        assert set(manifest.selection[entry]["val"]) == {"0", "1"}
    md = (smoke / REPORT_MD).read_text()
    assert "commit" in md and "fedsparse bench smoke.yaml" in md and "Paired differences" in md
    assert {p.name for p in (smoke / "plots").iterdir()} >= {"accuracy_vs_flops.png",
                                                             "accuracy_vs_upload.png", "curves.png",
                                                             "tiers.png"}


def test_selection_reads_validation_accuracy_of_the_tuning_runs(smoke):
    manifest = Manifest.open(smoke, "smoke")
    for entry, chosen in manifest.selection.items():
        vals = {i: json.loads((run_folder(smoke, f"{entry}/tune-{i}-s100") / "summary.json")
                              .read_text())["accuracy"]["val_mean"] for i in (0, 1)}
        assert chosen["val"] == {str(i): pytest.approx(v) for i, v in vals.items()}
        assert chosen["point"] == max(vals, key=lambda i: (vals[i], -i))


def test_report_numbers_equal_the_run_folders(smoke):
    results = collect(smoke)
    rows = {r["entry"]: r for r in csv.DictReader((smoke / REPORT_CSV).open())}
    for entry in results.entries:
        summaries = [json.loads((run_folder(smoke, f"{entry.name}/seed{s}") / "summary.json")
                                .read_text()) for s in (0, 1)]
        accs = [s["accuracy"]["mean"] for s in summaries]
        assert float(rows[entry.name]["accuracy_mean"]) == pytest.approx(sum(accs) / 2)
        assert int(rows[entry.name]["accuracy_n"]) == 2
        flops = [s["cost"]["train_flops_total"] / s["cost"]["dense_train_flops_total"]
                 for s in summaries]
        assert float(rows[entry.name]["train_flops_mean"]) == pytest.approx(sum(flops) / 2)
        evals = [s["cost"]["eval_train_flops_final"] for s in summaries]
        # the personalised methods train at evaluation, and are charged for it
        assert (min(evals) > 0) == (entry.method in ("fedavg-ft", "pfedgate"))
        chosen = yaml.safe_load((run_folder(smoke, f"{entry.name}/seed0") / "config.yaml").read_text())
        assert chosen["train"]["lr"] == entry.selected["train.lr"]
    diff = float(rows["fedavg-ft"]["paired_accuracy_diff"])
    ft = [json.loads((run_folder(smoke, f"fedavg-ft/seed{s}") / "summary.json").read_text())
          ["accuracy"]["mean"] for s in (0, 1)]
    avg = [json.loads((run_folder(smoke, f"fedavg/seed{s}") / "summary.json").read_text())
           ["accuracy"]["mean"] for s in (0, 1)]
    assert diff == pytest.approx(sum(f - a for f, a in zip(ft, avg, strict=True)) / 2)
    # the front page's short table carries the same figures
    headline = {line.split(" | ")[0].strip("| "): line.split(" | ")
                for line in (smoke / HEADLINE_MD).read_text().splitlines() if line.startswith("| ")}
    assert headline["fedavg-ft"][2] == (f"{float(rows['fedavg-ft']['accuracy_mean']):.3f} ± "
                                        f"{float(rows['fedavg-ft']['accuracy_sd']):.3f}")
    assert headline["fedavg-ft"][3].startswith(f"{diff:+.3f} [")
    assert headline["fedavg"][3] == "baseline"
    assert headline["pfedgate"][4] == f"{float(rows['pfedgate']['total_flops_mean']):.2f}x"


def test_a_grid_point_that_wins_on_test_and_loses_on_validation_is_not_picked(tmp_path):
    # the peeking point comes first: a tie, or a selection on test, would pick it
    path = tiny_suite(tmp_path, baseline=None, entries=[
        {"name": "peek", "method": f"{PEEKING}:Peeking", "strategy": "fedavg", "budgets": "1.0:1",
         "grid": {"method.peeking.peek": [True, False]}}])
    out = tmp_path / "out"
    with in_process():
        run_suite(path, out)
    manifest = Manifest.open(out, "tiny")
    peeked = json.loads((run_folder(out, "peek/tune-0-s5") / "summary.json").read_text())
    honest = json.loads((run_folder(out, "peek/tune-1-s5") / "summary.json").read_text())
    assert peeked["accuracy"]["mean"] == 1.0 > honest["accuracy"]["mean"]
    assert peeked["accuracy"]["val_mean"] == 0.0 < honest["accuracy"]["val_mean"]
    assert manifest.selection["peek"]["point"] == 1
    reported = yaml.safe_load((run_folder(out, "peek/seed0") / "config.yaml").read_text())
    assert reported["method"]["peeking"]["peek"] is False


def test_a_stopped_suite_resumes_with_only_the_missing_runs(tmp_path, monkeypatch):
    from fedsparse.simulation import runner

    path = tiny_suite(tmp_path)
    out = tmp_path / "out"
    real = runner.run_experiment
    calls = []

    def stop_on_third(config, **kwargs):
        calls.append(kwargs["run_dir"])
        if len(calls) == 3:
            raise Interrupted("stopped by SIGINT", 2)
        return real(config, **kwargs)

    monkeypatch.setattr(runner, "run_experiment", stop_on_third)
    with in_process(), pytest.raises(Interrupted) as stop:
        run_suite(path, out)
    assert stop.value.exit_code == 130
    manifest = Manifest.open(out, "tiny")
    done = sorted(k for k, s in manifest.runs.items() if s.status == "done")
    assert done == ["fedavg/tune-0-s5", "fedavg/tune-1-s5"]
    assert not calls[2].exists()  # the stopped run leaves nothing half written
    monkeypatch.setattr(runner, "run_experiment", real)
    listener = Counting()
    with in_process():
        run_suite(path, out, listener=listener)
    assert listener.started_keys == ["ft/tune-0-s5", "ft/tune-1-s5", "fedavg/seed0", "ft/seed0"]
    assert (out / REPORT_MD).is_file()
    # a changed suite: only the runs that changed run again; a dropped entry leaves
    changed = tiny_suite(tmp_path, entries=[
        {"name": "fedavg", "method": "dense", "strategy": "fedavg", "budgets": "1.0:1",
         "grid": {"train.lr": [0.05, 0.3]}}])
    listener = Counting()
    with in_process():
        run_suite(changed, out, listener=listener)
    assert listener.started_keys in (["fedavg/tune-1-s5"], ["fedavg/tune-1-s5", "fedavg/seed0"])
    assert not (out / "runs" / "ft").exists()
    assert set(Manifest.open(out, "tiny").runs) == {"fedavg/tune-0-s5", "fedavg/tune-1-s5",
                                                    "fedavg/seed0"}


def test_a_failing_run_is_listed_in_the_report_not_a_silent_row(tmp_path):
    # dense training refuses clients that declare density 0.3: every run of that entry fails
    path = tiny_suite(tmp_path, entries=[
        {"name": "fedavg", "method": "dense", "strategy": "fedavg", "budgets": "1.0:1",
         "grid": {"train.lr": [0.05, 0.2]}},
        {"name": "broken", "method": "dense", "strategy": "fedavg", "budgets": "0.3:1",
         "grid": {"train.lr": [0.05, 0.2]}}])
    out = tmp_path / "out"
    with in_process():
        run_suite(path, out)
    manifest = Manifest.open(out, "tiny")
    assert manifest.runs["broken/tune-0-s5"].status == "failed"
    assert "density" in manifest.runs["broken/tune-0-s5"].error
    assert manifest.runs["broken/seed0"].error == "no grid point finished tuning"
    md = (out / REPORT_MD).read_text()
    assert "Failed runs" in md and "`broken/seed0`: no grid point finished tuning" in md
    row = next(line for line in md.splitlines() if line.startswith("| broken |"))
    assert "| 0 | - |" in row  # no seeds, no figures


def test_cli_refuses_a_folder_of_another_suite_and_a_stray_folder(tmp_path):
    path = tiny_suite(tmp_path)
    other = tmp_path / "other"
    Manifest("something-else").save(other)
    result = invoke_here("bench", str(path), "--out", str(other))
    assert result.exit_code == 2
    assert "holds suite 'something-else', not 'tiny'" in result.stderr
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    result = invoke_here("bench", str(path), "--out", str(stray))
    assert result.exit_code == 2 and "is not empty and holds no manifest.json" in result.stderr
    assert (stray / "notes.txt").read_text() == "mine"


def test_cli_bad_suite_and_report_of_a_non_suite_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbase: quickstart.yaml\nseeds: [0]\nentries: [{name: a, method: dense}]\n"
                   "tune: {seeds: [0]}\n")
    result = invoke_here("bench", str(bad))
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    result = invoke_here("bench", "report", str(tmp_path))
    assert result.exit_code == 2 and "is not a suite folder" in result.stderr


def test_cli_report_rewrites_the_leaderboard(smoke, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(smoke, copy)
    (copy / REPORT_MD).unlink()
    result = invoke_here("bench", "report", str(copy))
    assert result.exit_code == 0, result.stderr
    assert (copy / REPORT_MD).read_text().splitlines()[4:] == \
        (smoke / REPORT_MD).read_text().splitlines()[4:]


def test_parallel_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="--parallel"):
        run_suite(tiny_suite(tmp_path), tmp_path / "o", execute.BenchOptions(parallel=0))


@pytest.mark.e2e
def test_parallel_runs_each_in_its_own_process_with_its_share_of_the_cpus(tmp_path):
    path = tiny_suite(tmp_path, seeds=[0, 1], entries=[
        {"name": "fedavg", "method": "dense", "strategy": "fedavg", "budgets": "1.0:1"},
        {"name": "broken", "method": "dense", "strategy": "fedavg", "budgets": "0.3:1"}],
        tune={"seeds": [5], "points": 1})
    out = tmp_path / "out"
    run_suite(path, out, execute.BenchOptions(parallel=2))
    manifest = Manifest.open(out, "tiny")
    assert {k: s.status for k, s in manifest.runs.items()} == {
        "fedavg/seed0": "done", "fedavg/seed1": "done", "broken/seed0": "failed",
        "broken/seed1": "failed"}
    assert manifest.runs["broken/seed0"].error.startswith("error: method 'dense'")
    for seed in (0, 1):
        config = yaml.safe_load((run_folder(out, f"fedavg/seed{seed}") / "config.yaml").read_text())
        assert config["simulation"]["num_cpus"] == max(1, execute.cores() // 2)
        assert config["seed"] == seed
    assert "`broken/seed1`: error: method 'dense'" in (out / REPORT_MD).read_text()


def test_a_method_without_validation_scores_is_run_but_not_tuned_and_says_why(tmp_path):
    path = tiny_suite(tmp_path, baseline=None, entries=[
        {"name": "old", "method": f"{PEEKING}:ScoresTestOnly", "strategy": "fedavg", "budgets": "1.0:1",
         "grid": {"train.lr": [0.05, 0.2]}}])
    out = tmp_path / "out"
    with in_process():
        run_suite(path, out)
    manifest = Manifest.open(out, "tiny")
    assert manifest.runs["old/tune-0-s5"].status == "done"  # its replies are accepted
    assert "reports no validation accuracy" in manifest.runs["old/seed0"].error
    assert "split_scores" in (out / REPORT_MD).read_text()


def test_paste_fills_the_leaderboard_and_headline_blocks(smoke, tmp_path):
    from benchmarks.paste_results import paste

    page = tmp_path / "page.md"
    page.write_text("a\n<!-- bench:smoke -->\nold\n<!-- /bench:smoke -->\nb\n"
                    "<!-- bench-headline:smoke -->\nold\n<!-- /bench-headline:smoke -->\n")
    paste(smoke, page)
    text = page.read_text()
    assert "old" not in text and text.startswith("a\n<!-- bench:smoke -->\nSuite `smoke`")
    assert (smoke / HEADLINE_MD).read_text().strip() in text
    assert (smoke / REPORT_MD).read_text().strip() in text
    bare = tmp_path / "bare.md"
    bare.write_text("no blocks\n")
    with pytest.raises(SystemExit, match="no <!-- bench:smoke -->"):
        paste(smoke, bare)
    from benchmarks.paste_results import publish

    publish(smoke, tmp_path / "results", tmp_path / "assets")
    kept = {p.relative_to(tmp_path / "results" / "smoke").as_posix()
            for p in (tmp_path / "results" / "smoke").rglob("*") if p.is_file()}
    assert {"leaderboard.md", "headline.md", "leaderboard.csv", "manifest.json", "suite.yaml",
            "plots/curves.png"} <= kept
    assert (tmp_path / "assets" / "smoke" / "accuracy_vs_flops.png").is_file()
