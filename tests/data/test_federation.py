"""The run's data pool shared by file: workers memory-map what the driver built."""

import numpy as np
import pytest
import torch

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


@pytest.mark.parametrize("channels", [1, 3])
def test_images_come_channels_last_from_memory_and_from_a_mapped_pool(tmp_path, channels):
    """conv2d picks its kernels by the input's strides: NCHW ones cost cnn-bn 1.4x per epoch."""
    from fedsparse.data.pool import DataPool

    images = np.random.default_rng(0).integers(0, 255, (8, channels, 5, 4), dtype=np.uint8)
    in_memory = DataPool("imgs", images, np.arange(8) % 2, 2)
    save_pool(in_memory, tmp_path / "pool")
    for pool in (in_memory, load_shared_pool(tmp_path / "pool")):
        x, _ = pool.tensors(np.array([5, 1, 2]))
        assert x.shape == (3, channels, 5, 4)
        assert x.stride() == (5 * 4 * channels, 1, 4 * channels, channels)
        assert torch.equal(x, torch.from_numpy(images[[5, 1, 2]]).float() / 255)
