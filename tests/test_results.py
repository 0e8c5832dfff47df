import json
import math

from fedsparse.config import load_config
from fedsparse.results import RunRecorder, bottom_decile, new_run_dir, read_rounds


def test_bottom_decile_is_the_floor_n_over_10_th_worst():
    values = [i / 100 for i in range(100)]
    assert bottom_decile(values) == 0.09  # 10th worst of 100
    assert bottom_decile([0.5, 0.1, 0.9]) == 0.1  # n < 10: the worst
    assert bottom_decile(list(range(25))) == 1  # 2nd worst of 25
    assert math.isnan(bottom_decile([]))


def test_runs_are_named_by_what_they_run_unless_named(tmp_path):
    flags = {"method.name": "fedtiny", "data.dataset": "fashion-mnist", "output.dir": str(tmp_path)}
    assert new_run_dir(load_config(None, None, flags)).name.startswith("fedtiny-fashion-mnist-")
    named = load_config(None, [f"output.dir={tmp_path}", "output.name=mine"])
    assert new_run_dir(named).name.startswith("mine-")


def test_recorder_writes_durable_files(tmp_path):
    cfg = load_config(None, [f"output.dir={tmp_path}"])
    run_dir = new_run_dir(cfg)
    again = new_run_dir(cfg)
    assert run_dir != again and run_dir.name.startswith("pfedgate-synthetic-")
    rec = RunRecorder(run_dir, cfg)
    rec.log_round({"round": 1, "train_loss": 0.5})
    rec.log_round({"round": 2, "train_loss": 0.4})
    rec.write_clients([{"partition_id": 0, "accuracy": 0.5}])
    rec.write_summary({"method": "dense"})
    assert [r["round"] for r in read_rounds(run_dir)] == [1, 2]
    assert json.loads((run_dir / "summary.json").read_text()) == {"method": "dense"}
    assert (run_dir / "clients.csv").read_text().startswith("partition_id,accuracy")
    assert load_config(run_dir / "config.yaml") == cfg
    assert not list(run_dir.glob(".*tmp"))
