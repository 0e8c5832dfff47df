import matplotlib.image as mpimg
import pytest

from fedsparse import plots

ROUNDS = [
    {"round": r, "train_loss": 1.0 / r, "cost_train_flops": 10.0 * r, "cost_train_flops_ratio": 0.5,
     "cost_upload_bytes": 100.0, "cost_upload_bytes_ratio": 0.25, "cost_download_bytes": 200.0,
     "cost_download_bytes_ratio": 1.0,
     **({"accuracy_mean": 0.1 * r, "accuracy_bottom_decile": 0.05 * r, "accuracy_global": 0.12 * r,
        "loss_mean": 2.0 / r}
        if r % 2 == 0 else {})}
    for r in range(1, 7)
]
CLIENTS = [{"partition_id": i, "accuracy": 0.1 * (i % 10), "budget_density": d, "budget_tier": t}
           for i, (d, t) in enumerate([(0.1, 0), (0.1, 0), (0.5, 1), (1.0, 2), (1.0, 2)])]


def valid_png(path):
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # not a blank canvas


@pytest.mark.parametrize(
    ("draw", "data", "series"),
    [
        (plots.accuracy_curves, ROUNDS, 5),  # three accuracies, training and test loss
        (plots.accuracy_vs_budget, CLIENTS, 3),  # three tiers
        (plots.costs_per_round, ROUNDS, 6),  # three costs, each with its dense reference
        (plots.layer_density, {"a.weight": {"density": 0.2}, "a.bias": {"density": 1.0}}, 1),
        (plots.overlaid_accuracy, {"x": ROUNDS, "y": ROUNDS[:4]}, 4),
        (plots.accuracy_vs_time, [{**r, "sim_seconds": 60.0 * r["round"]} for r in ROUNDS], 2),
        (lambda runs, path: plots.overlaid_accuracy(runs, path, against="sim_seconds"),
         {"x": [{**r, "sim_seconds": 9.0 * r["round"]} for r in ROUNDS], "y": ROUNDS}, 2),
    ],
)
def test_each_plot_is_a_png_with_its_series(tmp_path, draw, data, series):
    path = tmp_path / "p.png"
    assert draw(data, path) == series
    valid_png(path)


def test_rounds_without_accuracy_draw_nothing_but_still_write():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.png"
        assert plots.accuracy_curves([{"round": 1}], path) == 0
        valid_png(path)


def test_a_short_run_has_whole_round_ticks(tmp_path, monkeypatch):
    """Five rounds evaluated each round: ticks are whole rounds, never 1.5."""
    seen = {}
    original = plots._save

    def keep_ticks(fig, path):
        seen["ticks"] = [t for ax in fig.axes for t in ax.get_xticks() if 1 <= t <= 5]
        original(fig, path)

    monkeypatch.setattr(plots, "_save", keep_ticks)
    rounds = [{"round": r, "train_loss": 1.0 / r, "accuracy_mean": 0.1 * r, "loss_mean": 1.0}
              for r in range(1, 6)]
    assert plots.accuracy_curves(rounds, tmp_path / "a.png") == 3
    assert seen["ticks"] and all(float(t).is_integer() for t in seen["ticks"])
