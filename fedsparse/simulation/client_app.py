"""Flower ClientApp: unpack a Message into a ``ClientTask``, call the method, pack the reply.

The app knows no method: training, evaluation and a method's own query rounds (message type
``query.method``, the action in its config) all go to the configured ``Method``. The app closes
over the config as JSON and the path of the run's partition file only, so a message carries no
data; each worker process loads its data once and caches it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsparse.budgets import DECLARED_BUDGET, declared_budget_fields
from fedsparse.checkpoint import load_client_state, save_client_state
from fedsparse.codec import decode, encode, from_record, pack_records, to_record, unpack_records
from fedsparse.config import ExperimentConfig, ModelConfig
from fedsparse.data.federation import (
    build_federation,
    cached_pool,
    load_partitions,
    load_shared_pool,
)
from fedsparse.data.partition import ClientSplit
from fedsparse.data.pool import DataPool
from fedsparse.deploy.run_config import deployed_config_json
from fedsparse.device import CPU, client_device, masks_on, place_model
from fedsparse.errors import DataError
from fedsparse.experiment import cached_method
from fedsparse.faults import InjectedCrash, injected_fault, lie, poison
from fedsparse.masks import Masks
from fedsparse.method import ClientState, ClientTask, LocalData, Method
from fedsparse.models import build_model
from fedsparse.results import POOL_DIR
from fedsparse.seeding import client_seed
from fedsparse.strategies.messages import CLIENT_ID_KEY, NODE_INDEX_KEY, STATE_DIR_KEY
from fedsparse.strategies.validation import PARTITION_KEY
from fedsparse.updates import template_of

#: the message type of a method's query rounds; the action travels in the config
METHOD_QUERY = "method"
#: node-config key: the folder a deployed node reads its dataset files from
DATA_DIR_KEY = "data-dir"
#: where a deployed node keeps its partition between messages (not the method's state)
SPLIT_STATE = "fedsparse.split"


@dataclass(frozen=True)
class ClientRuntime:
    """What a worker needs to serve any client of one experiment."""

    config: ExperimentConfig
    #: the run's partition file (simulation); None: partition locally from the config (deployment)
    partitions_path: Path | None

    def split(self, partition_id: int) -> ClientSplit:
        if self.partitions_path is None:
            with _on_this_node(self.config):
                return _local_partitions(self.config.model_dump_json())[partition_id]
        return _partitions(str(self.partitions_path), self.config.num_clients)[partition_id]

    def node_split(self, partition_id: int, context: Context) -> ClientSplit:
        """A deployed node partitions once per run and keeps its own split in its Flower state:
        each ClientApp message starts a fresh process, and partitioning anew (flwr-datasets'
        import alone) costs seconds of every message."""
        if self.partitions_path is not None:
            return self.split(partition_id)
        kept = context.state.array_records.get(SPLIT_STATE)
        if kept is not None:
            return ClientSplit(**{name: array.numpy() for name, array in kept.items()})
        split = self.split(partition_id)
        context.state[SPLIT_STATE] = ArrayRecord(
            {name: Array(getattr(split, name)) for name in ("train", "val", "test")})
        return split

    def pool(self) -> DataPool:
        """The run's shared, memory-mapped pool (simulation), or one loaded here (deployment)."""
        if self.partitions_path is None:
            with _on_this_node(self.config):
                return cached_pool(self.config)
        return load_shared_pool(self.partitions_path.parent / POOL_DIR)

    def data(self, split: ClientSplit) -> LocalData:
        pool = self.pool()
        x_tr, y_tr = pool.tensors(split.train)
        x_va, y_va = pool.tensors(split.val)
        x_te, y_te = pool.tensors(split.test)
        return LocalData(x_tr, y_tr, x_va, y_va, x_te, y_te)

    def model(self, arrays: ArrayRecord) -> tuple[torch.nn.Module, Masks | None]:
        """The model the server sent, and the masks of the weights this client does not hold."""
        pool = self.pool()
        model = copy.deepcopy(_pristine_model(self.config.model.model_dump_json(),
                                              tuple(pool.input_shape), pool.num_classes))
        template = template_of(model.state_dict())
        update = decode(arrays, template)
        model.load_state_dict(update.to_state(template), strict=True)
        masks = update.partial_masks(template, {n for n, _ in model.named_parameters()})
        return model, masks or None


