"""``fedsparse`` command line: every subcommand builds from one validated config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedsparse.errors import ConfigError, FedsparseError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Federated learning simulation for sparse, budget-constrained clients.")
console = Console(stderr=True)


def _fmt(value: Any) -> str:
    from fedsparse.report import fmt

    return fmt(value)


def results_table(summary: dict[str, Any]) -> Table:
    """The results table (``fedsparse.report``, imported when needed: ``--help`` stays quick)."""
    from fedsparse.report import results_table as table

    return table(summary)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        Console().print(f"fedsparse {version('fedsparse')} (flwr {version('flwr')}, "
                        f"torch {version('torch')}, ray {version('ray')})", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="print the versions and exit")] = False,
) -> None:
    """Federated learning simulation for sparse, budget-constrained clients."""


@app.command()
def simulate(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="experiment YAML "
                                                "(default: configs/quickstart.yaml)")] = None,
    clients: Annotated[int | None, typer.Option(help="number of clients")] = None,
    rounds: Annotated[int | None, typer.Option(help="federated rounds")] = None,
    fraction: Annotated[float | None, typer.Option(help="share of clients per round")] = None,
    dataset: Annotated[str | None, typer.Option(help="synthetic, fashion-mnist, mnist, emnist, "
                                                "cifar10, cifar100, femnist")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="folder with the dataset's files")] = None,
    partition: Annotated[str | None, typer.Option(help="natural, iid, dirichlet, shards")] = None,
    alpha: Annotated[float | None, typer.Option(help="Dirichlet concentration")] = None,
    model: Annotated[str | None, typer.Option(help="mlp, logreg, leaf-cnn, lenet, cnn-bn, "
                                              "resnet18, vgg11-bn")] = None,
    local_epochs: Annotated[int | None, typer.Option(help="local epochs per round")] = None,
    batch_size: Annotated[int | None, typer.Option(help="local batch size")] = None,
    lr: Annotated[float | None, typer.Option(help="local learning rate")] = None,
    method: Annotated[str | None, typer.Option(
        help="a name from 'fedsparse methods', module:Class or file.py:Class")] = None,
    strategy: Annotated[str | None, typer.Option(help="a name from 'fedsparse strategies', "
                                                 "module:Class or file.py:Class")] = None,
    budgets: Annotated[str | None, typer.Option(help="budget tiers as density:share pairs, "
                                                "e.g. 0.1:0.5,0.3:0.3,1.0:0.2")] = None,
    seed: Annotated[int | None, typer.Option(help="seed for data, sampling and init")] = None,
    inject_failures: Annotated[float | None, typer.Option(
        help="share of training clients made to crash or hang (testing fault tolerance)")] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="run on an existing Ray cluster, e.g. 10.0.0.5:6379 (fedsparse installed on every node)")]
    = None,
    gpus_per_client: Annotated[float | None, typer.Option(
        help="GPUs per simulated client, e.g. 0.25: four clients share a GPU (default 0: CPU)")]
    = None,
    out: Annotated[Path | None, typer.Option(help="parent folder of run folders")] = None,
    name: Annotated[str | None, typer.Option(help="run name (folder prefix)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override any key: "
                                                   "--set train.momentum=0.9")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue a killed run from its last "
                                                "checkpoint (other options are ignored)")] = None,
    tensorboard: Annotated[bool, typer.Option(help="also write TensorBoard scalars "
                                              "(needs the tensorboard package)")] = False,
    debug: Annotated[bool, typer.Option(help="show tracebacks")] = False,
) -> None:
    """Run a federated simulation and write its run folder."""
    from fedsparse.budgets import parse_budget_shorthand
    from fedsparse.config import load_config

    flags = {
        "num_clients": clients, "rounds": rounds, "fraction": fraction,
        "data.dataset": dataset, "data.data_dir": str(data_dir) if data_dir else None,
        "partition.kind": partition, "partition.alpha": alpha, "model.name": model,
        "train.local_epochs": local_epochs, "train.batch_size": batch_size, "train.lr": lr,
        "method.name": method, "strategy.name": strategy,
        "simulation.inject_failures": inject_failures, "simulation.ray_address": ray_address,
        "simulation.gpus_per_client": gpus_per_client,
        "seed": seed, "output.dir": str(out) if out else None, "output.name": name,
    }
    with _user_errors(debug):
        if budgets is not None:
            flags["budgets.tiers"] = [t.model_dump() for t in parse_budget_shorthand(budgets)]
        if resume is not None:
            if not (resume / "config.yaml").is_file():
                raise FedsparseError(f"{resume} is not a run folder (no config.yaml): pass the "
                                     "folder of the run to continue")
            cfg = load_config(resume / "config.yaml")
        else:
            cfg = load_config(config, set_, flags)
        for note in cfg.notes:
            console.print(f"note: {note}", highlight=False)
        writer_cls = _tensorboard_writer() if tensorboard else None
        _run_with_progress(cfg, writer_cls, resume)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run folder written by fedsparse simulate")],
    debug: Annotated[bool, typer.Option(help="show tracebacks")] = False,
) -> None:
    """Print a run's summary and (re)draw its plots."""
    from fedsparse.report import draw_plots, load_run

    with _user_errors(debug):
        run = load_run(run_dir)
        if run.summary:
            Console().print(results_table({**_SUMMARY_DEFAULTS, **run.summary}))
            Console().print(f"run folder: {run.path}", highlight=False, soft_wrap=True)
        drawn, skipped = draw_plots(run)
        for name in drawn:
            Console().print(f"plot: {run.path / 'plots' / name}")
        for line in [*(f"warning: {n}" for n in run.notes), *(f"missing: {m}" for m in run.missing),
                     *(f"skipped: {s}" for s in skipped)]:
            console.print(line)


