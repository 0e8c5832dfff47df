"""Run one experiment on Flower's Simulation Runtime with its Ray backend.

Ray needs short socket paths, so its session lives in a short temporary folder; its logs are
moved into the run folder when the run ends and the folder removed, and ``ray.shutdown()``
always runs so no Ray process outlives the experiment.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedsparse.budgets import Budget, budget_tiers
from fedsparse.checkpoint import (
    Checkpoint,
    drop_client_states_after,
    first_difference,
    load_checkpoint,
)
from fedsparse.clock import ClockSettings, build_clock, time_to_accuracy
from fedsparse.config import ExperimentConfig
from fedsparse.costs import CostModel
from fedsparse.data.federation import (
    Federation,
    build_federation,
    drop_shared_pool,
    fingerprints,
    forget_cached_pool,
    load_shared_pool,
    save_partitions,
    save_pool,
    unpartitioned,
)
from fedsparse.device import gpu_request_problem, visible_gpus
from fedsparse.errors import ConfigError, SimulationError
from fedsparse.experiment import (
    budgets_of,
    build_method,
    check_fits_in_memory,
    method_class,
    warmup_epochs,
)
from fedsparse.method import ServerSetup
from fedsparse.models import build_model
from fedsparse.results import (
    PARTITIONS_FILE,
    POOL_DIR,
    RunRecorder,
    check_output_dir,
    new_run_dir,
)
from fedsparse.simulation.ray_start import BackgroundRay
from fedsparse.simulation.server_app import (
    RoundCallback,
    ServerLoop,
    experiment_defining,
    mean_costs,
)
from fedsparse.simulation.stopping import Interrupted, StopRequest
from fedsparse.strategies import StrategyContext, build_strategy, check_strategy
from fedsparse.updates import template_of

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_DISABLE_IMPORT_WARNING": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "TQDM_DISABLE": "1",  # flwr-datasets' partitioners print progress bars otherwise
}


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


def prepare_environment(run_dir: Path) -> None:
    """Telemetry off, no network use by Ray, Flower's files inside the run folder."""
    os.environ.update(QUIET_ENV)
    os.environ["FLWR_HOME"] = str(run_dir / "flwr")


def backend_config(config: ExperimentConfig, ray_tmp: Path) -> dict[str, Any]:
    sim = config.simulation
    resources = {"num_cpus": sim.cpus_per_client, "num_gpus": sim.gpus_per_client}
    if sim.ray_address:  # an existing cluster: it owns its CPUs, GPUs, memory and session folder
        return {"client_resources": resources,
                "init_args": {"address": sim.ray_address,
                              "logging_level": "INFO" if sim.verbose else "ERROR",
                              "log_to_driver": sim.verbose}}
    return {
        "client_resources": resources,
        "init_args": {
            "num_cpus": sim.num_cpus or os.cpu_count() or 1,
            "num_gpus": visible_gpus() if sim.gpus_per_client else 0,
            "_temp_dir": str(ray_tmp),
            "logging_level": "INFO" if sim.verbose else "ERROR",
            "log_to_driver": sim.verbose,
            "object_store_memory": 256 * 1024**2,
        },
    }


