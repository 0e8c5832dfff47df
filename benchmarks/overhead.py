"""Framework overhead: the same dense FedAvg workload run by fedsparse and by its peers.

    python benchmarks/overhead.py [--rounds 11] [--repeats 3] [--clients 100] [--config FILE]
        [--runners a,b,...] [--json overhead.json]

Workload: the default Synthetic federation (100 clients), the default MLP (or the data and model
of ``--config``, e.g. configs/fashion-mnist-cnn.yaml for real local work), 10 clients per round,
the same clients sampled in every runner, one local epoch of SGD each (``train_local``, the same
batches for a client in a round), sample-weighted FedAvg, no evaluation between rounds.

- plain PyTorch: one process using every core, a loop over the sampled clients;
- 1 process per core: one single-threaded worker process per core (a multiprocessing pool, as
  Flower's Ray actors are): the strongest baseline without a framework, and the one the ratios
  are taken against;
- plain Flower: ``run_simulation`` with Flower's own ``FedAvg`` and a minimal ClientApp;
- fedsparse: ``fedsparse simulate --method dense --strategy fedavg``;
- pfl, pfl 1 worker per core: Apple's pfl simulator (``benchmarks/pfl_runner.py``; skipped
  unless ``pip install -e '.[bench]'``), in one process and under torchrun with gloo.

Every runner runs in a process of its own, started from here, so each pays its imports and
start-up alike. *Start-up* is the time from that process's launch to the end of round 1, less
one steady round: what a run costs before its rounds take their steady time, wherever a runner
pays it (Flower starts its actors inside round 1, fedsparse before it, to ask every node which
partition it serves). Round times exclude round 1. The runners take turns ``--repeats``
times (the order rotated each time) so the machine's drifting load hits them alike; the table
gives each runner's median over all steady rounds and the range of its per-run medians.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedsparse.config import ExperimentConfig, dump_config, load_config
from fedsparse.data.federation import build_federation, load_partitions, save_partitions
from fedsparse.models import build_model
from fedsparse.training import train_local

OVERRIDES = ["method.name=dense", "strategy.name=fedavg", "budgets.tiers=[{density: 1.0, share: 1.0}]",
             "train.momentum=0.0"]


def experiment(clients: int, rounds: int, path: Path | None = None) -> ExperimentConfig:
    return load_config(path, [*OVERRIDES, f"num_clients={clients}", f"rounds={rounds}",
                              "fraction=0.1"])


def sampled(config: ExperimentConfig, server_round: int) -> list[int]:
    rng = np.random.default_rng([config.seed, 11, server_round])
    return sorted(int(p) for p in rng.choice(config.num_clients, size=config.clients_per_round,
                                              replace=False))


def plain_pytorch(config: ExperimentConfig) -> list[float]:
    """One process using every core (torch's intra-op threads): what a plain script would do."""
    torch.set_num_threads(os.cpu_count() or 1)
    federation = build_federation(config)
    pool = federation.pool
    torch.manual_seed(config.seed)
    global_state = {k: v.clone() for k, v in build_model(config.model, pool.input_shape,
                                                         pool.num_classes).state_dict().items()}
    starts = []
    for server_round in range(1, config.rounds + 1):
        starts.append(time.time())
        states, weights = [], []
        for pid in sampled(config, server_round):
            model = build_model(config.model, pool.input_shape, pool.num_classes)
            model.load_state_dict(global_state)
            x, y = pool.tensors(federation.clients[pid].train)
            train_local(model, x, y, config.train, torch.Generator().manual_seed(pid))
            states.append(model.state_dict())
            weights.append(len(y))
        total = sum(weights)
        global_state = {k: sum(s[k].double() * (w / total) for s, w in zip(states, weights, strict=True)
                               ).to(global_state[k].dtype) for k in global_state}
    return [*starts, time.time()]


_worker: dict = {}


def _init_worker(config_json: str) -> None:
    torch.set_num_threads(1)
    config = ExperimentConfig.model_validate_json(config_json)
    _worker.update(config=config, federation=build_federation(config))


def _train_client(job: tuple[int, dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], int]:
    pid, global_state = job
    config, federation = _worker["config"], _worker["federation"]
    pool = federation.pool
    model = build_model(config.model, pool.input_shape, pool.num_classes)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in global_state.items()})
    x, y = pool.tensors(federation.clients[pid].train)
    train_local(model, x, y, config.train, torch.Generator().manual_seed(pid))
    return {k: v.numpy() for k, v in model.state_dict().items()}, len(y)


