"""A federation: the pooled data plus every client's split, built once and shared by file.

The driver partitions once and writes ``partitions.npz`` to the run folder, and the pool as
plain ``.npy`` files (``save_pool``) that Ray workers memory-map (``load_shared_pool``): no
dataset travels with each message, no worker regenerates or holds its own copy (a 10,000-client
Synthetic pool is hundreds of MiB: ``benchmarks/scale.py``), the pages are the OS's to share, and the heavy
partitioning libraries stay out of the workers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fedsparse.config import ExperimentConfig
from fedsparse.data.loaders import load_pool
from fedsparse.data.partition import (
    ClientSplit,
    check_partitioning,
    partition_indices,
    split_client,
)
from fedsparse.data.pool import DataPool
from fedsparse.errors import DataError
from fedsparse.experiment import needs_server_data
from fedsparse.seeding import rng

_POOL_CACHE: dict[str, DataPool] = {}


@dataclass(frozen=True)
class Federation:
    pool: DataPool
    clients: list[ClientSplit]
    #: samples only the server holds (FedTiny's warm-up set); empty for most methods
    server: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    def pooled_test(self) -> np.ndarray:
        """Indices of every client's test samples together (for the global model's accuracy)."""
        return np.concatenate([c.test for c in self.clients])


def cached_pool(config: ExperimentConfig) -> DataPool:
    """The experiment's data pool, loaded once per process."""
    key = json.dumps([config.data.model_dump(mode="json"), config.num_clients, config.seed])
    if key not in _POOL_CACHE:
        _POOL_CACHE.clear()  # one experiment per process at a time: do not hoard memory
        _POOL_CACHE[key] = load_pool(config)
    return _POOL_CACHE[key]


def forget_cached_pool() -> None:
    """Let this process's loaded pool go (the driver maps the shared copy instead)."""
    _POOL_CACHE.clear()


def server_set(config: ExperimentConfig, pool: DataPool) -> np.ndarray:
    """The samples held back for the server (none when the experiment needs none)."""
    if not needs_server_data(config):
        return np.zeros(0, dtype=np.int64)
    return reserve_server_set(pool, config.partition.server_samples_per_class, config.seed)


def unpartitioned(config: ExperimentConfig) -> Federation:
    """The pool and the server's set before any client is partitioned (quick: no flwr-datasets),
    enough to check the method and its budgets."""
    pool = cached_pool(config)
    check_partitioning(pool, config.partition, config.num_clients)
    return Federation(pool=pool, clients=[], server=server_set(config, pool))


def build_federation(config: ExperimentConfig) -> Federation:
    """Partition the pool among ``config.num_clients`` clients and split each one."""
    pool = cached_pool(config)
    server = server_set(config, pool)
    if len(server):
        keep = np.setdiff1d(np.arange(len(pool)), server)
        rest = replace(pool, x=pool.x[keep], y=pool.y[keep],
                       groups=None if pool.groups is None else pool.groups[keep])
        parts = [keep[p] for p in partition_indices(rest, config.partition, config.num_clients,
                                                     config.seed)]
    else:
        parts = partition_indices(pool, config.partition, config.num_clients, config.seed)
    splits = [split_client(p, config.partition, config.seed, cid) for cid, p in enumerate(parts)]
    return Federation(pool=pool, clients=splits, server=server)


def reserve_server_set(pool: DataPool, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` seeded samples of every class, held back from all clients.

    A rare class gives at most half its samples, so clients keep some of every class.
    """
    draw = rng(seed, "server-set")
    picks = []
    for label in range(pool.num_classes):
        members = np.flatnonzero(pool.y == label)
        picks.append(draw.choice(members, size=min(per_class, len(members) // 2), replace=False))
    server = np.sort(np.concatenate(picks)).astype(np.int64)
    if len(server) == 0:
        raise DataError("the data has too few samples per class to hold any back for the server: "
                        "use a larger dataset")
    return server


def fingerprints(federation: Federation, budget_file: Path | None) -> dict[str, str]:
    """Hashes of what a run read besides its config: the data pool (labels whole, inputs at a
    stride of at most ~8 MB, so a large data set costs a fraction of a second), every client's
    partition and the budget file. A resume compares them with the checkpoint's."""
    pool = federation.pool
    stride = max(1, pool.x.nbytes // (8 << 20))
    data = hashlib.sha256(np.ascontiguousarray(pool.y).tobytes())
    data.update(str(pool.x.shape).encode())
    data.update(np.ascontiguousarray(pool.x.reshape(len(pool.x), -1)[::stride]).tobytes())
    parts = hashlib.sha256(np.ascontiguousarray(federation.server).tobytes())
    for split in federation.clients:
        for indices in (split.train, split.val, split.test):
            parts.update(np.ascontiguousarray(indices).tobytes() + b"|")
    out = {"data": data.hexdigest()[:16], "partitions": parts.hexdigest()[:16]}
    if budget_file is not None:
        out["budget_file"] = hashlib.sha256(Path(budget_file).read_bytes()).hexdigest()[:16]
    return out


def save_partitions(federation: Federation, path: Path) -> None:
    arrays = {}
    for cid, split in enumerate(federation.clients):
        arrays[f"{cid}/train"] = split.train
        arrays[f"{cid}/val"] = split.val
        arrays[f"{cid}/test"] = split.test
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def load_partitions(path: Path, num_clients: int) -> list[ClientSplit]:
    if not path.is_file():
        raise DataError(f"partition file {path} is missing: re-run the experiment")
    with np.load(path) as data:
        return [ClientSplit(train=data[f"{c}/train"], val=data[f"{c}/val"], test=data[f"{c}/test"])
                for c in range(num_clients)]


_SHARED_POOLS: dict[str, DataPool] = {}


def save_pool(pool: DataPool, folder: Path) -> None:
    """Write ``pool`` as ``.npy`` files (memory-mappable) and its metadata to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"x": pool.x, "y": pool.y}
    if pool.groups is not None:
        arrays["groups"] = pool.groups
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", np.ascontiguousarray(array))
    meta = {"name": pool.name, "num_classes": pool.num_classes, "mean": pool.mean, "std": pool.std}
    (folder / "pool.json").write_text(json.dumps(meta))


def load_shared_pool(folder: Path) -> DataPool:
    """The pool ``save_pool`` wrote, memory-mapped read-only (once per process and folder)."""
    key = str(folder)
    if key not in _SHARED_POOLS:
        if not (folder / "pool.json").is_file():
            raise DataError(f"the run's data pool {folder} is missing: re-run the experiment")
        _SHARED_POOLS.clear()
        meta = json.loads((folder / "pool.json").read_text())
        groups = folder / "groups.npy"
        _SHARED_POOLS[key] = DataPool(
            x=np.load(folder / "x.npy", mmap_mode="r"), y=np.load(folder / "y.npy", mmap_mode="r"),
            groups=np.load(groups, mmap_mode="r") if groups.is_file() else None, **meta)
    return _SHARED_POOLS[key]


def drop_shared_pool(folder: Path) -> None:
    """Delete the files of a finished run's shared pool (its partitions stay)."""
    _SHARED_POOLS.pop(str(folder), None)
    shutil.rmtree(folder, ignore_errors=True)