def _quiet_flower(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.ERROR
    logging.getLogger("flwr").setLevel(level)


def run_experiment(config: ExperimentConfig, run_dir: Path | None = None,
                   on_round: RoundCallback | None = None,
                   on_start: Any = None, resume: bool = False) -> RunResult:
    """Run ``config`` end to end and return the run folder and its summary.

    ``resume``: continue the run in ``run_dir`` from its last checkpoint.
    """
    started = time.perf_counter()
    os.environ.update(QUIET_ENV)
    # bad input fails here, before any folder or process exists
    check_strategy(config, method_class(config).sparse_updates)
    check_fits_in_memory(config)
    if run_dir is None:
        check_output_dir(config.output.dir)
    if config.simulation.ray_address:
        check_ray_address(config.simulation.ray_address)
    else:  # (a cluster's GPUs are its own: Ray there says what it has)
        problem = gpu_request_problem(config.simulation.gpus_per_client, visible_gpus())
        if problem:
            raise ConfigError(problem)
    # the method and its budgets are checked on the data before partitioning (quick)...
    context = strategy_context(config, unpartitioned(config))
    build_strategy(config, context)  # and the strategy's options (built again once partitioned)
    checkpoint = None
    if resume and run_dir is not None:  # checked before anything in the folder is rewritten
        checkpoint = load_checkpoint(run_dir)
        check_resumable(checkpoint, config)
    # ...so that Ray starts next, while the clients are partitioned
    ray_tmp = Path(tempfile.mkdtemp(prefix="fsray-", dir="/tmp"))
    ray_start = start_ray(config, ray_tmp)
    try:
        return _run_started(config, run_dir, checkpoint, context, ray_start, ray_tmp, started,
                            on_round, on_start)
    finally:
        if ray_start is not None:
            ray_start.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def start_ray(config: ExperimentConfig, ray_tmp: Path) -> BackgroundRay | None:
    """Ray starting in the background (the in-process test harness replaces this with a None:
    no Ray)."""
    return BackgroundRay(backend_config(config, ray_tmp)["init_args"])


def _run_started(config: ExperimentConfig, run_dir: Path | None, checkpoint: Checkpoint | None,
                 context: StrategyContext, ray_start: BackgroundRay | None, ray_tmp: Path,
                 started: float, on_round: RoundCallback | None, on_start: Any) -> RunResult:
    """The rest of ``run_experiment``, once its inputs are checked and Ray is starting."""
    from fedsparse.simulation.client_app import make_client_app

    federation = build_federation(config)
    inputs = fingerprints(federation, config.budgets.file)
    if checkpoint is not None:  # before the folder's partition file is rewritten
        check_same_inputs(checkpoint, inputs)
    context = replace(context, train_sizes=[len(c.train) for c in federation.clients])
    strategy = build_strategy(config, context)
    run_dir = run_dir or new_run_dir(config)
    prepare_environment(run_dir)
    recorder = RunRecorder(run_dir, config)
    partitions_path = run_dir / PARTITIONS_FILE
    save_partitions(federation, partitions_path)
    pool_dir = run_dir / POOL_DIR
    if not config.simulation.ray_address:  # workers map this pool instead of building their own
        save_pool(federation.pool, pool_dir)
        federation = replace(federation, pool=load_shared_pool(pool_dir))
        forget_cached_pool()
    if checkpoint is not None:
        recorder.truncate_rounds(checkpoint.server_round)
        # client states written after the checkpoint belong to the rounds being redone
        drop_client_states_after(run_dir, checkpoint.server_round)
    loop = ServerLoop(config, federation, strategy, recorder, on_round, resume=checkpoint)
    loop.inputs = inputs
    # on a Ray cluster, workers may run on other machines: they partition locally (same seed)
    # instead of reading this machine's partition file, and keep private state in memory only
    client_app = make_client_app(
        config.model_dump_json(), None if config.simulation.ray_address else str(partitions_path),
        resume_round=checkpoint.server_round if checkpoint else 0)
    if on_start is not None:
        on_start(run_dir)
    stop = StopRequest()
    loop.stop = stop
    try:
        with stop.handling_signals():
            if ray_start is not None:
                load_simulation_engine()  # while Ray is still starting, not after
                ray_start.wait()
            _simulate(config, loop, client_app, run_dir, ray_tmp)
        if stop.is_set():
            name = signal.Signals(stop.signum or signal.SIGINT).name
            raise Interrupted(f"stopped by {name} after round {loop.outcome.rounds_done} of "
                              f"{config.rounds}: continue with 'fedsparse simulate --resume "
                              f"{run_dir}'", stop.signum or signal.SIGINT)
        if loop.outcome.rounds_done < config.rounds:
            raise SimulationError(f"the simulation stopped after round {loop.outcome.rounds_done} "
                                  f"of {config.rounds}; finished rounds are in {run_dir}")
        return finish_run(config, loop, recorder, started)
    finally:
        drop_shared_pool(pool_dir)  # rebuilt from the config by a resume


def finish_run(config: ExperimentConfig, loop: ServerLoop, recorder: RunRecorder,
               started: float, budget_source: str | None = None) -> RunResult:
    """Write ``summary.json`` and the plots of a finished run; a run in which no round
    aggregated anything has no result, and says so instead (non-zero exit)."""
    run_dir = recorder.run_dir
    outcome = loop.outcome
    if not outcome.rounds_aggregated:
        raise SimulationError(
            f"no round aggregated an update ({outcome.clients_failed} clients failed, "
            f"{outcome.updates_rejected} updates rejected, {outcome.budget_violations} over budget, "
            f"{outcome.rounds_refused} aggregates refused): the run has no result; per-round "
            f"records are in {run_dir / 'metrics.jsonl'}")
    if not outcome.client_rows:
        raise SimulationError(f"no client returned a valid evaluation in round "
                              f"{outcome.evaluated_round}: the run has no accuracy to report; "
                              f"per-round records are in {run_dir / 'metrics.jsonl'}")
    summary = build_summary(config, loop, time.perf_counter() - started, run_dir, budget_source)
    recorder.write_summary(summary)
    from fedsparse.report import draw_plots, load_run

    draw_plots(load_run(run_dir))
    return RunResult(run_dir=run_dir, summary=summary)


def check_resumable(checkpoint: Checkpoint, config: ExperimentConfig) -> None:
    """A resume continues the same experiment: refuse a config edited since the checkpoint."""
    if not checkpoint.experiment:
        return  # a checkpoint written before configs were recorded in it
    key = first_difference(checkpoint.experiment, experiment_defining(config))
    if key is not None:
        raise ConfigError(f"the run's config.yaml differs from the one its checkpoint was written "
                          f"with at '{key}': restore it, or start a new run instead of --resume")


def check_same_inputs(checkpoint: Checkpoint, inputs: dict[str, str]) -> None:
    """A resume reads the same data, partitions and budget file as the rounds it continues."""
    what = {"data": "data set's files", "partitions": "partitioning of the clients",
            "budget_file": "budget file"}
    for key, value in checkpoint.inputs.items():  # (a checkpoint of an older run records none)
        if inputs.get(key) != value:
            raise ConfigError(f"the run's {what.get(key, key)} changed since its checkpoint was "
                              "written: restore it, or start a new run instead of --resume")


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast when no Ray head answers (``ray.init`` would retry for minutes)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--ray-address {address!r} is not host:port: e.g. 10.0.0.5:6379")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(f"no Ray cluster answers at {address} ({exc.strerror or exc}): start one "
                          "with 'ray start --head --port PORT' or fix --ray-address") from None


