"""Framework overhead: the same dense FedAvg workload three ways, per-round time compared.

    python benchmarks/overhead.py [--rounds 11] [--repeats 2] [--clients 100] [--config FILE]
        [--json overhead.json]

Workload: the default Synthetic federation (100 clients), the default MLP (or the data and model
of ``--config``, e.g. configs/fashion-mnist-cnn.yaml for real local work), 10 clients per round,
one local epoch of SGD each (``fedsparse.training.train_local``, the same batches for a client
in a round in all three), sample-weighted FedAvg, no evaluation between rounds.

1. plain PyTorch: one process using every core, a loop over the sampled clients, FedAvg (the
   issue's baseline);
1b. plain PyTorch with one single-threaded worker process per core (a multiprocessing pool, as
   Flower's Ray actors are): the strongest baseline without a framework;
2. plain Flower: ``run_simulation`` with Flower's own ``FedAvg`` and a minimal ClientApp;
3. fedsparse: ``fedsparse simulate --method dense --strategy fedavg``, timed by the ``seconds``
   its metrics record per round (configure, train, aggregate; the checkpoint written every 5
   rounds, ~4 ms, falls outside). Plain Flower is timed from one ``configure_train`` to the next.

Ray start-up and the first round of each run (actor start, imports) are excluded; the four
runners alternate ``--repeats`` times so the machine's drifting load hits them alike, and the
table gives the median (robust to a stray slow round) and the mean of the remaining rounds.
"""

from __future__ import annotations

import argparse
import itertools
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
    times = []
    for server_round in range(1, config.rounds + 1):
        started = time.perf_counter()
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
        times.append(time.perf_counter() - started)
    return times


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
    times = []
    context = multiprocessing.get_context("spawn")
    with context.Pool(os.cpu_count() or 1, _init_worker, (config.model_dump_json(),)) as workers:
        workers.map(abs, range(os.cpu_count() or 1))  # wait for the workers to start
        for server_round in range(1, config.rounds + 1):
            started = time.perf_counter()
            jobs = [(pid, global_state) for pid in sampled(config, server_round)]
            results = list(workers.imap_unordered(_train_client, jobs, chunksize=1))
            results.sort(key=lambda r: -r[1])  # a fixed order for the float sums
            total = sum(n for _, n in results)
            global_state = {k: np.asarray(sum(s[k].astype(np.float64) * (n / total) for s, n in results
                                              ), dtype=global_state[k].dtype) for k in global_state}
            times.append(time.perf_counter() - started)
    return times


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
            starts.append(time.perf_counter())
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
        starts.append(time.perf_counter())

    os.environ.update({"RAY_USAGE_STATS_ENABLED": "0", "FLWR_TELEMETRY_ENABLED": "0"})
    run_simulation(server_app=server, client_app=client, num_supernodes=config.num_clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": os.cpu_count() or 1, "num_gpus": 0,
                                                 "logging_level": "ERROR", "log_to_driver": False}})
    return [b - a for a, b in itertools.pairwise(starts)]


def fedsparse_cli(config: ExperimentConfig) -> list[float]:
    with tempfile.TemporaryDirectory() as out:
        with open(Path(out) / "config.yaml", "w") as handle:
            handle.write(dump_config(config))
        argv = [sys.executable, "-m", "fedsparse.cli", "simulate", "--out", out, "--name", "overhead",
                "--config", str(Path(out) / "config.yaml"), "--clients", str(config.num_clients),
                "--rounds", str(config.rounds),
                "--fraction", str(config.fraction), "--method", "dense", "--strategy", "fedavg",
                "--budgets", "1.0:1", "--set", "train.momentum=0.0",
                "--set", f"eval.every={config.rounds + 1}", "--set", "eval.final=false"]
        subprocess.run(argv, check=True, capture_output=True)
        run = next(p for p in Path(out).glob("overhead-*") if p.is_dir())
        return [json.loads(line)["seconds"] for line in (run / "metrics.jsonl").read_text().splitlines()]


RUNNERS = {"plain PyTorch": plain_pytorch, "plain PyTorch, 1 process per core": plain_processes,
           "plain Flower": plain_flower, "fedsparse": fedsparse_cli}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2,
                        help="run the three runners this many times, interleaved (noise drifts)")
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=Path("overhead.json"))
    args = parser.parse_args()
    config = experiment(args.clients, args.rounds, args.config)
    runs: dict[str, list[list[float]]] = {name: [] for name in RUNNERS}
    for repeat in range(args.repeats):
        for name, fn in RUNNERS.items():
            runs[name].append(fn(config))
            print(f"repeat {repeat + 1}/{args.repeats}: done {name}", file=sys.stderr, flush=True)
    results = {}
    for name, times in runs.items():
        steady = [t for run in times for t in run[1:]]  # each run's first round excluded
        results[name] = {"rounds_s": times, "median_round_s": float(np.median(steady)),
                         "mean_round_s": float(np.mean(steady))}
    base = results["plain PyTorch"]
    print(f"{args.clients} clients, {config.clients_per_round} per round, {args.rounds} rounds "
          f"x {args.repeats} runs (first round of each excluded), {config.data.dataset} + "
          f"{config.model.name}, {config.train.local_epochs} local epoch(s)")
    print("| runner | median s/round | vs plain PyTorch | mean s/round | vs plain PyTorch |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        r["ratio_median"] = r["median_round_s"] / base["median_round_s"]
        r["ratio_mean"] = r["mean_round_s"] / base["mean_round_s"]
        print(f"| {name} | {r['median_round_s']:.3f} | {r['ratio_median']:.2f} | "
              f"{r['mean_round_s']:.3f} | {r['ratio_mean']:.2f} |")
    args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
