"""A suite's report, generated from its run folders: ``leaderboard.md``, ``leaderboard.csv`` and
pictures. Nothing in it is typed by hand; its header says which commit, date, machine and
command produced it.

Costs are ratios to dense training of the same work (the same clients, rounds and epochs), so
entries compare on one scale: training FLOPs, the training clients do at evaluation (fine-tuning,
a gate fit: charged, in their own column and in the total), memory, peak memory and upload.
"""

from __future__ import annotations

import csv
import json
import math
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedsparse.bench.manifest import SUITE_COPY, Manifest, run_folder, source_commit
from fedsparse.bench.stats import Estimate, estimate, paired
from fedsparse.bench.suite import Suite, load_suite
from fedsparse.errors import FedsparseError
from fedsparse.parallel import cores
from fedsparse.results import SUMMARY_FILE, read_rounds

REPORT_MD = "leaderboard.md"
REPORT_CSV = "leaderboard.csv"
HEADLINE_MD = "headline.md"
PLOTS = "plots"


def _cost(summary: dict[str, Any], key: str) -> float | None:
    value = (summary.get("cost") or {}).get(key)
    return float(value) if value is not None else None


def _per_dense(summary: dict[str, Any], key: str) -> float | None:
    dense = _cost(summary, "dense_train_flops_total")
    value = _cost(summary, key)
    return value / dense if value is not None and dense else None


#: figure -> how to read it from a run's summary.json (None: the run has no such figure)
METRICS: dict[str, Any] = {
    "accuracy": lambda s: s["accuracy"].get("mean"),
    "bottom_decile": lambda s: s["accuracy"].get("bottom_decile"),
    "global": lambda s: s["accuracy"].get("global"),
    "val": lambda s: s["accuracy"].get("val_mean"),
    "train_flops": lambda s: _per_dense(s, "train_flops_total"),
    "eval_flops": lambda s: _per_dense(s, "eval_train_flops_final"),
    "total_flops": lambda s: None if _per_dense(s, "train_flops_total") is None else
    _per_dense(s, "train_flops_total") + (_per_dense(s, "eval_train_flops_final") or 0.0),
    "memory": lambda s: _cost(s, "memory_bytes_ratio"),
    "peak_memory": lambda s: _cost(s, "training_bytes_peak_ratio"),
    "upload": lambda s: _cost(s, "upload_bytes_ratio"),
    "time_to_target": lambda s: (s.get("clock") or {}).get("time_to_target"),
    "wall_seconds": lambda s: s.get("wall_seconds"),
    # width methods: the full-width global model on every client's split (the authors' figure)
    "full_width": lambda s: ((s.get("server_scores") or {}).get("full-width-accuracy")
                             or {}).get("mean"),
}


@dataclass
class EntryResult:
    """An entry's reported runs, by seed."""

    name: str
    method: str
    selected: dict[str, Any]
    summaries: dict[int, dict[str, Any]] = field(default_factory=dict)
    label: str | None = None
    rounds: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def method_cell(self) -> str:
        """The method, with the suite's label or what its runs say of themselves: pFedGate runs
        whose gate can pick no block at a budget (every batch the same mask) are a fixed mask;
        width methods that score with the logits of their own labels only say so (a score
        other methods' rows do not get)."""
        labels = [self.label] if self.label else []
        fixed = sorted({density for summary in self.summaries.values()
                        for density, choices in (summary.get("gate_choices") or {}).items()
                        if not choices})
        if fixed and not labels:
            tiers = {d for summary in self.summaries.values() for d in summary.get("gate_choices") or {}}
            labels.append("fixed mask" if set(fixed) == tiers else f"fixed mask at s={', '.join(fixed)}")
        # a width method scored on its own labels' logits only (the authors' local accuracy)
        if any((summary.get("width") or {}).get("label_split") == "train-eval"
               for summary in self.summaries.values()):
            labels.append("label-masked scoring")
        return f"{self.method} ({'; '.join(labels)})" if labels else self.method

    def values(self, metric: str) -> dict[int, float]:
        """``metric`` of every seed that has it."""
        out = {}
        for seed, summary in self.summaries.items():
            value = METRICS[metric](summary)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                out[seed] = float(value)
        return out

    def estimate(self, metric: str) -> Estimate:
        return estimate(list(self.values(metric).values()))

    def widths(self) -> dict[str, Estimate]:
        """Mean accuracy of every client at every width it could hold (server-scored), over
        seeds: the same clients at each width, unlike the per-tier figures."""
        return self._by_density(lambda summary: {
            key.removeprefix("width-").removesuffix("-accuracy"): value["mean"]
            for key, value in (summary.get("server_scores") or {}).items()
            if key.startswith("width-") and key.endswith("-accuracy")})

    def tiers(self) -> dict[str, Estimate]:
        """Mean accuracy per declared density, over seeds."""
        return self._by_density(lambda summary: summary.get("accuracy_by_density") or {})

    def _by_density(self, read: Any) -> dict[str, Estimate]:
        """``read(summary)`` -> {density: value} of every seed, estimated per density, in
        increasing density."""
        values: dict[str, list[float]] = {}
        for summary in self.summaries.values():
            for density, value in read(summary).items():
                values.setdefault(density, []).append(float(value))
        return {d: estimate(v) for d, v in sorted(values.items(), key=lambda kv: float(kv[0]))}


