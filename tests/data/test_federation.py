"""The run's data pool shared by file: workers memory-map what the driver built."""

import numpy as np
import pytest

from fedsparse.config import load_config
from fedsparse.data.federation import (
    build_federation,
    drop_shared_pool,
    load_shared_pool,
    save_partitions,
    save_pool,
)
from fedsparse.errors import DataError
from fedsparse.simulation.client_app import ClientRuntime


def test_a_worker_maps_the_drivers_pool_and_reads_the_same_client_data(tmp_path):
    config = load_config(None, ["num_clients=6"])
    federation = build_federation(config)
    save_partitions(federation, tmp_path / "partitions.npz")
    save_pool(federation.pool, tmp_path / "pool")
    shared = load_shared_pool(tmp_path / "pool")
    assert isinstance(shared.x, np.memmap) and not shared.x.flags.writeable
    assert shared.name == federation.pool.name and shared.num_classes == federation.pool.num_classes
    np.testing.assert_array_equal(shared.groups, federation.pool.groups)
    runtime = ClientRuntime(config, tmp_path / "partitions.npz")
    assert runtime.pool() is shared  # mapped once per process
    for pid in range(6):
        data = runtime.data(runtime.split(pid))
        x, y = federation.pool.tensors(federation.clients[pid].train)
        assert np.array_equal(data.x_train.numpy(), x.numpy()) and np.array_equal(data.y_train, y)
    drop_shared_pool(tmp_path / "pool")
    assert not (tmp_path / "pool").exists() and (tmp_path / "partitions.npz").exists()
    with pytest.raises(DataError, match="re-run the experiment"):
        load_shared_pool(tmp_path / "pool")