def plain_processes(config: ExperimentConfig) -> list[float]:
    """The strongest no-framework baseline: one single-threaded worker process per core
    (what Flower's actors are), clients handed out as workers free up."""
    import multiprocessing

    torch.manual_seed(config.seed)
    federation = build_federation(config)
    pool_data = federation.pool
    global_state = {k: v.numpy().copy() for k, v in build_model(
        config.model, pool_data.input_shape, pool_data.num_classes).state_dict().items()}
    starts = []
    context = multiprocessing.get_context("spawn")
    with context.Pool(os.cpu_count() or 1, _init_worker, (config.model_dump_json(),)) as workers:
        workers.map(abs, range(os.cpu_count() or 1))  # wait for the workers to start
        for server_round in range(1, config.rounds + 1):
            starts.append(time.time())
            jobs = [(pid, global_state) for pid in sampled(config, server_round)]
            results = list(workers.imap_unordered(_train_client, jobs, chunksize=1))
            results.sort(key=lambda r: -r[1])  # a fixed order for the float sums
            total = sum(n for _, n in results)
            global_state = {k: np.asarray(sum(s[k].astype(np.float64) * (n / total) for s, n in results
                                              ), dtype=global_state[k].dtype) for k in global_state}
    return [*starts, time.time()]


def plain_flower(config: ExperimentConfig) -> list[float]:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    folder = Path(tempfile.mkdtemp(prefix="fsbench-"))
    federation = build_federation(config)
    save_partitions(federation, folder / "partitions.npz")
    config_json = config.model_dump_json()
    starts: list[float] = []

    class TimedFedAvg(FedAvg):
        def configure_train(self, server_round, arrays, config, grid):  # type: ignore[override]
            starts.append(time.time())
            return super().configure_train(server_round, arrays, config, grid)

        def configure_evaluate(self, server_round, arrays, config, grid):  # type: ignore[override]
            return []

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)  # one CPU per client, as fedsparse runs them
        cfg = ExperimentConfig.model_validate_json(config_json)
        from fedsparse.data.federation import cached_pool

        pool = cached_pool(cfg)
        pid = int(context.node_config["partition-id"])
        split = load_partitions(folder / "partitions.npz", cfg.num_clients)[pid]
        model = build_model(cfg.model, pool.input_shape, pool.num_classes)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        x, y = pool.tensors(split.train)
        train_local(model, x, y, cfg.train, torch.Generator().manual_seed(pid))
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                   "metrics": MetricRecord({"num-examples": len(y)})}), reply_to=msg)

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        while len(list(grid.get_node_ids())) < config.num_clients:
            time.sleep(0.05)
        pool = federation.pool
        torch.manual_seed(config.seed)
        model = build_model(config.model, pool.input_shape, pool.num_classes)
        strategy = TimedFedAvg(fraction_train=config.fraction, min_train_nodes=config.clients_per_round,
                               min_available_nodes=config.num_clients)
        strategy.start(grid, ArrayRecord(model.state_dict()), num_rounds=config.rounds,
                       train_config=ConfigRecord())
        starts.append(time.time())

    os.environ.update({"RAY_USAGE_STATS_ENABLED": "0", "FLWR_TELEMETRY_ENABLED": "0"})
    run_simulation(server_app=server, client_app=client, num_supernodes=config.num_clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": os.cpu_count() or 1, "num_gpus": 0,
                                                 "logging_level": "ERROR", "log_to_driver": False}})
    return starts


IN_PROCESS = {"plain PyTorch": plain_pytorch, "1 process per core": plain_processes,
              "plain Flower": plain_flower}
BASELINE = "1 process per core"
HERE = Path(__file__).resolve().parent


def launch(name: str, config: ExperimentConfig, folder: Path) -> list[float]:
    """Run one runner in a fresh process; return its round starts (wall clock, the end of the
    last round appended) and, first, the launch time."""
    config_path = folder / "config.json"
    config_path.write_text(config.model_dump_json())
    result = folder / f"{name}.json".replace(" ", "-")
    result.unlink(missing_ok=True)
    if name == "fedsparse":
        return fedsparse_cli(config, folder)
    if name.startswith("pfl"):
        runner = [str(HERE / "pfl_runner.py"), str(config_path), str(result)]
        workers = os.cpu_count() or 1
        argv = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(workers),
                 "--master-port", "29533", *runner] if name != "pfl" else [sys.executable, *runner])
    else:
        argv = [sys.executable, str(Path(__file__).resolve()), "--one", name,
                "--config-json", str(config_path), "--json", str(result)]
    launched = time.time()
    subprocess.run(argv, check=True, capture_output=True)
    return [launched, *json.loads(result.read_text())["round_starts"]]