_SUMMARY_DEFAULTS: dict[str, Any] = {
    "method": "?", "strategy": "?", "dataset": "?", "model": "?", "num_clients": "?",
    "clients_per_round": "?", "rounds": "?", "accuracy": {}, "failures": {"clients_failed": 0},
    "wall_seconds": 0.0,
}


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="two or more run folders")],
    out: Annotated[Path, typer.Option(help="folder for compare.md and the overlaid curves")] = Path(
        "compare"),
    debug: Annotated[bool, typer.Option(help="show tracebacks")] = False,
) -> None:
    """Put runs side by side: one table, a markdown copy, and overlaid accuracy curves."""
    from fedsparse.report import compare_stacked, legend_labels, load_run, write_comparison

    with _user_errors(debug):
        if len(run_dirs) < 2:
            raise FedsparseError(f"compare needs two or more run folders, got {len(run_dirs)}: "
                                 "name the runs to put side by side ('fedsparse report' shows one)")
        if out.exists() and not out.is_dir():
            raise FedsparseError(f"--out {out} is a file, not a folder: name a folder for "
                                 "compare.md and the overlaid curves")
        runs = [load_run(path) for path in run_dirs]
        header, rows = compare_stacked(runs)
        table = Table(show_header=True, header_style="bold")
        for name in header:
            table.add_column(name, overflow="fold")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        for i, (label, run) in enumerate(zip(legend_labels(runs), runs, strict=True)):
            Console().print(f"[{i + 1}] {label}: {run.path}", highlight=False, soft_wrap=True)
        md, png = write_comparison(runs, out)
        Console().print(f"markdown: {md}\nplot: {png}", soft_wrap=True)


@app.command("methods")
def list_methods(
    debug: Annotated[bool, typer.Option(help="show tracebacks")] = False,
) -> None:
    """List the methods --method accepts, one line each."""
    from fedsparse.clients.registry import available

    with _user_errors(debug):
        _print_names(available(), "Also: --method package.module:Class or --method "
                                  "path/to/file.py:Class (a subclass of fedsparse.method.Method)")


@app.command("strategies")
def list_strategies() -> None:
    """List the strategies --strategy accepts, one line each."""
    from fedsparse.strategies import available

    _print_names(available(), "Also: --strategy package.module:Class or --strategy "
                              "path/to/file.py:Class")


def _print_names(rows: list[tuple[str, str]], footer: str) -> None:
    table = Table(show_header=True, header_style="bold")
    table.add_column("name")
    table.add_column("what it does")
    for name, line in rows:
        table.add_row(name, line)
    Console().print(table)
    Console().print(footer)


