from pathlib import Path

import pytest
import yaml

from fedsparse.config import ExperimentConfig, dump_config, load_config, parse_assignment
from fedsparse.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_quickstart_is_the_default_and_valid():
    cfg = load_config()
    assert cfg == load_config(CONFIGS / "quickstart.yaml")
    assert cfg.num_clients == 100 and cfg.data.dataset == "synthetic"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    assert isinstance(load_config(path), ExperimentConfig)


def test_flags_override_file_and_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rounds: 7\ntrain: {lr: 0.3}\n")
    cfg = load_config(path, ["train.lr=0.01", "model.hidden=[8, 4]"], {"rounds": 3, "seed": None})
    assert cfg.rounds == 3  # flag beats file
    assert cfg.seed == 0  # unset flag leaves the default
    assert cfg.train.lr == 0.01 and cfg.model.hidden == [8, 4]


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["partition.kind=dirichlet", "data.data_dir=/x"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("roundz: 3\n", "unknown key 'roundz'"),
        ("train: {lrr: 0.1}\n", "unknown key 'train.lrr'"),
        ("fraction: 1.5\n", "'fraction'"),
        ("num_clients: 0\n", "'num_clients'"),
        ("partition: {train: 0.5, val: 0.2, test: 0.2}\n", "sum to 1"),
        ("model: {name: transformer}\n", "'model.name'"),
        ("data: {dataset: imagenet}\n", "'data.dataset'"),
        ("- just\n- a list\n", "mapping"),
        ("rounds: [1\n", "not valid YAML"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_missing_file_and_bad_set():
    with pytest.raises(ConfigError, match="not found"):
        load_config(Path("/nonexistent/x.yaml"))
    with pytest.raises(ConfigError, match="lacks '='"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(None, ["seed.x=1"])


def test_set_values_are_parsed_as_yaml():
    assert parse_assignment("a.b=0.5") == ("a.b", 0.5)
    assert parse_assignment("a=[1, 2]") == ("a", [1, 2])
    assert parse_assignment("a=true") == ("a", True)
    assert parse_assignment("a=text") == ("a", "text")


def test_clients_per_round():
    assert load_config(None, ["fraction=0.1", "num_clients=100"]).clients_per_round == 10
    assert load_config(None, ["fraction=0.01", "num_clients=10"]).clients_per_round == 1


def test_dump_is_plain_yaml():
    assert yaml.safe_load(dump_config(load_config()))["data"]["dataset"] == "synthetic"


@pytest.mark.parametrize("method", ["fedavg", "dense", "fedavg-ft", "ditto", "local"])
def test_a_full_model_method_on_the_default_config_drops_its_sparse_tiers(method):
    cfg = load_config(overrides={"method.name": method})
    assert [(t.density, t.share) for t in cfg.budgets.tiers] == [(1.0, 1.0)]
    assert any("not applied" in note and "0.1, 0.3" in note for note in cfg.notes)


def test_sparse_methods_and_named_budgets_keep_the_tiers(tmp_path):
    assert len(load_config(overrides={"method.name": "magnitude"}).budgets.tiers) == 3
    assert not load_config(overrides={"method.name": "magnitude"}).notes
    named = load_config(overrides={"method.name": "dense",
                                   "budgets.tiers": [{"density": 0.5, "share": 1.0}]})
    assert [t.density for t in named.budgets.tiers] == [0.5]
    by_set = load_config(assignments=["budgets.tiers=[{density: 0.2, share: 1.0}]"],
                         overrides={"method.name": "dense"})
    assert [t.density for t in by_set.budgets.tiers] == [0.2]
    path = tmp_path / "c.yaml"
    path.write_text("method: {name: dense}\nbudgets: {tiers: [{density: 0.3, share: 1.0}]}\n")
    assert [t.density for t in load_config(path).budgets.tiers] == [0.3]


def test_a_method_without_a_named_strategy_gets_its_authors_aggregation():
    heterofl = load_config(None, ["method.name=heterofl"])
    assert heterofl.strategy.name == "masked-fedavg"
    assert heterofl.strategy.options == {"weighting": "count"}
    assert load_config(None, ["method.name=pfedgate"]).strategy.name == "zero-delta-avg"
    assert load_config(None, ["method.name=fjord"]).strategy.name == "masked-fedavg"
    assert load_config(None, ["method.name=fjord"]).strategy.options == {}
    # a strategy the user names is kept, and a resolved config reloads the same
    named = load_config(None, ["method.name=heterofl", "strategy.name=masked-fedavg"])
    assert named.strategy.options == {}
    again = ExperimentConfig.model_validate(heterofl.model_dump())
    assert again.strategy == heterofl.strategy
