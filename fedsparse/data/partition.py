"""Divide a pooled dataset among clients, then each client's share into train/val/test.

Label-based partitioners come from flwr-datasets (they run offline on an in-memory dataset of
labels and sample indices); fedsparse only adds seeding, the ``natural`` client pick and the
per-client split. IID is a seeded shuffle cut into contiguous shards, which is all flwr-datasets'
``IidPartitioner`` does, so it needs no dataset (nor ``datasets``' 1.2 s import).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np

from fedsparse.config import PartitionConfig
from fedsparse.data.pool import DataPool
from fedsparse.errors import DataError
from fedsparse.imports import import_skipping_init
from fedsparse.seeding import rng


@dataclass(frozen=True)
class ClientSplit:
    """Indices into the pool of one client's train, validation and test samples."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _index_dataset(pool: DataPool):  # -> datasets.Dataset
    from datasets import Dataset  # heavy import, only where partitioning happens

    columns = {"idx": np.arange(len(pool)), "label": pool.y}
    if pool.groups is not None:
        columns["group"] = pool.groups
    # Arrow format: the partitioners read whole columns (``np.array(dataset["label"])``), which
    # datasets 4 otherwise hands out as a lazy Column that numpy iterates row by row
    return Dataset.from_dict(columns).with_format("arrow")


def flwr_partitioners() -> ModuleType:
    """``flwr_datasets.partitioner``, imported without running ``flwr_datasets/__init__``.

    That ``__init__`` imports the package's plots and metrics (seaborn, scipy.stats: most of the
    import's time, in every run's start-up) although the partitioners need only
    ``datasets`` and numpy.
    """
    return import_skipping_init("flwr_datasets", "flwr_datasets.partitioner")


def check_partitioning(pool: DataPool, cfg: PartitionConfig, num_clients: int) -> None:
    """What makes a partitioning impossible, found without partitioning (so before Ray starts)."""
    if num_clients > len(pool):
        raise DataError(f"{num_clients} clients but only {len(pool)} samples: lower --clients")
    if cfg.kind == "shards" and cfg.classes_per_client > pool.num_classes:
        raise DataError(f"partition.classes_per_client={cfg.classes_per_client} exceeds the "
                        f"{pool.num_classes} classes of {pool.name}: lower it")


def partition_indices(pool: DataPool, cfg: PartitionConfig, num_clients: int,
                      seed: int) -> list[np.ndarray]:
    """Sample indices of every client, deterministic for a given seed."""
    check_partitioning(pool, cfg, num_clients)
    if cfg.kind == "natural":
        return _natural(pool, num_clients, seed, flwr_partitioners().NaturalIdPartitioner)
    if cfg.kind == "iid":  # contiguous shards of a seeded shuffle, as IidPartitioner cuts them
        order = np.random.default_rng(seed).permutation(len(pool))
        return [part.astype(np.int64) for part in np.array_split(order, num_clients)]
    partitioners = flwr_partitioners()
    if cfg.kind == "dirichlet":
        partitioner = partitioners.DirichletPartitioner(
            num_partitions=num_clients, partition_by="label", alpha=cfg.alpha,
            min_partition_size=cfg.min_size, self_balancing=False, shuffle=True, seed=seed)
        partitioner.dataset = _index_dataset(pool)
    else:
        partitioner = partitioners.PathologicalPartitioner(
            num_partitions=num_clients, partition_by="label",
            num_classes_per_partition=cfg.classes_per_client, class_assignment_mode="first-deterministic",
            shuffle=True, seed=seed)
        partitioner.dataset = _index_dataset(pool)
    try:
        parts = _partitions_of(partitioner, num_clients)
    except ValueError as exc:
        raise DataError(f"{cfg.kind} partitioning failed ({exc}): raise partition.alpha, lower "
                        "partition.min_size or use fewer clients") from exc
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise DataError(f"{cfg.kind} partitioning left {len(empty)} clients without data "
                        f"(e.g. client {empty[0]}): use fewer clients or more classes per client")
    return parts


def _partitions_of(partitioner, num_clients: int) -> list[np.ndarray]:
    """Every client's sample indices, as the partitioner's ``load_partition`` gives them.

    ``load_partition`` builds a ``datasets.Dataset`` per client and fingerprints it by pickling
    its arguments (0.35 s for 100 Fashion-MNIST clients, 23 s for 10,000 in shards).
    flwr-datasets' label partitioners (0.6, pinned in pyproject.toml) determine every
    client's indices in one pass and keep them in a map; that map is read instead (the
    dataset's index column is 0..n-1, so its positions are the samples' indices). A
    partitioner without the map is asked client by client. ``test_partition`` checks both
    against ``load_partition``.
    """
    _ = partitioner.num_partitions  # determines the partitions (or raises ValueError)
    kept = getattr(partitioner, "_partition_id_to_indices", None)
    if isinstance(kept, dict) and sorted(kept) == list(range(num_clients)):
        return [np.asarray(kept[i], dtype=np.int64) for i in range(num_clients)]
    # the column read as Arrow: datasets 4 hands out a lazy Column that numpy iterates row by row
    return [partitioner.load_partition(i).with_format("arrow")["idx"].to_numpy().astype(np.int64)
            for i in range(num_clients)]


def _natural(pool: DataPool, num_clients: int, seed: int, partitioner_cls) -> list[np.ndarray]:
    if pool.groups is None:
        raise DataError(f"{pool.name} has no natural owners: use --partition iid, dirichlet or shards")
    partitioner = partitioner_cls(partition_by="group")
    partitioner.dataset = _index_dataset(pool)
    available = partitioner.num_partitions
    if available < num_clients:
        raise DataError(f"{pool.name} has {available} natural owners but {num_clients} clients were "
                        f"asked for: use --clients {available} or fewer")
    chosen = np.sort(np.random.default_rng(seed).choice(available, num_clients, replace=False))
    if available == num_clients:
        chosen = np.arange(num_clients)
    # load_partition selects a datasets.Dataset per client (minutes at 10,000 clients); the
    # partitioner's natural-id order with a numpy group-by gives the same indices
    natural = partitioner.partition_id_to_natural_id
    owners = np.asarray(pool.groups)
    order = np.argsort(owners, kind="stable")
    values, starts = np.unique(owners[order], return_index=True)
    bounds = dict(zip(values.tolist(), zip(starts, [*starts[1:], len(order)], strict=True),
                      strict=True))
    return [np.sort(order[slice(*bounds[natural[int(c)]])]).astype(np.int64) for c in chosen]


def split_client(indices: np.ndarray, cfg: PartitionConfig, seed: int, client: int) -> ClientSplit:
    """Shuffle one client's samples and cut them by the configured fractions.

    Train and test always get at least one sample each; validation may be empty.
    """
    draw = rng(seed, "client-split", client)
    shuffled = indices[draw.permutation(len(indices))]
    n = len(shuffled)
    n_test = max(1, round(cfg.test * n))
    n_val = round(cfg.val * n) if cfg.val > 0 else 0
    n_val = min(n_val, max(0, n - n_test - 1))
    n_train = n - n_test - n_val
    if n_train < 1:
        raise DataError(f"client {client} has {n} samples, too few to split: use fewer clients")
    return ClientSplit(train=shuffled[:n_train], val=shuffled[n_train:n_train + n_val],
                       test=shuffled[n_train + n_val:])