def strategy_context(config: ExperimentConfig, federation: Federation,
                     budgets: list[Budget] | None = None) -> StrategyContext:
    """Budgets, the cost model and the method's server side, checked before anything starts.

    ``budgets``: what the clients declared (deployment); by default assigned from the config.
    """
    pool = federation.pool
    model = build_model(config.model, pool.input_shape, pool.num_classes)
    if budgets is None:
        budgets = budgets_of(config)
    cost_model = CostModel(model, pool.input_shape)
    method = build_method(config)
    server_data = pool.tensors(federation.server) if len(federation.server) else None
    try:
        method.setup(ServerSetup(model=model, budgets=budgets, cost_model=cost_model,
                                 server_data=server_data))
    except ValueError as exc:
        raise ConfigError(f"method '{method.name}': {exc}") from None
    return StrategyContext(
        seed=config.seed, clients_per_round=config.clients_per_round, budgets=budgets,
        cost_model=cost_model, template=template_of(model.state_dict()),
        batch_size=config.train.batch_size, momentum=config.train.momentum > 0,
        method=method, train_sizes=[len(c.train) for c in federation.clients],
        local_epochs=config.train.local_epochs, clock=clock_settings(config, budgets),
        eval_clients=config.eval_clients, final_round=config.rounds,
        max_update_norm=config.strategy.max_update_norm)


