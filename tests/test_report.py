"""Report and compare on run folders, including ones written by earlier versions."""

import json
import os
import re
import subprocess
import sys

import pytest

from fedsparse.errors import FedsparseError
from fedsparse.report import (
    compare_markdown,
    draw_plots,
    legend_labels,
    load_run,
    write_comparison,
)
from tests.fresh_interpreter import run_fresh

from .test_plots import CLIENTS, ROUNDS


def write_run(folder, method="magnitude", with_costs=True, old=False):
    folder.mkdir(parents=True)
    rounds = ROUNDS if with_costs else [
        {k: v for k, v in r.items() if not k.startswith("cost_")} for r in ROUNDS]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    summary = {"method": method, "strategy": "masked-fedavg", "dataset": "synthetic", "model": "mlp",
               "num_clients": 5, "clients_per_round": 2, "rounds": 6, "seed": 0, "wall_seconds": 3.5,
               "accuracy": {"mean": 0.6, "bottom_decile": 0.3, "global": 0.7},
               "failures": {"clients_failed": 0}}
    if not old:
        summary["sparse_updates"] = method != "dense"
        summary["cost"] = {"train_flops_ratio": 0.5, "memory_bytes_ratio": 0.4,
                           "upload_bytes_ratio": 0.25, "download_bytes_ratio": 1.0}
        header = ",".join(CLIENTS[0])
        lines = [",".join(str(v) for v in row.values()) for row in CLIENTS]
        (folder / "clients.csv").write_text("\n".join([header, *lines]) + "\n")
        (folder / "layers.json").write_text(json.dumps({"w": {"numel": 4, "density": 0.5}}))
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_full_run_draws_every_plot(tmp_path):
    run = load_run(write_run(tmp_path / "r"))
    drawn, skipped = draw_plots(run)
    assert drawn == {"accuracy.png": 5, "clients_vs_budget.png": 3, "costs.png": 6,
                     "layer_density.png": 1}
    assert not skipped and not run.missing
    assert all((run.path / "plots" / name).is_file() for name in drawn)


