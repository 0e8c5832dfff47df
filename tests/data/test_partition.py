
import numpy as np
import pytest

from fedsparse.config import PartitionConfig
from fedsparse.data.partition import partition_indices, split_client
from fedsparse.data.pool import DataPool
from fedsparse.errors import DataError
from tests.fresh_interpreter import run_fresh


def _pool(n: int = 3000, classes: int = 10, groups: int | None = None) -> DataPool:
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, n)
    owners = rng.integers(0, groups, n) if groups else None
    return DataPool(name="toy", x=rng.normal(size=(n, 4)).astype(np.float32), y=y,
                    num_classes=classes, groups=owners)


def _covers_disjointly(parts, n):
    flat = np.concatenate(parts)
    assert len(flat) == len(np.unique(flat))
    assert flat.min() >= 0 and flat.max() < n


def test_iid_sizes_and_determinism():
    pool = _pool()
    parts = partition_indices(pool, PartitionConfig(kind="iid"), 10, seed=3)
    assert sorted(len(p) for p in parts) == [300] * 10
    _covers_disjointly(parts, len(pool))
    again = partition_indices(pool, PartitionConfig(kind="iid"), 10, seed=3)
    other = partition_indices(pool, PartitionConfig(kind="iid"), 10, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert not np.array_equal(parts[0], other[0])


def _skew(pool, parts) -> float:
    overall = np.bincount(pool.y, minlength=pool.num_classes) / len(pool)
    tv = [0.5 * np.abs(np.bincount(pool.y[p], minlength=pool.num_classes) / len(p) - overall).sum()
          for p in parts]
    return float(np.mean(tv))


def test_dirichlet_skew_grows_as_alpha_falls_and_is_seeded():
    pool = _pool()
    skews = []
    for alpha in (100.0, 1.0, 0.1):
        parts = partition_indices(pool, PartitionConfig(kind="dirichlet", alpha=alpha, min_size=5),
                                  10, seed=0)
        _covers_disjointly(parts, len(pool))
        assert sum(len(p) for p in parts) == len(pool)
        skews.append(_skew(pool, parts))
    assert skews[0] < skews[1] < skews[2]
    a = partition_indices(pool, PartitionConfig(kind="dirichlet", alpha=0.5, min_size=5), 10, 1)
    b = partition_indices(pool, PartitionConfig(kind="dirichlet", alpha=0.5, min_size=5), 10, 1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_impossible_dirichlet_gives_a_data_error():
    with pytest.raises(DataError, match="partitioning failed"):
        partition_indices(_pool(200), PartitionConfig(kind="dirichlet", alpha=0.01, min_size=15), 12, 0)


def test_shards_give_k_classes_per_client():
    pool = _pool()
    parts = partition_indices(pool, PartitionConfig(kind="shards", classes_per_client=2), 10, seed=0)
    _covers_disjointly(parts, len(pool))
    assert all(1 <= len(np.unique(pool.y[p])) <= 2 for p in parts)
    with pytest.raises(DataError, match="exceeds"):
        partition_indices(pool, PartitionConfig(kind="shards", classes_per_client=11), 10, 0)


def test_natural_keeps_owners_together():
    pool = _pool(groups=8)
    parts = partition_indices(pool, PartitionConfig(kind="natural"), 8, seed=0)
    assert all(len(np.unique(pool.groups[p])) == 1 for p in parts)
    assert sorted(int(pool.groups[p][0]) for p in parts) == list(range(8))
    fewer = partition_indices(pool, PartitionConfig(kind="natural"), 5, seed=0)
    assert len(fewer) == 5 and all(len(np.unique(pool.groups[p])) == 1 for p in fewer)
    with pytest.raises(DataError, match="natural owners"):
        partition_indices(pool, PartitionConfig(kind="natural"), 9, seed=0)
    with pytest.raises(DataError, match="no natural owners"):
        partition_indices(_pool(), PartitionConfig(kind="natural"), 4, seed=0)


def test_split_client_fractions_and_disjointness():
    idx = np.arange(100, 200)
    split = split_client(idx, PartitionConfig(), seed=0, client=3)
    assert (len(split.train), len(split.val), len(split.test)) == (60, 20, 20)
    assert sorted(np.concatenate([split.train, split.val, split.test]).tolist()) == idx.tolist()
    tiny = split_client(np.arange(3), PartitionConfig(), seed=0, client=0)
    assert len(tiny.train) >= 1 and len(tiny.test) >= 1
    again = split_client(idx, PartitionConfig(), seed=0, client=3)
    assert np.array_equal(split.test, again.test)


@pytest.mark.parametrize("clients", [12, 7])
def test_natural_indices_equal_flower_datasets_load_partition(clients):
    """The numpy group-by gives exactly the partitioner's own partitions, in its order."""
    from flwr_datasets.partitioner import NaturalIdPartitioner

    from fedsparse.data.partition import _index_dataset

    pool = _pool(groups=12)
    parts = partition_indices(pool, PartitionConfig(kind="natural"), clients, seed=3)
    partitioner = NaturalIdPartitioner(partition_by="group")
    partitioner.dataset = _index_dataset(pool)
    chosen = np.sort(np.random.default_rng(3).choice(12, clients, replace=False))
    chosen = np.arange(12) if clients == 12 else chosen
    expected = [np.asarray(partitioner.load_partition(int(c))["idx"]) for c in chosen]
    assert len(parts) == len(expected)
    for mine, theirs in zip(parts, expected, strict=True):
        np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "shards"])