def clock_settings(config: ExperimentConfig, budgets: list[Budget]) -> ClockSettings | None:
    """Every client's device profile, or None when no client names one (clock off)."""
    clock = config.clock
    try:
        return build_clock([b.device for b in budgets], clock.default_device, clock.profiles,
                           clock.deadline, clock.over_select, clock.availability)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None


def clock_summary(config: ExperimentConfig, loop: ServerLoop) -> dict[str, Any] | None:
    """Simulated time: total, and to reach the target accuracy (None when the clock is off)."""
    if loop.strategy.context.clock is None:
        return None
    outcome = loop.outcome
    final = outcome.accuracy.get("mean")
    target = config.clock.target_accuracy
    if target is None and final is not None:
        target = config.clock.target_fraction * final
    reached = None if target is None else time_to_accuracy(
        [{"accuracy_mean": acc, "sim_seconds": t} for _, t, acc in outcome.timeline], target)
    return {"total_seconds": outcome.sim_seconds, "target_accuracy": target,
            "time_to_target": reached, "clients_late": outcome.clients_late,
            "clients_surplus": outcome.clients_surplus, "deadline": config.clock.deadline,
            "over_select": config.clock.over_select}


def load_simulation_engine() -> None:
    """Import Flower's simulation engine and its Ray backend (a second or so: done while Ray
    starts)."""
    import flwr.simulation  # noqa: F401
    from flwr.server.superlink.fleet.vce.backend import raybackend  # noqa: F401

    from fedsparse.simulation import actor  # noqa: F401


def _simulate(config: ExperimentConfig, loop: ServerLoop, client_app: Any, run_dir: Path,
              ray_tmp: Path) -> None:
    """Flower's simulation on the Ray already started (``ray_tmp``: its session folder)."""
    import ray
    from flwr.simulation import run_simulation

    from fedsparse.simulation import actor, dispatch
    from fedsparse.simulation.server_app import make_server_app

    _quiet_flower(config.simulation.verbose)
    dispatch.install()
    actor.install()
    try:
        run_simulation(server_app=make_server_app(loop), client_app=client_app,
                       num_supernodes=config.flower_nodes,
                       backend_config=backend_config(config, ray_tmp),
                       verbose_logging=config.simulation.verbose)
    except SimulationError:
        raise
    except Exception as exc:
        cause = exc.__cause__ or exc
        where = f" on the Ray cluster at {config.simulation.ray_address}" \
            if config.simulation.ray_address else ""
        raise SimulationError(f"simulation failed{where}: {type(cause).__name__}: {cause}; finished "
                              f"rounds are in {run_dir}") from exc
    finally:
        if ray.is_initialized():
            ray.shutdown()
        _keep_ray_logs(ray_tmp, run_dir)


def _keep_ray_logs(ray_tmp: Path, run_dir: Path) -> None:
    logs = ray_tmp / "session_latest" / "logs"
    if logs.is_dir():
        shutil.copytree(logs, run_dir / "ray-logs", dirs_exist_ok=True, symlinks=False,
                        ignore_dangling_symlinks=True)
    shutil.rmtree(ray_tmp, ignore_errors=True)


def cost_totals(outcome: Any) -> dict[str, float]:
    """Whole-run sums: training FLOPs, what dense training of the same work would cost, and the
    training clients did at evaluation (at the final evaluation, which every deployed model
    needs, and over every evaluated round, which the curves cost)."""
    costs = outcome.costs
    return {"train_flops_total": float(sum(c.train_flops for c in costs)),
            "dense_train_flops_total": float(sum(c.dense_train_flops for c in costs)),
            "upload_bytes_total": float(sum(c.upload_bytes for c in costs)),
            "dense_upload_bytes_total": float(sum(c.dense_upload_bytes for c in costs)),
            "eval_train_flops_final": float(outcome.eval_flops.get(outcome.evaluated_round, 0.0)),
            "eval_train_flops_all": float(sum(outcome.eval_flops.values()))}