def fedsparse_cli(config: ExperimentConfig, folder: Path) -> list[float]:
    """``fedsparse simulate`` as a user runs it, with one round more than the others: its final
    round evaluates every client (a run must end with a result), so it is left out. Each round's
    end is when its line appears in metrics.jsonl (watched every 10 ms), so the time between
    rounds (logging, checkpoints) counts; round 1 starts ``seconds`` of its record before."""
    out = Path(tempfile.mkdtemp(dir=folder))
    with open(out / "config.yaml", "w") as handle:
        handle.write(dump_config(config))
    argv = [sys.executable, "-m", "fedsparse.cli", "simulate", "--out", str(out), "--name", "overhead",
            "--config", str(out / "config.yaml"), "--clients", str(config.num_clients),
            "--rounds", str(config.rounds + 1),
            "--fraction", str(config.fraction), "--method", "dense", "--strategy", "fedavg",
            "--budgets", "1.0:1", "--set", "train.momentum=0.0",
            "--set", f"eval.every={config.rounds + 2}"]  # evaluated once, in the extra round
    launched = time.time()
    log = out / "stderr.txt"
    with open(log, "w") as stderr:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr)
    ends: list[float] = []
    metrics, size = None, 0
    while process.poll() is None:
        metrics = metrics or next(out.glob("overhead-*/metrics.jsonl"), None)
        if metrics is not None and metrics.stat().st_size != size:
            text = metrics.read_text()
            size = len(text.encode())
            now = time.time()
            ends.extend([now] * (text.count("\n") - len(ends)))
        time.sleep(0.01)
    if process.returncode:
        raise RuntimeError(f"fedsparse failed: {log.read_text()[-2000:]}")
    assert metrics is not None
    first = json.loads(metrics.read_text().splitlines()[0])["seconds"]
    if len(ends) < config.rounds:
        raise RuntimeError("fedsparse finished before its rounds were seen: rerun with more rounds")
    return [launched, ends[0] - first, *ends[:config.rounds]]


def pfl_available() -> bool:
    try:
        import pfl  # noqa: F401
    except ImportError:
        return False
    return True


def summarise(runs: list[list[float]]) -> dict:
    """Start-up and steady round times of one runner's runs (round 1 of each run excluded)."""
    per_run = [np.diff(run[1:])[1:] for run in runs]
    medians = [float(np.median(r)) for r in per_run]
    startups = [run[2] - run[0] - m for run, m in zip(runs, medians, strict=True)]
    steady = np.concatenate(per_run)
    return {"round_starts": runs, "startup_s": startups, "median_startup_s": float(np.median(startups)),
            "median_round_s": float(np.median(steady)), "mean_round_s": float(np.mean(steady)),
            "run_medians_s": medians}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3,
                        help="run every runner this many times, interleaved (noise drifts)")
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--runners", default=None, help="comma-separated subset of the runners")
    parser.add_argument("--json", type=Path, default=Path("overhead.json"))
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--config-json", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a runner's own process
        config = ExperimentConfig.model_validate_json(args.config_json.read_text())
        args.json.write_text(json.dumps({"round_starts": IN_PROCESS[args.one](config)}))
        return
    config = experiment(args.clients, args.rounds, args.config)
    names = [*IN_PROCESS, "fedsparse"] + (["pfl", "pfl, 1 worker per core"] if pfl_available() else [])
    if args.runners:
        names = [n for n in names if n in args.runners.split(",")]
    elif "pfl" not in names:
        print("pfl not installed (pip install -e '.[bench]'): its runners are skipped", file=sys.stderr)
    runs: dict[str, list[list[float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="fsoverhead-") as folder:
        for repeat in range(args.repeats):
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                runs[name].append(launch(name, config, Path(folder)))
                print(f"repeat {repeat + 1}/{args.repeats}: {name} done", file=sys.stderr, flush=True)
    results = {name: summarise(r) for name, r in runs.items()}
    base = results.get(BASELINE) or next(iter(results.values()))
    print(f"{args.clients} clients, {config.clients_per_round} per round, {args.rounds} rounds "
          f"x {args.repeats} runs each (round 1 excluded), {config.data.dataset} + "
          f"{config.model.name}, {config.train.local_epochs} local epoch(s), {os.cpu_count()} cores")
    print("| runner | median s/round | per-run medians | vs 1 process per core | start-up s (median, range) "
          "|")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        r["ratio_median"] = r["median_round_s"] / base["median_round_s"]
        low, high = min(r["run_medians_s"]), max(r["run_medians_s"])
        print(f"| {name} | {r['median_round_s']:.3f} | {low:.3f}-{high:.3f} | {r['ratio_median']:.2f} | "
              f"{r['median_startup_s']:.1f} ({min(r['startup_s']):.1f}-{max(r['startup_s']):.1f}) |")
    args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