@dataclass
class SuiteResults:
    suite: Suite
    manifest: Manifest
    entries: list[EntryResult]


def collect(folder: Path) -> SuiteResults:
    """Read a suite folder: its suite, manifest and every reported run's summary and rounds."""
    folder = Path(folder)
    if not Manifest.path(folder).is_file():
        raise FedsparseError(f"{folder} is not a suite folder (no manifest.json): pass the --out "
                             "folder of 'fedsparse bench'")
    suite = load_suite(folder / SUITE_COPY)
    manifest = Manifest.open(folder, suite.name)
    entries = []
    for entry in suite.entries:
        result = EntryResult(entry.name, entry.method,
                             manifest.selection.get(entry.name, {}).get("values", {}),
                             label=entry.label)
        for key, status in sorted(manifest.runs.items()):
            if status.entry != entry.name:
                continue
            if status.status == "failed":
                result.failed.append((key, status.error or "failed"))
            elif status.status == "done" and status.stage == "report":
                path = run_folder(folder, key)
                try:
                    result.summaries[status.seed] = json.loads((path / SUMMARY_FILE).read_text())
                    result.rounds[status.seed] = read_rounds(path)
                except (OSError, json.JSONDecodeError, FedsparseError) as exc:
                    result.failed.append((key, f"unreadable run folder: {exc}"))
        entries.append(result)
    return SuiteResults(suite, manifest, entries)


def _pm(e: Estimate, digits: int = 3) -> str:
    if e.n == 0:
        return "-"
    if e.n == 1:
        return f"{e.mean:.{digits}f}"
    return f"{e.mean:.{digits}f} ± {e.sd:.{digits}f}"


def _interval(e: Estimate, digits: int = 3) -> str:
    return "-" if e.n < 2 else f"[{e.low:.{digits}f}, {e.high:.{digits}f}]"


def _signed(e: Estimate) -> str:
    if e.n == 0:
        return "-"
    if e.n == 1:
        return f"{e.mean:+.3f}"
    return f"{e.mean:+.3f} [{e.low:+.3f}, {e.high:+.3f}]"


def _run_commits(results: SuiteResults) -> str:
    commits = sorted({s.commit or "not recorded" for s in results.manifest.runs.values()
                      if s.status == "done"})
    return ", ".join(commits) or "-"


def header(results: SuiteResults) -> list[str]:
    suite = results.suite
    machine = f"{platform.machine()}, {cores()} cores, Python {platform.python_version()}"
    tuned = (f"tuned on validation accuracy over seeds {suite.tune.seeds}"
             if any(len(e.points()) > 1 for e in suite.entries) else "no tuning grid")
    return [f"Suite `{suite.name}`: {suite.description}".rstrip(": "),
            f"Generated by `fedsparse bench report` on {datetime.now(UTC):%Y-%m-%d %H:%M} "
            f"UTC at commit {source_commit()}, {machine}; runs by "
            f"`{results.manifest.command or '?'}` at commit {_run_commits(results)}.",
            f"Reported seeds {suite.seeds}; {tuned}; mean ± sd over seeds, 95% t-interval of the "
            "mean; costs are ratios to dense training of the same work; eval FLOPs: the training "
            "clients do before they score at the final evaluation (fine-tuning, a gate fit; pFedGate "
            "at its budget's bound), counted by the server; memory: weights, gradients and optimizer "
            "state, mean over client-rounds; peak memory: the largest client-round of those plus "
            "activations."]