def build_summary(config: ExperimentConfig, loop: ServerLoop, wall: float,
                  run_dir: Path, budget_source: str | None = None) -> dict[str, Any]:
    """``summary.json``: the stable, machine-readable contract of a run (``budget_source``:
    where the clients' budgets came from; default the config's tiers or budget file)."""
    outcome = loop.outcome
    method = loop.method
    return {
        "method": config.method.name,
        "sparse_updates": method.sparse_updates,
        "strategy": config.strategy.name,
        "dataset": config.data.dataset,
        "model": config.model.name,
        "partition": config.partition.kind,
        "num_clients": config.num_clients,
        "clients_per_round": config.clients_per_round,
        "rounds": config.rounds,
        "seed": config.seed,
        "wall_seconds": round(wall, 3),
        "accuracy": outcome.accuracy,
        "accuracy_by_density": outcome.accuracy_by_density or None,
        # the method's own scores of the final global model, computed by the server (e.g. every
        # client at every width it could hold): name -> mean over clients, and their number
        "server_scores": {k: {"mean": m, "clients": n} for k, (m, n) in outcome.server_scores.items()}
        or None,
        "evaluated_round": outcome.evaluated_round,
        "eval_gating": None,  # pFedGate's gating at evaluation (from its summary below)
        "novel_clients": len(method.novel_clients()),
        "evaluation_protocol": method.evaluation_protocol(),
        # every run of a comparison should share the held-back set and the warm-up
        "server_set_samples": len(loop.federation.server),
        "warmup_epochs": warmup_epochs(config),
        "pruning": None,  # a shared-mask method's mask choice and adjustments (below)
        "clock": clock_summary(config, loop),
        "failures": {"clients_failed": outcome.clients_failed,
                     "updates_rejected": outcome.updates_rejected,
                     "aggregates_refused": outcome.rounds_refused},
        "rounds_aggregated": outcome.rounds_aggregated,
        # a client scores its own deployed model on its own data: the server cannot recompute
        # that (it checks counts and shares); the global model's accuracy it computes itself
        "accuracy_sources": {"mean": "client-reported", "bottom_decile": "client-reported",
                             "val_mean": "client-reported", "global": "server-computed"},
        # which cost figures the server counted itself and which only the client could measure
        "cost_sources": {"client_reported": sorted(method.client_reported),
                         "server_counted": sorted({"density", "train_flops", "memory_bytes",
                                                   "upload_bytes", "download_bytes",
                                                   "conv_linear_flops"}
                                                  - set(method.client_reported))},
        "cost": {**{k.removeprefix("cost_"): v for k, v in mean_costs(outcome.costs).items()},
                 "memory_bytes_peak_ratio": max((c.memory_bytes / c.dense_memory_bytes
                                                 for c in outcome.costs), default=None),
                 # weights, gradients, optimizer state and activations together
                 "training_bytes_peak_ratio": max(
                     ((c.memory_bytes + c.activation_bytes)
                      / (c.dense_memory_bytes + c.dense_activation_bytes)
                      for c in outcome.costs if c.dense_activation_bytes), default=None),
                 **cost_totals(outcome)},
        "budget": {"violations": outcome.budget_violations,
                   "tiers": budget_tiers(loop.strategy.context.budgets),
                   "source": budget_source or ("config tiers" if config.budgets.file is None
                                               else f"budget file {config.budgets.file}"),
                   # the budget check compares these with the budget on the client's word
                   # (within the floors the method's server side computes)
                   "checked_on_client_reported": sorted(method.client_reported)},
        "run_dir": str(run_dir),
        "compare_with": method.compare_with,
        **method.summary(),
    }