def _tensorboard_writer() -> Any:
    """torch's SummaryWriter, or a one-line error saying how to get it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise FedsparseError("--tensorboard needs the tensorboard package: run "
                             "'pip install tensorboard' or drop --tensorboard") from None
    return SummaryWriter


def _run_with_progress(cfg: Any, writer_cls: Any = None, resume: Path | None = None) -> None:
    from fedsparse.simulation.runner import run_experiment

    writer = None

    progress = Progress(TextColumn("[bold]round"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                        console=console, transient=False)
    task = progress.add_task("rounds", total=cfg.rounds, status="starting Ray...")
    started: list[bool] = []

    def on_start(run_dir: Path) -> None:
        """Every input has been checked: show the run folder and start the progress bar (a bad
        input before this point prints its one line alone)."""
        nonlocal writer
        console.print(f"run folder: {run_dir}")
        progress.start()
        started.append(True)
        if writer_cls is not None:
            writer = writer_cls(log_dir=str(run_dir / "tensorboard"))

    def on_round(record: dict[str, Any]) -> None:
        if writer is not None:
            for key, value in record.items():
                if key != "round" and isinstance(value, (int, float)):
                    writer.add_scalar(key, value, record["round"])
            writer.flush()
        status = f"loss {_fmt(record.get('train_loss'))}"
        if record.get("accuracy_mean") is not None:
            status += f"  acc {record['accuracy_mean']:.3f}"
        progress.update(task, completed=record["round"], status=status)

    try:
        result = run_experiment(cfg, run_dir=resume.resolve() if resume else None,
                                on_round=on_round, on_start=on_start, resume=resume is not None)
    finally:
        if started:
            progress.stop()
        if writer is not None:
            writer.close()
    Console().print(results_table(result.summary))
    Console().print(f"run folder: {result.run_dir}\nplots: {result.run_dir / 'plots'}",
                    highlight=False, soft_wrap=True)


@app.command()
def bench(
    target: Annotated[list[str], typer.Argument(
        help="SUITE.yaml to run (or resume), or 'report DIR' to (re)write a suite folder's report",
        metavar="SUITE.yaml | report DIR")],
    out: Annotated[Path | None, typer.Option(help="suite folder (default: bench/<suite name>)")]
    = None,
    parallel: Annotated[int, typer.Option(help="runs at once, each in its own process with its "
                                          "share of the CPUs")] = 1,
    ray_address: Annotated[str | None, typer.Option(
        help="run the suite's runs on an existing Ray cluster, e.g. 10.0.0.5:6379")] = None,
    debug: Annotated[bool, typer.Option(help="show tracebacks")] = False,
) -> None:
    """Run a benchmark suite: tune every entry on validation, report seeds, write a leaderboard."""
    with _user_errors(debug):
        if target[0] == "report":
            if len(target) != 2:
                raise ConfigError("usage: fedsparse bench report DIR (one suite folder)")
            from fedsparse.bench.leaderboard import write_report

            md, csv_path, pictures = write_report(Path(target[1]))
            Console().print(Path(md).read_text(), highlight=False, soft_wrap=True)
            for path in [csv_path, *pictures]:
                Console().print(f"wrote {path}", highlight=False, soft_wrap=True)
            return
        if len(target) != 1:
            raise ConfigError("usage: fedsparse bench SUITE.yaml [--out DIR] (one suite file)")
        _run_bench(Path(target[0]), out, parallel, ray_address)


def _run_bench(suite_path: Path, out: Path | None, parallel: int, ray_address: str | None) -> None:
    from rich.progress import TimeRemainingColumn

    from fedsparse.bench.execute import BenchOptions, Listener, command_line, run_suite
    from fedsparse.bench.leaderboard import REPORT_MD
    from fedsparse.bench.suite import load_suite

    folder = out or Path("bench") / load_suite(suite_path).name
    progress = Progress(TextColumn("[bold]runs"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                        TextColumn("eta"), TimeRemainingColumn(), console=console)
    task = progress.add_task("runs", total=None, status="checking the suite...")

    class Bar(Listener):
        def planned(self, total: int, done: int) -> None:
            progress.update(task, total=total, completed=done, status="")

        def started(self, key: str) -> None:
            progress.update(task, status=key)

        def round_done(self, key: str, server_round: int, rounds: int) -> None:
            progress.update(task, status=f"{key} round {server_round}/{rounds}")

        def finished(self, key: str, status: Any) -> None:
            """One line per run as well as the bar: a log file (nohup) shows progress too."""
            progress.advance(task)
            done = f"{progress.tasks[0].completed:g}/{progress.tasks[0].total or 0:g}"
            if status.status == "failed":
                progress.console.print(f"failed {key} ({done}): {status.error}", highlight=False,
                                       soft_wrap=True)
            else:
                progress.console.print(f"done {key} ({done}, {status.seconds or 0:.0f} s)",
                                       highlight=False, soft_wrap=True)

        def note(self, line: str) -> None:
            progress.console.print(f"note: {line}", highlight=False, soft_wrap=True)

    with progress:
        result = run_suite(suite_path, folder, BenchOptions(parallel, ray_address), Bar(),
                           command_line())
    Console().print((result / REPORT_MD).read_text(), highlight=False, soft_wrap=True)
    Console().print(f"suite folder: {result}", highlight=False, soft_wrap=True)


deploy_app = typer.Typer(no_args_is_help=True, help="Real deployments (Flower SuperLink/SuperNodes).")
app.add_typer(deploy_app, name="deploy")


@deploy_app.command("compose")
def deploy_compose(
    clients: Annotated[int, typer.Option(help="SuperNodes, one per partition")] = 3,
    budgets: Annotated[str, typer.Option(help="tiers as density:share[:device], assigned by --seed")]
    = "1.0:1",
    seed: Annotated[int, typer.Option(help="seed of the tier assignment")] = 0,
    out: Annotated[Path | None, typer.Option(help="a new or empty folder for compose.yml, "
                                             "compose.tls.yml, .env and the folders they mount")]
    = None,
    force: Annotated[bool, typer.Option(help="write into a non-empty folder (only the files "
                                        "this command writes are replaced)")] = False,
    debug: Annotated[bool, typer.Option(help="show tracebacks")] = False,
) -> None:
    """Write docker compose files for N SuperNodes with their partition ids and budgets."""
    from fedsparse.budgets import assign_budgets, parse_budget_shorthand
    from fedsparse.clock import resolve_profiles
    from fedsparse.deploy.compose import FLOWER_UID, give_to_flower, write_compose

    with _user_errors(debug):
        if clients < 1:
            raise ConfigError("--clients must be at least 1")
        if out is None:
            raise ConfigError("--out is required: name a new or empty folder for the compose "
                              "files, e.g. --out deploy")
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file, not a folder: name a new or empty folder")
        if out.is_dir() and any(out.iterdir()) and not force:
            raise ConfigError(f"--out {out} is not empty: name a new or empty folder, or add "
                              "--force to replace only the files this command writes")
        tiers = parse_budget_shorthand(budgets)
        known = resolve_profiles({})
        for tier in tiers:
            if tier.device is not None and tier.device not in known:
                raise ConfigError(f"--budgets names unknown device profile '{tier.device}': use "
                                  f"one of {', '.join(sorted(known))}")
        plain, tls, created = write_compose(out, assign_budgets(tiers, clients, seed))
        console.print(f"wrote {plain}, {tls}, {out / '.env'} and the folders they mount "
                      f"(state, runs, data/server, data/supernode-0..{clients - 1})", soft_wrap=True)
        writable = [out / "state", out / "runs"]
        mine = [folder for folder in writable if folder in created]
        if mine != writable or not give_to_flower(mine):
            console.print(f"Flower's images run as uid {FLOWER_UID}: run 'sudo chown -R "
                          f"{FLOWER_UID}:{FLOWER_UID} {' '.join(map(str, writable))}' before "
                          "'docker compose up'", soft_wrap=True)
        console.print(f"put each node's dataset files in its data folder (e.g. "
                      f"{out / 'data' / 'supernode-0'}) and the server's in {out / 'data' / 'server'}; "
                      "Synthetic data needs none", soft_wrap=True)


class _user_errors:
    """Turn FedsparseError into one line and an exit code; ``--debug`` shows the traceback."""

    def __init__(self, debug: bool) -> None:
        self.debug = debug

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or self.debug:
            return False
        if isinstance(exc, FedsparseError):
            from fedsparse.simulation.stopping import Interrupted

            prefix = "interrupted:" if isinstance(exc, Interrupted) else "[red]error:[/red]"
            console.print(f"{prefix} {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code)
        if isinstance(exc, KeyboardInterrupt):
            console.print("interrupted: finished rounds stay in the run folder")
            raise typer.Exit(130)
        return False


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # before any import of tqdm reads it
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # numpy asks the kernel for huge pages for arrays over 4 MiB; on the development VM the first
    # touch of those pages made loading Fashion-MNIST's pool 1.5-2 s instead of 0.4 s, before
    # Ray may start (the driver reached it 0.6-1.2 s later in 3 interleaved pairs; rounds alike).
    # Read once, at numpy's import, and passed on to the Ray workers with the environment
    os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
    app(prog_name="fedsparse")


if __name__ == "__main__":
    main()