def test_old_run_still_reports_and_says_what_is_missing(tmp_path):
    run = load_run(write_run(tmp_path / "old", with_costs=False, old=True))
    drawn, skipped = draw_plots(run)
    assert set(drawn) == {"accuracy.png"}
    assert set(run.missing) == {"clients.csv", "layers.json"}
    assert any("no costs" in s for s in skipped)
    result = subprocess.run([sys.executable, "-m", "fedsparse.cli", "report", str(run.path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "missing: clients.csv" in result.stderr and "accuracy mean" in result.stdout


def test_dense_runs_skip_sparse_plots(tmp_path):
    drawn, _ = draw_plots(load_run(write_run(tmp_path / "d", method="dense")))
    assert "costs.png" not in drawn and "layer_density.png" not in drawn


def test_compare_table_markdown_and_curves(tmp_path):
    runs = [load_run(write_run(tmp_path / n)) for n in ("a", "b")]
    md = compare_markdown(runs)
    lines = md.strip().splitlines()
    assert len(lines) == 4 and lines[2].startswith("| a | magnitude | masked-fedavg | 0.6000")
    table, figure = write_comparison(runs, tmp_path / "cmp")
    assert table.read_text() == md and figure.is_file()


def test_compare_names_runs_by_what_they_ran_and_fits_80_columns(tmp_path):
    """Legends read method / strategy (the folder only where two runs would read the same);
    the terminal table stacks figures by rows so 80 columns show whole numbers."""
    runs = [load_run(write_run(tmp_path / "a")), load_run(write_run(tmp_path / "b")),
            load_run(write_run(tmp_path / "c", method="dense"))]
    labels = legend_labels(runs)
    assert labels[0] == "magnitude / masked-fedavg (a)" and labels[2].startswith("dense / ")
    result = subprocess.run([sys.executable, "-m", "fedsparse.cli", "compare",
                             *(str(tmp_path / n) for n in "abc"), "--out", str(tmp_path / "cmp")],
                            capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    assert "0.6000" in result.stdout and "…" not in result.stdout
    assert max(len(line) for line in result.stdout.splitlines() if "│" in line) <= 80
    assert f"[3] {labels[2]}: {tmp_path / 'c'}" in result.stdout.replace("\n", "")


def test_compare_rejects_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(FedsparseError, match="not a fedsparse run folder"):
        load_run(tmp_path)
    write_run(tmp_path / "ok")
    (tmp_path / "junk").mkdir()
    result = subprocess.run([sys.executable, "-m", "fedsparse.cli", "compare", str(tmp_path / "ok"),
                             str(tmp_path / "junk"), "--out", str(tmp_path / "cmp")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "junk is not a fedsparse run folder" in errors[0]


def test_tensorboard_flag_says_what_it_needs(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        result = subprocess.run([sys.executable, "-m", "fedsparse.cli", "simulate", "--tensorboard",
                                 "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "pip install tensorboard" in result.stderr
    else:
        from fedsparse.cli import _tensorboard_writer

        assert _tensorboard_writer().__name__ == "SummaryWriter"


def test_reading_and_formatting_runs_leaves_matplotlib_unimported():
    """The CLI formats every round's progress line with ``report.fmt`` while the server waits:
    matplotlib (~1 s) is imported only where something is drawn (a fresh interpreter)."""
    script = ("import sys\n"
              "from fedsparse.report import fmt, results_text\n"
              "assert fmt(0.5) == '0.5000'\n"
              "assert 'matplotlib' not in sys.modules\n")
    run_fresh(script)


@pytest.mark.parametrize(("damage", "needle"), [
    (lambda d: (d / "summary.json").write_text("[1, 2]"), "summary.json holds a list"),
    (lambda d: (d / "summary.json").write_text('{"accuracy": "x"}'), "has 'accuracy' of type str"),
    (lambda d: (d / "summary.json").write_text('{"accuracy": {"mean": "high"}}'),
     "accuracy.mean = 'high', not a number"),
    (lambda d: (d / "layers.json").write_text("{bad"), "layers.json is not valid JSON"),
    (lambda d: (d / "layers.json").write_text("[1]"), "layers.json is not a mapping"),
    (lambda d: (d / "clients.csv").write_text("partition_id,accuracy\n0,abc\n"),
     "clients.csv row 2 has accuracy = 'abc'"),
    (lambda d: (d / "clients.csv").write_text("partition_id,accuracy\n0,0.5,7\n"),
     "row 2 has a different number of fields"),
    (lambda d: (d / "metrics.jsonl").write_text('{bad}\n{"round": 1}\n'),
     "metrics.jsonl line 1 is not a round record"),
])
def test_a_damaged_run_folder_is_one_line_naming_the_file(tmp_path, damage, needle):
    write_run(tmp_path / "run")
    damage(tmp_path / "run")
    with pytest.raises(FedsparseError, match=re.escape(needle)):
        load_run(tmp_path / "run")


def test_a_partial_last_round_line_is_noted_and_the_finished_rounds_kept(tmp_path):
    write_run(tmp_path / "run")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text()
    (tmp_path / "run" / "metrics.jsonl").write_text(lines + '{"round": 7, "acc')
    run = load_run(tmp_path / "run")
    assert len(run.rounds) == len(lines.splitlines())
    assert len(run.notes) == 1 and "is incomplete" in run.notes[0]


def test_compare_needs_two_runs_and_a_folder(tmp_path):
    write_run(tmp_path / "a")
    write_run(tmp_path / "b")
    one = subprocess.run([sys.executable, "-m", "fedsparse.cli", "compare", str(tmp_path / "a")],
                         capture_output=True, text=True, timeout=120)
    assert one.returncode == 2 and "compare needs two or more run folders, got 1" in one.stderr
    (tmp_path / "file").write_text("x")
    to_file = subprocess.run([sys.executable, "-m", "fedsparse.cli", "compare", str(tmp_path / "a"),
                              str(tmp_path / "b"), "--out", str(tmp_path / "file")],
                             capture_output=True, text=True, timeout=120)
    assert to_file.returncode == 2 and "is a file, not a folder" in to_file.stderr
    assert "Traceback" not in one.stderr + to_file.stderr
