"""Each loader reads small files written here in the dataset's real on-disk format."""

import gzip
import json
import pickle
import struct

import numpy as np
import pytest

from fedsparse.config import load_config
from fedsparse.data.loaders import (
    load_cifar_folder,
    load_femnist_folder,
    load_idx_folder,
    load_pool,
    read_idx,
)
from fedsparse.errors import DataError


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def make_idx_folder(folder, prefix="", compress=True, n_train=30, n_test=10):
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}{split}-images-idx3-ubyte{suffix}",
                  rng.integers(0, 256, (n, 28, 28)), compress)
        write_idx(folder / f"{prefix}{split}-labels-idx1-ubyte{suffix}", np.arange(n) % 10, compress)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    make_idx_folder(tmp_path, compress=compress)
    pool = load_idx_folder(tmp_path, "mnist")
    assert pool.x.shape == (40, 1, 28, 28) and pool.x.dtype == np.uint8
    assert pool.num_classes == 10 and pool.y[:3].tolist() == [0, 1, 2]
    x, _ = pool.tensors(np.arange(5))
    assert x.shape == (5, 1, 28, 28) and abs(float(pool.tensors(np.arange(40))[0].mean())) < 0.1


def test_labels_outside_the_datasets_classes_are_refused(tmp_path):
    """The class count comes from the dataset's definition, not from the labels found."""
    make_idx_folder(tmp_path)
    labels = np.arange(30) % 10
    labels[7] = 200
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels, compress=True)
    with pytest.raises(DataError, match=r"label 200 .* outside the dataset's 10 classes"):
        load_idx_folder(tmp_path, "mnist")


def test_emnist_prefix_and_transpose(tmp_path):
    make_idx_folder(tmp_path, prefix="emnist-balanced-")
    raw = read_idx(tmp_path / "emnist-balanced-train-images-idx3-ubyte.gz")
    cfg = load_config(None, ["data.dataset=emnist", f"data.data_dir={tmp_path}"])
    pool = load_pool(cfg)
    assert np.array_equal(pool.x[0, 0], raw[0].T)


def test_idx_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="lacks train-images-idx3-ubyte"):
        load_idx_folder(tmp_path, "mnist")
    make_idx_folder(tmp_path, compress=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x12\x34\x56\x78")
    with pytest.raises(DataError, match="bad magic"):
        load_idx_folder(tmp_path, "mnist")
    bad = tmp_path / "train-labels-idx1-ubyte"
    write_idx(bad, np.arange(30) % 10)
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_idx_folder(tmp_path, "mnist")


def _cifar_batch(path, n, label_key, classes):
    rng = np.random.default_rng(1)
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             label_key: (np.arange(n) % classes).tolist()}
    path.write_bytes(pickle.dumps(batch))


def test_cifar10_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        _cifar_batch(folder / f"data_batch_{i}", 4, b"labels", 10)
    _cifar_batch(folder / "test_batch", 4, b"labels", 10)
    pool = load_cifar_folder(tmp_path, "cifar10")  # finds the extracted sub-folder itself
    assert pool.x.shape == (24, 3, 32, 32) and pool.num_classes == 10


def test_cifar100_and_errors(tmp_path):
    _cifar_batch(tmp_path / "train", 6, b"fine_labels", 100)
    with pytest.raises(DataError, match="lacks 'test'"):
        load_cifar_folder(tmp_path, "cifar100")
    _cifar_batch(tmp_path / "test", 2, b"fine_labels", 100)
    pool = load_cifar_folder(tmp_path, "cifar100")
    assert len(pool) == 8 and pool.num_classes == 100
    (tmp_path / "test").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not a CIFAR python batch"):
        load_cifar_folder(tmp_path, "cifar100")


def _leaf_shard(path, users, n=5):
    rng = np.random.default_rng(2)
    data = {u: {"x": rng.random((n, 784)).round(3).tolist(), "y": [i % 62 for i in range(n)]}
            for u in users}
    path.write_text(json.dumps({"users": users, "num_samples": [n] * len(users), "user_data": data}))


def test_femnist_leaf_json_groups_by_writer(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    _leaf_shard(tmp_path / "train" / "all_data_0.json", ["f0001", "f0002"])
    _leaf_shard(tmp_path / "test" / "all_data_0.json", ["f0001", "f0002"], n=2)
    pool = load_femnist_folder(tmp_path)
    assert pool.x.shape == (14, 1, 28, 28) and pool.num_classes == 62
    assert np.bincount(pool.groups).tolist() == [7, 7]
    (tmp_path / "test" / "broken.json").write_text("{\"users\": 1")
    with pytest.raises(DataError, match="not a LEAF JSON shard"):
        load_femnist_folder(tmp_path)


def test_missing_folders(tmp_path):
    with pytest.raises(DataError, match="no LEAF JSON"):
        load_femnist_folder(tmp_path)
    cfg = load_config(None, ["data.dataset=mnist", f"data.data_dir={tmp_path / 'nope'}"])
    with pytest.raises(DataError, match="does not exist"):
        load_pool(cfg)
    with pytest.raises(DataError, match="needs --data-dir"):
        load_pool(load_config(None, ["data.dataset=cifar10"]))


def test_train_and_test_images_of_different_sizes_are_one_line(tmp_path):
    make_idx_folder(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((10, 32, 32)), compress=True)
    with pytest.raises(DataError, match=r"train images of \(28, 28\) pixels but test images of "
                                        r"\(32, 32\)"):
        load_idx_folder(tmp_path, "fashion-mnist")


def test_a_femnist_writer_listed_without_data_or_with_nan_pixels_is_one_line(tmp_path):
    _leaf_shard(tmp_path / "a.json", ["f0001", "f0002"])
    shard = json.loads((tmp_path / "a.json").read_text())
    del shard["user_data"]["f0002"]
    (tmp_path / "a.json").write_text(json.dumps(shard))
    with pytest.raises(DataError, match="writer 'f0002' is listed in 'users' but its 'user_data' "
                                        "entry is missing"):
        load_femnist_folder(tmp_path)
    _leaf_shard(tmp_path / "a.json", ["f0001"])
    shard = json.loads((tmp_path / "a.json").read_text())
    shard["user_data"]["f0001"]["x"][3][5] = float("nan")
    (tmp_path / "a.json").write_text(json.dumps(shard))
    with pytest.raises(DataError, match=r"1 samples with non-finite values \(e.g. sample 3\)"):
        load_femnist_folder(tmp_path)