def leaderboard_markdown(results: SuiteResults) -> str:
    lines = [*(f"{line}\n" for line in header(results))]
    columns = ["entry", "method", "seeds", "accuracy", "95% CI", "bottom decile", "global", "val",
               "train FLOPs", "eval FLOPs", "total FLOPs", "memory", "peak memory", "upload",
               "time to target (sim s)", "wall s", "selected"]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for e in results.entries:
        acc = e.estimate("accuracy")
        cells = [e.name, e.method_cell(), str(acc.n), _pm(acc), _interval(acc),
                 _pm(e.estimate("bottom_decile")), _pm(e.estimate("global")), _pm(e.estimate("val")),
                 *(_pm(e.estimate(m), 3) for m in ("train_flops", "eval_flops", "total_flops",
                                                   "memory", "peak_memory", "upload")),
                 _time_to_target(e), _pm(e.estimate("wall_seconds"), 0),
                 ", ".join(f"{k}={v}" for k, v in e.selected.items()) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += (_paired_lines(results) + _tier_lines(results) + _width_lines(results)
              + _selection_lines(results))
    failures = [(k, err) for e in results.entries for k, err in e.failed]
    if failures:
        lines += ["", "Failed runs (not in the figures above):", ""]
        lines += [f"- `{key}`: {err}" for key, err in failures]
    return "\n".join(lines) + "\n"


def headline_markdown(results: SuiteResults) -> str:
    """The short table a front page carries: accuracy, its paired difference against the
    baseline, total FLOPs and upload per entry, under one line saying where it came from."""
    suite, base = results.suite, _baseline(results)
    lines = [f"Suite `{suite.name}` ({suite.description}), seeds {suite.seeds}; generated by "
             f"`fedsparse bench report` on {datetime.now(UTC):%Y-%m-%d} at commit "
             f"{source_commit()} from `{results.manifest.command or '?'}` (runs at commit "
             f"{_run_commits(results)}).", ""]
    vs = f"Δ accuracy vs {base.name} [95% CI]" if base else "Δ accuracy"
    columns = ["entry", "method", "accuracy (mean ± sd)", vs, "total FLOPs", "upload"]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for e in results.entries:
        diff = ("baseline" if e is base else
                _signed(paired(e.values("accuracy"), base.values("accuracy"))) if base else "-")
        lines.append(f"| {e.name} | {e.method_cell()} | {_pm(e.estimate('accuracy'))} | {diff} | "
                     f"{_ratio(e.estimate('total_flops'))} | {_ratio(e.estimate('upload'))} |")
    return "\n".join(lines) + "\n"


def _ratio(e: Estimate) -> str:
    return "-" if e.n == 0 else f"{e.mean:.2f}x"


def _time_to_target(e: EntryResult) -> str:
    """Simulated seconds to the target over the seeds that reached it, and how many did not
    (a seed that never reached it is no time, not a missing value)."""
    clocked = [s for s in e.summaries.values() if s.get("clock")]
    if not clocked:
        return "-"
    missed = len(clocked) - len(e.values("time_to_target"))
    cell = _pm(e.estimate("time_to_target"), 1)
    return f"{cell} (not reached: {missed})" if missed else cell


def _baseline(results: SuiteResults) -> EntryResult | None:
    name = results.suite.baseline
    return next((e for e in results.entries if e.name == name), None)


def _paired_lines(results: SuiteResults) -> list[str]:
    base = _baseline(results)
    if base is None:
        return []
    lines = ["", f"Paired differences against `{base.name}` (same seeds; mean [95% CI]):", "",
             "| entry | seeds | Δ accuracy | Δ bottom decile | Δ total FLOPs |", "|---|---|---|---|---|"]
    for e in results.entries:
        if e is base:
            continue
        diff = {m: paired(e.values(m), base.values(m)) for m in ("accuracy", "bottom_decile",
                                                                  "total_flops")}
        lines.append(f"| {e.name} | {diff['accuracy'].n} | {_signed(diff['accuracy'])} | "
                     f"{_signed(diff['bottom_decile'])} | {_signed(diff['total_flops'])} |")
    return lines


def _tier_lines(results: SuiteResults) -> list[str]:
    tiers = sorted({t for e in results.entries for t in e.tiers()}, key=float)
    if not tiers:
        return []
    lines = ["", "Accuracy per declared density (mean ± sd over seeds; each tier's own clients):", "",
             "| entry | " + " | ".join(tiers) + " |", "|---|" + "---|" * len(tiers)]
    for e in results.entries:
        mine = e.tiers()
        lines.append(f"| {e.name} | " + " | ".join(_pm(mine[t]) if t in mine else "-" for t in tiers)
                     + " |")
    return lines


def _width_lines(results: SuiteResults) -> list[str]:
    widths = sorted({w for e in results.entries for w in e.widths()}, key=float)
    if not widths:
        return []
    full = any(e.values("full_width").values() for e in results.entries)
    lines = ["", "Accuracy at every width (server-scored: each client at every declared width it "
             "could hold, on its test split; full width: the whole global model on every "
             "client's split, the figure the width methods' authors report; mean ± sd over "
             "seeds):", "",
             "| entry | " + " | ".join(f"width of density {w}" for w in widths)
             + (" | full width" if full else "") + " |",
             "|---|" + "---|" * (len(widths) + full)]
    for e in results.entries:
        mine = e.widths()
        if mine:
            cells = [_pm(mine[w]) if w in mine else "-" for w in widths]
            if full:
                cells.append(_pm(e.estimate("full_width")))
            lines.append(f"| {e.name} | " + " | ".join(cells) + " |")
    return lines


def _selection_lines(results: SuiteResults) -> list[str]:
    rows = [(e.name, results.manifest.selection.get(e.name, {})) for e in results.entries]
    rows = [(n, s) for n, s in rows if s.get("val")]
    if not rows:
        return []
    lines = ["", "Tuning (mean validation accuracy of each grid point over the tuning seeds; "
             "test never read):", ""]
    for name, sel in rows:
        entry = next(e for e in results.suite.entries if e.name == name)
        points = entry.points()
        scored = ", ".join(f"{_point(points[int(i)])}: {v:.3f}" for i, v in sorted(
            sel["val"].items(), key=lambda kv: int(kv[0])))
        lines.append(f"- {name}: {scored} → {_point(points[sel['point']])}")
    return lines


def _point(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def leaderboard_rows(results: SuiteResults) -> list[dict[str, Any]]:
    """One CSV row per entry: every figure's mean, sd, interval and seed count."""
    rows = []
    base = _baseline(results)
    for e in results.entries:
        row: dict[str, Any] = {"entry": e.name, "method": e.method,
                               "selected": json.dumps(e.selected, sort_keys=True),
                               "failed_runs": len(e.failed)}
        for metric in METRICS:
            est = e.estimate(metric)
            row.update({f"{metric}_mean": est.mean, f"{metric}_sd": est.sd,
                        f"{metric}_low": est.low, f"{metric}_high": est.high, f"{metric}_n": est.n})
        if base is not None and e is not base:
            diff = paired(e.values("accuracy"), base.values("accuracy"))
            row.update({"paired_accuracy_diff": diff.mean, "paired_accuracy_low": diff.low,
                        "paired_accuracy_high": diff.high})
        rows.append(row)
    return rows


def write_report(folder: Path) -> tuple[Path, Path, list[Path]]:
    """Write the leaderboard (Markdown, CSV) and its pictures into the suite folder."""
    folder = Path(folder)
    results = collect(folder)
    md = folder / REPORT_MD
    md.write_text(leaderboard_markdown(results))
    (folder / HEADLINE_MD).write_text(headline_markdown(results))
    rows = leaderboard_rows(results)
    table = folder / REPORT_CSV
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    from fedsparse.bench.figures import draw_figures

    return md, table, draw_figures(results, folder / PLOTS)
