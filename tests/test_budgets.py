import json
from collections import Counter

import pytest

from fedsparse.budgets import assign_budgets, load_budget_file, parse_budget_shorthand, tier_counts
from fedsparse.config import load_config
from fedsparse.errors import ConfigError


def test_tiers_assign_the_declared_shares_deterministically():
    cfg = parse_budget_shorthand("0.1:0.5,0.3:0.3,1.0:0.2")
    budgets = assign_budgets(cfg, 100, seed=0)
    assert Counter(b.density for b in budgets) == {0.1: 50, 0.3: 30, 1.0: 20}
    assert Counter(b.tier for b in budgets) == {0: 50, 1: 30, 2: 20}
    assert budgets == assign_budgets(cfg, 100, seed=0)
    assert budgets != assign_budgets(cfg, 100, seed=1)
    assert Counter(b.density for b in assign_budgets(cfg, 100, seed=1)) == {0.1: 50, 0.3: 30, 1.0: 20}


def test_tier_counts_use_largest_remainder():
    assert tier_counts([0.5, 0.3, 0.2], 7) == [4, 2, 1]
    assert sum(tier_counts([1 / 3] * 3, 10)) == 10
    assert tier_counts([1.0], 5) == [5]


@pytest.mark.parametrize("text", ["0.1", "0.1:0.5,x:0.5", "0.1:0.4,1.0:0.4", "0:1", "1.5:1"])
def test_bad_shorthand(text):
    with pytest.raises(ConfigError, match="--budgets"):
        parse_budget_shorthand(text)


def test_shares_must_sum_to_one_in_config():
    with pytest.raises(ConfigError, match="shares must sum to 1"):
        load_config(None, ["budgets.tiers=[{density: 0.5, share: 0.5}]"])


def test_per_client_csv_and_json(tmp_path):
    csv_path = tmp_path / "b.csv"
    csv_path.write_text("client,density,upload_bytes\n1,0.5,\n0,0.1,1000\n")
    budgets = load_budget_file(csv_path, 2)
    assert [b.density for b in budgets] == [0.1, 0.5]
    assert budgets[0].upload_bytes == 1000 and budgets[1].upload_bytes is None
    json_path = tmp_path / "b.json"
    json_path.write_text(json.dumps([{"client": 0, "density": 1.0, "train_flops": 5e6},
                                     {"client": 1, "density": 0.2}]))
    budgets = assign_budgets([], 2, seed=0, file=json_path)
    assert budgets[0].train_flops == 5e6 and budgets[1].density == 0.2


@pytest.mark.parametrize(
    ("text", "needle"),
    [("client,density\n0,0.5\n", "no row for client 1"),
     ("client,density,speed\n0,0.5,1\n1,1,1\n", "unknown column 'speed'"),
     ("client,density\n0,2\n1,1\n", "bad value"),
     ("client\n0\n1\n", "lacks 'client' or 'density'"),
     ("client,density\n0,0.5\n0,0.3\n1,1\n", "declares client 0 again"),
     ("client,density\n0,0.5\n1,1\n7,1\n", "names client 7, but the run has clients 0..1"),
     ("\xff\xfe\x00garbage", "malformed")],
)
def test_bad_budget_files(tmp_path, text, needle):
    path = tmp_path / "b.csv"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError, match=needle):
        load_budget_file(path, 2)


def test_tiers_and_files_name_device_profiles(tmp_path):
    tiers = parse_budget_shorthand("0.1:0.5:low-end-phone,1.0:0.5")
    assert [t.device for t in tiers] == ["low-end-phone", None]
    budgets = assign_budgets(tiers, 4, seed=0)
    assert Counter(b.device for b in budgets) == {"low-end-phone": 2, None: 2}
    path = tmp_path / "b.csv"
    path.write_text("client,density,device\n0,0.5,laptop\n1,1.0,\n")
    assert [b.device for b in load_budget_file(path, 2)] == ["laptop", None]


def test_declared_node_budgets_are_validated():
    from fedsparse.budgets import declared_budget_fields, parse_declared_budget

    fields = declared_budget_fields({"partition-id": 0, "budget-density": 0.3, "device": "laptop"})
    assert fields == {"density": 0.3, "device": "laptop"}
    budget = parse_declared_budget(fields, 0)
    assert budget.density == 0.3 and budget.device == "laptop"
    assert declared_budget_fields({"partition-id": 1}) == {}
    with pytest.raises(ConfigError, match="node serving partition 4 declares a bad budget"):
        parse_declared_budget({"density": 1.5}, 4)


def test_over_budget_names_the_first_limit_exceeded():
    from fedsparse.budgets import Budget, over_budget

    spent = {"density": 0.3, "train_flops": 2e6, "memory_bytes": 5e3, "upload_bytes": 900.0}
    assert over_budget(Budget(density=0.3), spent) is None  # equal is within
    assert over_budget(Budget(density=0.2), spent).startswith("density 0.3 exceeds its declared 0.2")
    problem = over_budget(Budget(density=0.5, upload_bytes=800.0), spent)
    assert problem == "upload_bytes 900 exceeds its declared 800"
    assert over_budget(Budget(density=1.0, train_flops=1e6), spent).startswith("train_flops")
