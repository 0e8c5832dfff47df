"""Read run folders back: summaries, plots, and side-by-side comparisons of several runs."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from fedsparse.errors import FedsparseError
from fedsparse.results import CLIENTS_FILE, LAYERS_FILE, ROUNDS_FILE, SUMMARY_FILE, read_rounds


@dataclass
class RunData:
    """What a run folder holds; ``missing`` names files an older or interrupted run lacks."""

    path: Path
    summary: dict[str, Any]
    rounds: list[dict[str, Any]]
    clients: list[dict[str, Any]]
    layers: dict[str, dict[str, float]]
    missing: list[str] = field(default_factory=list)
    #: what was read around (a partial last round line)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def sparse(self) -> bool:
        """Whether the method's uploads may be sparse (then cost and layer plots are drawn).
        Runs older than the ``sparse_updates`` key try them and say what they lack."""
        return bool(self.summary.get("sparse_updates", True))


def load_run(path: Path) -> RunData:
    """Load a run folder; a folder without summary.json and metrics.jsonl is not a run, and a
    malformed file is a one-line error naming it (a partial last round line is only noted)."""
    path = Path(path)
    if not path.is_dir():
        raise FedsparseError(f"{path} is not a folder: pass a run folder such as runs/quickstart-*")
    has_summary, has_rounds = (path / SUMMARY_FILE).is_file(), (path / ROUNDS_FILE).is_file()
    if not has_summary and not has_rounds:
        raise FedsparseError(f"{path} is not a fedsparse run folder (no {SUMMARY_FILE} or "
                             f"{ROUNDS_FILE}): pass a folder written by 'fedsparse simulate'")
    missing = [name for name in (SUMMARY_FILE, ROUNDS_FILE, CLIENTS_FILE, LAYERS_FILE)
               if not (path / name).is_file()]
    notes: list[str] = []
    summary = _summary(path / SUMMARY_FILE) if has_summary else {}
    rounds = read_rounds(path, notes)
    clients = _clients(path / CLIENTS_FILE) if (path / CLIENTS_FILE).is_file() else []
    layers = _layers(path / LAYERS_FILE) if (path / LAYERS_FILE).is_file() else {}
    return RunData(path, summary, rounds, clients, layers, missing, notes)


def _damaged(path: Path, what: str) -> FedsparseError:
    return FedsparseError(f"{path} {what}: the file is damaged; restore it or run again")


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(errors="replace"))
    except ValueError as exc:
        raise _damaged(path, f"is not valid JSON ({exc})") from None


def _summary(path: Path) -> dict[str, Any]:
    summary = _json(path)
    if not isinstance(summary, dict):
        raise _damaged(path, f"holds a {type(summary).__name__}, not the summary's mapping")
    for key in ("accuracy", "failures", "cost", "clock", "budget"):
        if summary.get(key) is not None and not isinstance(summary[key], dict):
            raise _damaged(path, f"has '{key}' of type {type(summary[key]).__name__}, not a mapping")
    for key, value in (summary.get("accuracy") or {}).items():
        if value is not None and not isinstance(value, int | float):
            raise _damaged(path, f"has accuracy.{key} = {value!r}, not a number")
    return summary


def _layers(path: Path) -> dict[str, dict[str, float]]:
    layers = _json(path)
    if not isinstance(layers, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("density"), int | float) for v in layers.values()):
        raise _damaged(path, "is not a mapping of tensor name to {numel, density}")
    return layers


#: clients.csv columns the report reads as numbers
_NUMERIC = ("accuracy", "budget_density", "partition_id")


def _clients(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(newline="", errors="replace") as handle:
            rows = list(csv.DictReader(handle))
    except csv.Error as exc:
        raise _damaged(path, f"is not valid CSV ({exc})") from None
    for number, row in enumerate(rows, start=2):
        if None in row or None in row.values():
            raise _damaged(path, f"row {number} has a different number of fields than the header")
        for key in _NUMERIC:
            try:
                if row.get(key):
                    float(row[key])
            except ValueError:
                raise _damaged(path, f"row {number} has {key} = {row[key]!r}, not a number") from None
    return rows


def draw_plots(run: RunData) -> tuple[dict[str, int], list[str]]:
    """(Re)draw every plot the run's files allow; return {png: series} and what was skipped."""
    from fedsparse import plots  # matplotlib (~1 s): only where something is drawn

    out = run.path / plots.PLOTS_DIR
    drawn: dict[str, int] = {}
    skipped: list[str] = []
    title = f"{run.summary.get('method', '?')} / {run.summary.get('strategy', '?')}"
    if run.rounds:
        drawn["accuracy.png"] = plots.accuracy_curves(run.rounds, out / "accuracy.png", title)
    else:
        skipped.append(f"accuracy.png (no {ROUNDS_FILE})")
    if run.clients and "accuracy" in run.clients[0]:
        drawn["clients_vs_budget.png"] = plots.accuracy_vs_budget(run.clients,
                                                                  out / "clients_vs_budget.png")
    else:
        skipped.append(f"clients_vs_budget.png (no {CLIENTS_FILE})")
    if any("sim_seconds" in r for r in run.rounds):
        drawn["accuracy_vs_time.png"] = plots.accuracy_vs_time(run.rounds, out / "accuracy_vs_time.png",
                                                               title)
    if run.sparse:
        if any("cost_train_flops" in r for r in run.rounds):
            drawn["costs.png"] = plots.costs_per_round(run.rounds, out / "costs.png")
        else:
            skipped.append("costs.png (rounds carry no costs: written before cost accounting)")
        if run.layers:
            drawn["layer_density.png"] = plots.layer_density(run.layers, out / "layer_density.png")
        else:
            skipped.append(f"layer_density.png (no {LAYERS_FILE})")
    return drawn, skipped