def test_indices_equal_flower_datasets_load_partition(kind, monkeypatch):
    """Read from the partitioner's map (or cut directly, IID), every client's indices are
    exactly what the partitioner's own ``load_partition`` gives, in its order; and no
    per-client ``load_partition`` (a Dataset built and fingerprinted each) is run for them."""
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    from fedsparse.data.partition import _index_dataset

    pool, clients, seed = _pool(), 9, 5
    cfg = PartitionConfig(kind=kind, alpha=0.5, min_size=2, classes_per_client=2)
    with monkeypatch.context() as patch:
        for cls in (DirichletPartitioner, IidPartitioner, PathologicalPartitioner):
            patch.setattr(cls, "load_partition", lambda *_: pytest.fail("one Dataset per client"))
        parts = partition_indices(pool, cfg, clients, seed=seed)
    dataset = _index_dataset(pool)
    if kind == "iid":
        order = np.random.default_rng(seed).permutation(len(pool))
        partitioner = IidPartitioner(num_partitions=clients)
        dataset = dataset.select(order)
    elif kind == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=clients, partition_by="label", alpha=0.5, min_partition_size=2,
            self_balancing=False, shuffle=True, seed=seed)
    else:
        partitioner = PathologicalPartitioner(
            num_partitions=clients, partition_by="label", num_classes_per_partition=2,
            class_assignment_mode="first-deterministic", shuffle=True, seed=seed)
    partitioner.dataset = dataset
    expected = [np.asarray(partitioner.load_partition(i)["idx"]) for i in range(clients)]
    assert len(parts) == clients
    for mine, theirs in zip(parts, expected, strict=True):
        np.testing.assert_array_equal(mine, theirs)
        assert mine.dtype == np.int64


def test_partitioners_import_without_the_packages_plots_and_the_package_still_imports_whole():
    """The light import skips seaborn and scipy.stats; a later ``import flwr_datasets`` runs the
    real ``__init__`` and shares the partitioner modules (a fresh interpreter: nothing loaded)."""
    script = (
        "import sys\n"
        "from fedsparse.data.partition import flwr_partitioners\n"
        "light = flwr_partitioners()\n"
        "assert 'seaborn' not in sys.modules and 'scipy.stats' not in sys.modules, 'plots loaded'\n"
        "assert 'flwr_datasets' not in sys.modules, 'stand-in left behind'\n"
        "import flwr_datasets\n"
        "assert flwr_datasets.partitioner is light\n"
        "assert flwr_datasets.visualization and flwr_datasets.FederatedDataset\n"
        "assert flwr_partitioners() is light\n"
    )
    run_fresh(script)