@contextmanager
def _on_this_node(config: ExperimentConfig) -> Iterator[None]:
    """A deployed node's data errors name the node's own folder setting, not the CLI's flag."""
    try:
        yield
    except DataError as exc:
        where = f"data-dir {config.data.data_dir}" if config.data.data_dir else "no data-dir"
        raise DataError(f"this SuperNode ({where} in its --node-config): "
                        + str(exc).replace("--data-dir", "the node's data-dir")) from None


@lru_cache(maxsize=2)
def _pristine_model(model_json: str, input_shape: tuple[int, ...], num_classes: int
                    ) -> torch.nn.Module:
    """One freshly built model per worker and experiment, never handed out: each message gets a
    copy, whose every weight and buffer the server's arrays then overwrite: building one (random
    initialisation, a probe pass to size the classifier) costs several times a copy and load,
    most on large models."""
    return build_model(ModelConfig.model_validate_json(model_json), input_shape, num_classes)


@lru_cache(maxsize=2)
def _partitions(path: str, num_clients: int):  # -> list[ClientSplit]
    return load_partitions(Path(path), num_clients)


@lru_cache(maxsize=2)
def _local_partitions(config_json: str) -> list[ClientSplit]:
    """A deployed node computes the seeded partitions itself (the same on every node)."""
    return build_federation(ExperimentConfig.model_validate_json(config_json)).clients


@lru_cache(maxsize=2)
def _with_data_dir(config_json: str, data_dir: str) -> str:
    """The experiment as a deployed node runs it: its dataset files are in its own folder."""
    config = ExperimentConfig.model_validate_json(config_json)
    data = config.data.model_copy(update={"data_dir": Path(data_dir)})
    return config.model_copy(update={"data": data}).model_dump_json()


@lru_cache(maxsize=2)
def _runtime(config_json: str, partitions_path: str | None) -> ClientRuntime:
    return ClientRuntime(ExperimentConfig.model_validate_json(config_json),
                         Path(partitions_path) if partitions_path else None)


def _partition_id(context: Context) -> int:
    return int(context.node_config[PARTITION_KEY])


@dataclass(frozen=True)
class Served:
    """The client a message is for: the node's own partition, or a virtual client the message
    names (then its private state lives in files under ``run_dir``, not in the node's Context,
    which many clients share)."""

    partition_id: int
    virtual: bool
    run_dir: Path | None


def _served(msg: Message, context: Context, run_dir: Path | None) -> Served:
    config = msg.content.config_records.get("config", ConfigRecord())
    if CLIENT_ID_KEY not in config:
        return Served(_partition_id(context), False, run_dir)
    where = config.get(STATE_DIR_KEY)
    return Served(int(config[CLIENT_ID_KEY]), True, Path(str(where)) if where else run_dir)


def _node_index(served: Served, context: Context) -> dict[str, int]:
    """A node serving virtual clients says where Flower registered it (its ``partition-id``),
    so the server can queue the largest client first (``MaskAwareStrategy.schedule``)."""
    if not served.virtual or PARTITION_KEY not in context.node_config:
        return {}
    return {NODE_INDEX_KEY: int(context.node_config[PARTITION_KEY])}


def _private_state(context: Context) -> dict[str, dict]:
    """The node's persistent state as the method sees it (name -> arrays)."""
    return {name: from_record(record) for name, record in context.state.array_records.items()
            if name != SPLIT_STATE}


def _keep_private_state(context: Context, state: ClientState) -> None:
    for name, arrays in state.items():
        context.state[name] = to_record(arrays)


def _load_state(served: Served, context: Context, up_to_round: int) -> dict[str, dict]:
    """The client's private state: a virtual client's newest stored copy, else the node's."""
    if not served.virtual:
        return _private_state(context)
    if served.run_dir is None:
        return {}
    saved = load_client_state(served.run_dir, served.partition_id, up_to_round)
    return {} if saved is None else {name: from_record(record)
                                     for name, record in saved.array_records.items()}