COMPARE_COLUMNS = (
    ("method", lambda s: s.get("method")), ("strategy", lambda s: s.get("strategy")),
    ("acc mean", lambda s: s.get("accuracy", {}).get("mean")),
    ("acc bottom decile", lambda s: s.get("accuracy", {}).get("bottom_decile")),
    ("acc global", lambda s: s.get("accuracy", {}).get("global")),
    ("FLOPs ratio", lambda s: (s.get("cost") or {}).get("train_flops_ratio")),
    ("memory ratio", lambda s: (s.get("cost") or {}).get("memory_bytes_ratio")),
    ("upload ratio", lambda s: (s.get("cost") or {}).get("upload_bytes_ratio")),
    ("download ratio", lambda s: (s.get("cost") or {}).get("download_bytes_ratio")),
    ("sim time to target s", lambda s: (s.get("clock") or {}).get("time_to_target")),
    ("sim total s", lambda s: (s.get("clock") or {}).get("total_seconds")),
    ("wall s", lambda s: s.get("wall_seconds")),
)


def fmt(value: Any) -> str:
    """A number as the tables show it (4 decimals), '-' for none."""
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def compare_rows(runs: list[RunData]) -> list[list[str]]:
    return [[run.name, *(fmt(get(run.summary)) for _, get in COMPARE_COLUMNS)] for run in runs]


def compare_markdown(runs: list[RunData]) -> str:
    header = ["run", *(name for name, _ in COMPARE_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in compare_rows(runs)]
    return "\n".join(lines) + "\n"


def legend_labels(runs: list[RunData]) -> list[str]:
    """What each run is (``method / strategy``), with the folder name added only where two
    runs would read the same."""
    base = [f"{r.summary.get('method', '?')} / {r.summary.get('strategy', '?')}" for r in runs]
    return [f"{b} ({r.name})" if base.count(b) > 1 else b for b, r in zip(base, runs, strict=True)]


def compare_stacked(runs: list[RunData]) -> tuple[list[str], list[list[str]]]:
    """The comparison turned on its side for a terminal: one row per figure, one column per
    run (headed by its number; ``legend_labels`` says which is which)."""
    header = ["", *(f"[{i + 1}]" for i in range(len(runs)))]
    rows = [[name, *(fmt(get(run.summary)) for run in runs)] for name, get in COMPARE_COLUMNS]
    return header, rows


def write_comparison(runs: list[RunData], out: Path) -> tuple[Path, Path]:
    """compare.md and compare_accuracy.png in ``out``."""
    from fedsparse import plots

    out.mkdir(parents=True, exist_ok=True)
    table = out / "compare.md"
    table.write_text(compare_markdown(runs))
    figure = out / "compare_accuracy.png"
    curves = {label: run.rounds for label, run in zip(legend_labels(runs), runs, strict=True)}
    plots.overlaid_accuracy(curves, figure)
    if all(any("sim_seconds" in r for r in run.rounds) for run in runs):
        plots.overlaid_accuracy(curves,
                                out / "compare_accuracy_vs_time.png", against="sim_seconds")
    return table, figure


def results_table(summary: dict[str, Any]) -> Table:
    """The one-run results table ``simulate``, ``report`` and a deployed ServerApp print."""
    table = Table(title="fedsparse results", show_header=False)
    acc = summary["accuracy"]
    by_density = summary.get("accuracy_by_density") or {}
    rows = [
        ("method / strategy", f"{summary['method']} / {summary['strategy']}"),
        ("dataset / model", f"{summary['dataset']} / {summary['model']}"),
        ("clients (per round)", f"{summary['num_clients']} ({summary['clients_per_round']})"),
        ("rounds", str(summary["rounds"])),
        ("accuracy mean (client-reported)", fmt(acc.get("mean"))),
        ("accuracy bottom decile (client-reported)", fmt(acc.get("bottom_decile"))),
        ("accuracy global model (server-computed)", fmt(acc.get("global"))),
        *((f"accuracy at density {d}", fmt(v)) for d, v in by_density.items()),
        ("clients failed / updates rejected",
         f"{summary['failures']['clients_failed']} / {summary['failures'].get('updates_rejected', 0)}"),
        ("wall time (s)", f"{summary['wall_seconds']:.1f}"),
    ]
    cost = summary.get("cost") or {}
    if cost.get("density") is not None:
        rows[-1:-1] = [
            ("density (mean)", fmt(cost["density"])),
            ("FLOPs / memory vs dense", f"{fmt(cost['train_flops_ratio'])} / "
                                        f"{fmt(cost['memory_bytes_ratio'])}"),
            ("upload / download vs dense", f"{fmt(cost['upload_bytes_ratio'])} / "
                                           f"{fmt(cost['download_bytes_ratio'])}"),
            ("budget violations", str(summary.get("budget", {}).get("violations", 0))),
        ]
    clock = summary.get("clock")
    if clock:
        reached = clock.get("time_to_target")
        rows[-1:-1] = [
            ("simulated time total (s)", f"{clock['total_seconds']:.1f}"),
            (f"simulated time to {fmt(clock.get('target_accuracy'))} (s)",
             "not reached" if reached is None else f"{reached:.1f}"),
            ("clients late / surplus", f"{clock['clients_late']} / {clock['clients_surplus']}"),
        ]
    for key, value in rows:
        table.add_row(key, value)
    if summary.get("compare_with"):
        table.caption = f"compare with {summary['compare_with']}"
    return table


def results_text(summary: dict[str, Any], width: int = 100) -> str:
    """The results table as plain text (for logs)."""
    from rich.console import Console

    console = Console(record=True, width=width, file=io.StringIO())
    console.print(results_table(summary))
    return console.export_text()
