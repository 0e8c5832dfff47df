"""Run a suite: tuning runs, selection on validation accuracy, reported runs, the report.

Every run is an ordinary ``run_experiment`` call (the code path of ``fedsparse simulate``) into
``<out>/runs/<entry>/<run>``. One after another, runs share this process; ``parallel > 1`` runs
each in a child process with its share of the CPUs. The manifest is saved after every run, so
a stop (Ctrl-C, exit 130) keeps what finished and the next call runs only what is missing.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsparse.bench.manifest import (
    RUNS_DIR,
    SUITE_COPY,
    Manifest,
    RunStatus,
    config_hash,
    run_folder,
    source_commit,
)
from fedsparse.bench.suite import (
    PlannedRun,
    Suite,
    base_tree,
    check_plan,
    load_suite,
    report_runs,
    tuning_runs,
)
from fedsparse.config import dump_config
from fedsparse.errors import ConfigError, FedsparseError
from fedsparse.parallel import cores
from fedsparse.results import SUMMARY_FILE
from fedsparse.simulation.stopping import Interrupted

#: a child run's standard error, in its run folder
WORKER_LOG = "bench-worker.log"


@dataclass(frozen=True)
class BenchOptions:
    #: runs at once (each in its own process, with cores // parallel CPUs)
    parallel: int = 1
    #: run on an existing Ray cluster instead of this machine
    ray_address: str | None = None


class Listener:
    """What a front end (the CLI's progress bar) is told; every method may be left as is."""

    def planned(self, total: int, done: int) -> None: ...

    def started(self, key: str) -> None: ...

    def round_done(self, key: str, server_round: int, rounds: int) -> None: ...

    def finished(self, key: str, status: RunStatus) -> None: ...

    def note(self, line: str) -> None: ...


def run_suite(suite_path: Path, out: Path, options: BenchOptions = BenchOptions(),
              listener: Listener | None = None, command: str = "") -> Path:
    """Run (or resume) the suite in ``suite_path`` into ``out``; write its report there."""
    listener = listener or Listener()
    if options.parallel < 1:
        raise ConfigError("--parallel must be at least 1")
    suite = load_suite(suite_path)
    tree = base_tree(suite, suite_path)
    total = check_plan(suite, tree)
    manifest = Manifest.open(out, suite.name)
    manifest.command = command or manifest.command
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(suite_path, out / SUITE_COPY)
    _forget_dropped(suite, manifest, out, listener)
    manifest.save(out)
    tune = tuning_runs(suite, tree)
    listener.planned(total, sum(1 for r in manifest.runs.values() if r.status == "done"))
    _execute(tune, manifest, out, options, listener)
    report: list[PlannedRun] = []
    for entry in suite.entries:
        point = select(suite, entry.name, manifest, out)
        if point is None:
            for run in report_runs(suite, tree, entry, 0):
                manifest.runs[run.key] = RunStatus(config_hash(run.config), "report", entry.name,
                                                   run.seed, -1, "failed",
                                                   manifest.selection[entry.name]["error"])
                listener.finished(run.key, manifest.runs[run.key])
            continue
        report += report_runs(suite, tree, entry, point)
    manifest.save(out)
    _execute(report, manifest, out, options, listener)
    from fedsparse.bench.leaderboard import write_report

    write_report(out)
    return out


def _forget_dropped(suite: Suite, manifest: Manifest, out: Path, listener: Listener) -> None:
    """Runs of entries or seeds the suite no longer has leave the manifest and the folder."""
    wanted_entries = {e.name for e in suite.entries}
    for key, status in list(manifest.runs.items()):
        seeds = suite.tune.seeds if status.stage == "tune" else suite.seeds
        if status.entry not in wanted_entries or status.seed not in seeds:
            shutil.rmtree(run_folder(out, key), ignore_errors=True)
            del manifest.runs[key]
            listener.note(f"dropped {key}: no longer in the suite")
    runs = out / RUNS_DIR
    for folder in runs.iterdir() if runs.is_dir() else ():
        if folder.name not in wanted_entries:
            shutil.rmtree(folder, ignore_errors=True)


def select(suite: Suite, entry_name: str, manifest: Manifest, out: Path) -> int | None:
    """The entry's grid point with the best mean **validation** accuracy over the tuning seeds
    (ties: the first point); test accuracy is never read here. None: no point finished."""
    entry = next(e for e in suite.entries if e.name == entry_name)
    points = entry.points()
    if len(points) < 2:
        manifest.selection[entry_name] = {"point": 0, "values": points[0] if points else {},
                                          "val": {}}
        return 0
    scores: dict[int, float] = {}
    for i in range(len(points)):
        values = [validation_accuracy(out, f"{entry_name}/tune-{i}-s{seed}", manifest)
                  for seed in suite.tune.seeds]
        if all(v is not None for v in values):
            scores[i] = sum(values) / len(values)  # type: ignore[arg-type]
    if not scores:
        reason = "no grid point finished tuning"
        if _lacks_validation(entry_name, len(points), suite, manifest, out):
            reason = (f"method '{entry.method}' reports no validation accuracy, so its grid cannot "
                      "be tuned: score both splits with fedsparse.method.split_scores in its "
                      "evaluate, or give the entry one grid point")
        manifest.selection[entry_name] = {"error": reason}
        return None
    best = max(scores, key=lambda i: (scores[i], -i))
    manifest.selection[entry_name] = {"point": best, "values": points[best],
                                      "val": {str(i): v for i, v in scores.items()}}
    return best


def _lacks_validation(entry: str, points: int, suite: Suite, manifest: Manifest,
                      out: Path) -> bool:
    """Whether the entry's tuning runs finished but none reported a validation accuracy."""
    keys = [f"{entry}/tune-{i}-s{seed}" for i in range(points) for seed in suite.tune.seeds]
    done = [k for k in keys if manifest.runs.get(k) and manifest.runs[k].status == "done"]
    return bool(done) and all(validation_accuracy(out, k, manifest) is None for k in done)


def validation_accuracy(out: Path, key: str, manifest: Manifest) -> float | None:
    """The run's mean validation accuracy over its clients (None: not done, or no val split)."""
    status = manifest.runs.get(key)
    if status is None or status.status != "done":
        return None
    summary = json.loads((run_folder(out, key) / SUMMARY_FILE).read_text())
    value = summary.get("accuracy", {}).get("val_mean")
    return float(value) if value is not None else None


def _prepared(run: PlannedRun, out: Path, options: BenchOptions) -> Any:
    """The run's config with where it runs and writes: its folder, its share of the CPUs."""
    sim: dict[str, Any] = {}
    if options.ray_address:
        sim["ray_address"] = options.ray_address
    elif options.parallel > 1:
        sim["num_cpus"] = max(1, cores() // options.parallel)
    config = run.config.model_copy(deep=True)
    for key, value in sim.items():
        setattr(config.simulation, key, value)
    config.output.dir = run_folder(out, run.key).parent
    return config


def _execute(runs: list[PlannedRun], manifest: Manifest, out: Path, options: BenchOptions,
             listener: Listener) -> None:
    pending = []
    for run in runs:
        status = RunStatus(config_hash(run.config), run.stage, run.entry, run.seed, run.point)
        if manifest.needs_run(out, run.key, status):
            pending.append(run)
    manifest.save(out)
    if options.parallel > 1 or options.ray_address:
        _execute_children(pending, manifest, out, options, listener)
        return
    for run in pending:
        _run_here(run, manifest, out, options, listener)


def _run_here(run: PlannedRun, manifest: Manifest, out: Path, options: BenchOptions,
              listener: Listener) -> None:
    """One run in this process; a stop marks it unfinished (its folder removed) and ends the
    suite with exit 130."""
    from fedsparse.simulation.runner import run_experiment

    status = manifest.runs[run.key]
    folder = run_folder(out, run.key)
    folder.mkdir(parents=True)
    listener.started(run.key)
    started = time.perf_counter()
    rounds = run.config.rounds
    try:
        run_experiment(_prepared(run, out, options), run_dir=folder.resolve(),
                       on_round=lambda r: listener.round_done(run.key, r["round"], rounds))
        status.status, status.error = "done", None
    except (Interrupted, KeyboardInterrupt):
        _stopped([run.key], manifest, out)
    except FedsparseError as exc:
        status.status, status.error = "failed", str(exc)
    except Exception as exc:  # a bug in one run must not lose the suite's others
        status.status, status.error = "failed", f"{type(exc).__name__}: {exc}"
    status.seconds = round(time.perf_counter() - started, 1)
    status.commit = source_commit()
    manifest.save(out)
    listener.finished(run.key, status)


def _stopped(keys: list[str], manifest: Manifest, out: Path) -> None:
    """Runs stopped half way are no result: forget them, keep the others, exit 130."""
    for key in keys:
        manifest.runs[key].status = "pending"
        shutil.rmtree(run_folder(out, key), ignore_errors=True)
    manifest.save(out)
    done = sum(1 for r in manifest.runs.values() if r.status == "done")
    raise Interrupted(f"suite stopped with {done} runs finished (kept in {out}); run the same "
                      "command again to continue", signal.SIGINT)


def _execute_children(runs: list[PlannedRun], manifest: Manifest, out: Path,
                      options: BenchOptions, listener: Listener) -> None:
    """Up to ``parallel`` runs at once, each a child process running ``fedsparse.bench.worker``."""
    queue = list(runs)
    active: dict[str, tuple[subprocess.Popen[bytes], float]] = {}
    width = options.parallel
    try:
        while queue or active:
            while queue and len(active) < width:
                run = queue.pop(0)
                active[run.key] = (_spawn(run, out, options), time.perf_counter())
                listener.started(run.key)
            time.sleep(0.5)
            for key, (child, started) in list(active.items()):
                if child.poll() is None:
                    continue
                del active[key]
                _child_finished(key, child, started, manifest, out, listener)
    except KeyboardInterrupt:
        for child, _ in active.values():
            child.send_signal(signal.SIGINT)
        for child, _ in active.values():
            child.wait()
        _stopped(list(active), manifest, out)


def _spawn(run: PlannedRun, out: Path, options: BenchOptions) -> subprocess.Popen[bytes]:
    folder = run_folder(out, run.key)
    folder.mkdir(parents=True)
    request = folder / "bench-request.yaml"
    request.write_text(dump_config(_prepared(run, out, options)))
    env = {**os.environ, "NUMPY_MADVISE_HUGEPAGE": os.environ.get("NUMPY_MADVISE_HUGEPAGE", "0")}
    with (folder / WORKER_LOG).open("wb") as log:  # a pipe could fill and block the child
        return subprocess.Popen([sys.executable, "-m", "fedsparse.bench.worker", str(request),
                                 str(folder)], stdout=subprocess.DEVNULL, stderr=log, env=env)


def _child_finished(key: str, child: subprocess.Popen[bytes], started: float, manifest: Manifest,
                    out: Path, listener: Listener) -> None:
    status = manifest.runs[key]
    log = run_folder(out, key) / WORKER_LOG
    stderr = log.read_text(errors="replace").strip() if log.is_file() else ""
    if child.returncode == 0:
        status.status, status.error = "done", None
    else:
        last = stderr.splitlines()[-1] if stderr else f"exit status {child.returncode}"
        status.status, status.error = "failed", last
    status.seconds = round(time.perf_counter() - started, 1)
    status.commit = source_commit()
    manifest.save(out)
    listener.finished(key, status)


def command_line(argv: list[str] | None = None) -> str:
    """How the suite was started, as a shell would take it."""
    args = sys.argv[1:] if argv is None else argv
    return "fedsparse " + " ".join(shlex.quote(a) for a in args)