def _save_state(served: Served, context: Context, state: ClientState, server_round: int,
                every: int) -> None:
    """Keep what the method changed: in the node's Context, or a virtual client's file."""
    if not served.virtual:
        _keep_private_state(context, state)
    elif served.run_dir is not None and state:
        save_client_state(served.run_dir, served.partition_id, server_round,
                          RecordDict({name: to_record(arrays) for name, arrays in state.items()}),
                          keep_from=(server_round - 1) // every * every)


def _task(runtime: ClientRuntime, msg: Message, served: Served, stream_round: int,
          context: Context, state: dict[str, dict]) -> ClientTask:
    """The method's view of a message: model, masks, data, seeded generator, config, records."""
    pid = served.partition_id
    split = runtime.split(pid) if served.virtual else runtime.node_split(pid, context)
    device = client_device(runtime.partitions_path is None  # a deployed node: its own GPU
                           or runtime.config.simulation.gpus_per_client > 0)
    data = runtime.data(split).to(device)
    model, masks = place_model(*runtime.model(msg.content["arrays"]), device)
    config = dict(msg.content["config"])
    generator = torch.Generator().manual_seed(client_seed(runtime.config.seed, stream_round, pid))
    return ClientTask(model=model, masks=masks, data=data, generator=generator,
                      partition_id=pid, server_round=int(config.get("server-round", 0)),
                      budget_density=float(config.get("budget-density", 1.0)), config=config,
                      inbox=unpack_records(msg.content, skip={"arrays"}), state=state,
                      device=device)


class RebuiltClientApp(ClientApp):
    """A ClientApp that pickles as the arguments that build it.

    Flower's Ray backend pickles the app with every message it hands a worker. By value (the
    handler closures) that costs the server time per message, spent between one client's
    reply and the next client's start; by reference it is the config string, and
    each worker builds the app once (``_built_client_app``).
    """

    def __init__(self, build_args: tuple[str | None, str | None, int]) -> None:
        super().__init__()
        self._build_args = build_args

    def __reduce__(self) -> tuple[Any, tuple[str | None, str | None, int]]:
        return _built_client_app, self._build_args


@lru_cache(maxsize=2)
def _built_client_app(config_json: str | None, partitions_path: str | None,
                      resume_round: int) -> ClientApp:
    return make_client_app(config_json, partitions_path, resume_round)


def make_client_app(config_json: str | None, partitions_path: str | None,
                    resume_round: int = 0) -> ClientApp:
    """Build the ClientApp for one experiment (``resume_round``: the checkpoint resumed from).

    ``config_json`` None: a deployed app, which reads the experiment from the run config and
    partitions locally (no partition file, no client-state files).
    """
    app = RebuiltClientApp((config_json, partitions_path, resume_round))
    run_dir = Path(partitions_path).parent if partitions_path else None

    def restore(context: Context, served: Served) -> None:
        """After a resume, a node starts empty: reload its private state as of the checkpoint."""
        if run_dir is not None and resume_round and not served.virtual and not len(context.state):
            saved = load_client_state(run_dir, served.partition_id, resume_round)
            for key, value in (saved or {}).items():
                context.state[key] = value

    def persist(context: Context, served: Served, server_round: int, every: int) -> None:
        if run_dir is not None and not served.virtual and len(context.state):
            save_client_state(run_dir, served.partition_id, server_round, context.state,
                              keep_from=(server_round - 1) // every * every)

    def setup(context: Context) -> tuple[ClientRuntime, Method]:
        exp_json = config_json if config_json is not None else deployed_config_json(
            dict(context.run_config))
        if config_json is None and context.node_config.get(DATA_DIR_KEY):
            exp_json = _with_data_dir(exp_json, str(context.node_config[DATA_DIR_KEY]))
        runtime = _runtime(exp_json, partitions_path)
        torch.set_num_threads(max(1, int(runtime.config.simulation.cpus_per_client)))
        return runtime, cached_method(exp_json)

    @app.query()
    def handshake(msg: Message, context: Context) -> Message:
        """Tell the server which partition this node serves, how much data it holds and, when
        its ``--node-config`` declares one, its budget."""
        runtime, _ = setup(context)
        pid = _partition_id(context)
        split = runtime.node_split(pid, context)
        metrics = MetricRecord({PARTITION_KEY: pid, "num-train": len(split.train),
                                "num-test": len(split.test)})
        if "num-partitions" in context.node_config:
            metrics["num-partitions"] = int(context.node_config["num-partitions"])
        content = RecordDict({"metrics": metrics})
        declared = declared_budget_fields(dict(context.node_config))
        if declared:
            content[DECLARED_BUDGET] = ConfigRecord(declared)
        return Message(content, reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        runtime, method = setup(context)
        served = _served(msg, context, run_dir)
        pid = served.partition_id
        server_round = int(msg.content["config"]["server-round"])
        every = runtime.config.simulation.checkpoint_every
        fault = _maybe_fail(runtime.config, server_round, pid)
        restore(context, served)
        task = _task(runtime, msg, served, server_round, context,
                     _load_state(served, context, server_round))
        torch.manual_seed(client_seed(runtime.config.seed, server_round, pid))
        received = {n: p.detach().clone() for n, p in task.model.named_parameters()} \
            if fault == "byzantine" else {}
        result = method.fit(task)
        if fault == "byzantine":
            poison(task.model, received)
        elif fault == "liar":
            result.metrics = lie(result.metrics)
        _save_state(served, context, task.state, server_round, every)
        persist(context, served, server_round, every)
        task.model.to(CPU)
        content = RecordDict({"arrays": encode(task.model.state_dict(), masks_on(result.upload, CPU)),
                              "metrics": MetricRecord({**result.metrics, PARTITION_KEY: pid,
                                                       **_node_index(served, context)})})
        for name, record in pack_records(result.outbox).items():
            content[name] = record
        return Message(content, reply_to=msg)

    @app.query(METHOD_QUERY)
    def method_query(msg: Message, context: Context) -> Message:
        """A method's own query round (e.g. FedTiny's adaptive BN selection)."""
        runtime, method = setup(context)
        served = _served(msg, context, run_dir)
        task = _task(runtime, msg, served, 0, context, _load_state(served, context, 0))
        records, metrics = method.answer(str(task.config["action"]), task)
        content = RecordDict({**pack_records(records),
                              "metrics": MetricRecord({**metrics,
                                                       PARTITION_KEY: served.partition_id})})
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        runtime, method = setup(context)
        served = _served(msg, context, run_dir)
        server_round = int(msg.content["config"]["server-round"])
        every = runtime.config.simulation.checkpoint_every
        restore(context, served)
        task = _task(runtime, msg, served, -server_round, context,
                     _load_state(served, context, server_round))
        metrics = method.evaluate(task)
        _save_state(served, context, task.state, server_round, every)
        persist(context, served, server_round, every)
        return Message(RecordDict({"metrics": MetricRecord({
            **metrics, PARTITION_KEY: served.partition_id, **_node_index(served, context)})}),
            reply_to=msg)

    return app


def _maybe_fail(config: ExperimentConfig, server_round: int, partition_id: int) -> str | None:
    """Fault injection (``simulation.inject_failures``): crash, or hang past what the server
    waits (twice the straggler floor, or the whole round timeout when stragglers are waited
    for), then fail; an adversarial kind (liar, byzantine) is returned for the handler to apply
    after training. A hang that ended sooner would hold a worker that later rounds need."""
    sim = config.simulation
    fault = injected_fault(config.seed, server_round, partition_id, sim.inject_failures,
                           sim.failure_kinds)
    if fault == "hang":
        time.sleep(sim.hang_seconds or (2 * sim.straggler_floor if sim.straggler_slack is not None
                                        else sim.round_timeout + sim.startup_grace + 5))
    if fault in ("crash", "hang"):
        raise InjectedCrash(f"injected {fault} of client {partition_id} in round {server_round}")
    return fault
