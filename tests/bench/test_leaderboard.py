import pytest

from fedsparse.bench.leaderboard import EntryResult, _time_to_target


def summary(acc: float, reached: float | None = None, widths: dict | None = None,
            clock: bool = True) -> dict:
    return {"accuracy": {"mean": acc, "bottom_decile": acc - 0.1, "global": None, "val_mean": acc},
            "cost": {"train_flops_total": 30.0, "dense_train_flops_total": 100.0,
                     "eval_train_flops_final": 20.0},
            "clock": {"time_to_target": reached} if clock else None,
            "server_scores": {f"width-{w}-accuracy": {"mean": v, "clients": 5}
                              for w, v in (widths or {}).items()}}


def test_costs_are_ratios_to_dense_training_and_evaluation_is_charged_in_the_total():
    entry = EntryResult("e", "m", {}, {0: summary(0.8), 1: summary(0.9)})
    assert entry.estimate("train_flops").mean == pytest.approx(0.3)
    assert entry.estimate("eval_flops").mean == pytest.approx(0.2)
    assert entry.estimate("total_flops").mean == pytest.approx(0.5)
    assert entry.estimate("global").n == 0  # no global model: no figure, not a zero


def test_time_to_target_counts_the_seeds_that_never_reached_it():
    entry = EntryResult("e", "m", {}, {0: summary(0.8, 40.0), 1: summary(0.7, None),
                                       2: summary(0.8, 60.0)})
    assert _time_to_target(entry) == "50.0 ± 14.1 (not reached: 1)"
    assert _time_to_target(EntryResult("e", "m", {}, {0: summary(0.8, clock=False)})) == "-"


def test_widths_average_the_server_scores_over_seeds():
    entry = EntryResult("e", "m", {}, {0: summary(0.8, widths={"0.1": 0.6, "1": 0.9}),
                                       1: summary(0.8, widths={"0.1": 0.7, "1": 0.8})})
    widths = entry.widths()
    assert list(widths) == ["0.1", "1"]
    assert widths["0.1"].mean == pytest.approx(0.65) and widths["1"].mean == pytest.approx(0.85)


def test_a_pfedgate_row_whose_gate_has_no_choice_is_labelled_a_fixed_mask():
    fixed = {**summary(0.8), "gate_choices": {"0.3": False}}
    assert EntryResult("e", "pfedgate", {}, {0: fixed, 1: fixed}).method_cell() == \
        "pfedgate (fixed mask)"
    mixed = {**summary(0.8), "gate_choices": {"0.1": False, "0.5": True}}
    assert EntryResult("e", "pfedgate", {}, {0: mixed}).method_cell() == \
        "pfedgate (fixed mask at s=0.1)"
    chooses = {**summary(0.8), "gate_choices": {"0.3": True}}
    assert EntryResult("e", "pfedgate", {}, {0: chooses}).method_cell() == "pfedgate"
    # a suite's label for runs that predate the field
    assert EntryResult("e", "pfedgate", {}, {0: summary(0.8)}, label="fixed mask").method_cell() == \
        "pfedgate (fixed mask)"


def test_the_width_table_shows_the_full_width_figure_the_authors_report():
    from fedsparse.bench.leaderboard import _width_lines

    def scored(full):
        s = summary(0.8, widths={"0.1": 0.6, "1": 0.9})
        s["server_scores"]["full-width-accuracy"] = {"mean": full, "clients": 5}
        return s

    entry = EntryResult("e", "heterofl", {}, {0: scored(0.85), 1: scored(0.87)})
    results = type("R", (), {"entries": [entry]})()
    lines = _width_lines(results)
    assert lines[3].endswith("| full width |")
    assert lines[-1].endswith("| 0.860 ± 0.014 |")


def test_a_width_row_scored_on_its_own_labels_says_so():
    masked = {**summary(0.8), "width": {"label_split": "train-eval"}}
    plain = {**summary(0.8), "width": {"label_split": "train"}}
    assert EntryResult("e", "heterofl", {}, {0: masked}).method_cell() == \
        "heterofl (label-masked scoring)"
    assert EntryResult("e", "heterofl", {}, {0: plain}).method_cell() == "heterofl"
