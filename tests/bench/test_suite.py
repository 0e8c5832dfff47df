from pathlib import Path

import pytest
import yaml

from fedsparse.bench.suite import base_tree, check_plan, load_suite, report_runs, tuning_runs
from fedsparse.errors import ConfigError

SUITES = Path(__file__).resolve().parents[2] / "benchmarks" / "suites"

BASIC = {
    "name": "t", "base": "quickstart.yaml", "seeds": [0, 1], "tune": {"seeds": [7]},
    "set": {"num_clients": 4, "rounds": 2},
    "entries": [{"name": "a", "method": "dense", "strategy": "fedavg", "budgets": "1.0:1",
                 "grid": {"train.lr": [0.01, 0.1]}},
                {"name": "b", "method": "fedavg-ft", "strategy": "fedavg", "budgets": "1.0:1",
                 "grid": {"train.lr": [0.01, 0.1]}}],
}


def write(tmp_path: Path, suite: dict, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(suite))
    return path


def with_(**changes) -> dict:
    suite = yaml.safe_load(yaml.safe_dump(BASIC))
    suite.update(changes)
    return suite


@pytest.mark.parametrize("path", sorted(SUITES.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_suites_validate_every_run(path):
    suite = load_suite(path)
    assert check_plan(suite, base_tree(suite, path)) >= len(suite.entries) * len(suite.seeds)


def test_plan_tunes_every_point_on_tuning_seeds_and_reports_the_chosen_one(tmp_path):
    path = write(tmp_path, BASIC)
    suite = load_suite(path)
    tree = base_tree(suite, path)
    tune = tuning_runs(suite, tree)
    assert [r.key for r in tune] == ["a/tune-0-s7", "a/tune-1-s7", "b/tune-0-s7", "b/tune-1-s7"]
    assert [r.config.train.lr for r in tune] == [0.01, 0.1, 0.01, 0.1]
    assert {r.config.seed for r in tune} == {7}
    report = report_runs(suite, tree, suite.entries[1], 1)
    assert [(r.key, r.config.seed, r.config.train.lr, r.config.method.name) for r in report] == [
        ("b/seed0", 0, 0.1, "fedavg-ft"), ("b/seed1", 1, 0.1, "fedavg-ft")]
    assert report[0].config.num_clients == 4  # the suite's overrides


@pytest.mark.parametrize(("changes", "message"), [
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"tune": {"seeds": [1]}}, "tuning seeds [1] are also reported seeds"),
    ({"baseline": "zzz"}, "baseline 'zzz' is not an entry"),
    ({"entries": [{"name": "a", "method": "dense", "grid": {"train.lr": []}}]}, "grid 'train.lr' is empty"),
    ({"entries": [{"name": "a", "method": "dense", "grid": {"train.lr": [0.1, 0.2]}},
                  {"name": "b", "method": "dense", "grid": {"train.lr": [0.1, 0.2, 0.3]}}]},
     "every entry must have 2 grid points"),
    ({"entries": [{"name": "a", "method": "dense"}, {"name": "a", "method": "dense"}]},
     "entry names repeat: a"),
    ({"entries": [{"name": "../x", "method": "dense"}]}, "name '../x' must be letters"),
    ({"seeds": []}, "'seeds'"),
    ({"tune": {"seeds": []}}, "tune.seeds is empty"),
])
def test_bad_suites_are_one_line_errors(tmp_path, changes, message):
    with pytest.raises(ConfigError) as err:
        load_suite(write(tmp_path, with_(**changes)))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unequal_grids_only_when_the_suite_says_so(tmp_path):
    entries = [{"name": "a", "method": "dense", "grid": {"train.lr": [0.1, 0.2]}},
               {"name": "b", "method": "dense", "grid": {"train.lr": [0.1, 0.2, 0.3]}}]
    suite = load_suite(write(tmp_path, with_(entries=entries, tune={"seeds": [7], "unequal": True})))
    assert [len(e.points()) for e in suite.entries] == [2, 3]


def test_a_run_config_that_does_not_validate_is_refused_before_anything_runs(tmp_path):
    bad = with_(entries=[{"name": "a", "method": "dense", "grid": {"train.lr": [-1.0, 0.1]}},
                         {"name": "b", "method": "dense", "grid": {"train.lr": [0.1, 0.2]}}])
    path = write(tmp_path, bad)
    suite = load_suite(path)
    with pytest.raises(ConfigError, match=r"entry 'a'.*train\.lr"):
        check_plan(suite, base_tree(suite, path))


def test_a_missing_suite_file_names_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"suite file .* not found: pass a suite YAML file"):
        load_suite(tmp_path / "nope.yaml")


def test_a_missing_base_names_the_fix(tmp_path):
    path = write(tmp_path, with_(base="nope.yaml"))
    suite = load_suite(path)
    with pytest.raises(ConfigError, match="fix 'base'"):
        base_tree(suite, path)
