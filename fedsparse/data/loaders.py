"""Readers for the standard on-disk formats of common FL datasets, from a folder the user names.

Nothing is downloaded: a missing or malformed folder is a ``DataError`` naming the files expected.
Train and test files are pooled; fedsparse splits every client's own data into train/val/test.
"""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import numpy as np

from fedsparse.config import DataConfig, ExperimentConfig
from fedsparse.data.pool import DataPool
from fedsparse.data.synthetic import generate_synthetic
from fedsparse.errors import DataError

FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzipped or not): magic 0x0000TTDD, DD big-endian dims, then data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc}): replace it with a valid copy") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number): replace it with a valid copy")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header truncated: replace it with a valid copy")
    dims = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX body has {len(raw) - header} bytes, header promises {expected}: "
            "the file is truncated or corrupt, replace it"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find(folder: Path, stems: list[str]) -> Path | None:
    for stem in stems:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


#: classes by the datasets' definitions (labels outside are errors, never new classes)
EMNIST_CLASSES = {"byclass": 62, "bymerge": 47, "balanced": 47, "letters": 27, "digits": 10,
                  "mnist": 10}


def load_idx_folder(folder: Path, name: str, prefix: str = "", transpose: bool = False,
                    num_classes: int = 10) -> DataPool:
    """MNIST-family IDX files: ``{prefix}train-images-idx3-ubyte[.gz]`` and the t10k/test twins."""
    parts = {}
    for split, alt in (("train", "train"), ("t10k", "test")):
        for kind, rank in (("images", 3), ("labels", 1)):
            stems = [f"{prefix}{split}-{kind}-idx{rank}-ubyte", f"{prefix}{alt}-{kind}-idx{rank}-ubyte",
                     f"{prefix}{split}-{kind}.idx{rank}-ubyte"]
            found = _find(folder, stems)
            if found is None:
                raise DataError(
                    f"{name}: {folder} lacks {stems[0]}[.gz]: point --data-dir at a folder with "
                    f"{prefix}train-images-idx3-ubyte, {prefix}train-labels-idx1-ubyte, "
                    f"{prefix}t10k-images-idx3-ubyte and {prefix}t10k-labels-idx1-ubyte"
                )
            parts[(split, kind)] = read_idx(found)
    train, test = parts[("train", "images")], parts[("t10k", "images")]
    if train.shape[1:] != test.shape[1:]:
        raise DataError(f"{name}: {folder} holds train images of {train.shape[1:]} pixels but test "
                        f"images of {test.shape[1:]}: train and test files must come from one "
                        "data set; replace the mismatched pair")
    images = np.concatenate([parts[("train", "images")], parts[("t10k", "images")]])
    labels = np.concatenate([parts[("train", "labels")], parts[("t10k", "labels")]]).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise DataError(f"{name}: images {images.shape} do not match labels {labels.shape} in {folder}")
    if transpose:  # EMNIST stores images transposed relative to MNIST
        images = images.transpose(0, 2, 1)
    images = np.ascontiguousarray(images[:, None, :, :])
    return _finish(name, images, labels, num_classes, source=folder)


def load_cifar_folder(folder: Path, name: str) -> DataPool:
    """CIFAR-10/100 "python version" pickles (data_batch_1..5 + test_batch, or train + test)."""
    if (folder / f"{_CIFAR_DIR[name]}").is_dir():
        folder = folder / _CIFAR_DIR[name]
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if name == "cifar10" else [
        "train", "test"]
    label_key = b"labels" if name == "cifar10" else b"fine_labels"
    xs, ys = [], []
    for fname in files:
        path = folder / fname
        if not path.is_file():
            raise DataError(
                f"{name}: {folder} lacks '{fname}': point --data-dir at the extracted "
                f"'{_CIFAR_DIR[name]}' folder holding {', '.join(files)}"
            )
        try:
            with path.open("rb") as handle:
                batch = pickle.load(handle, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            labels = np.asarray(batch[label_key], dtype=np.int64)
        except Exception as exc:  # malformed pickle of any kind
            raise DataError(f"{path}: not a CIFAR python batch ({exc}): replace it") from exc
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
            raise DataError(f"{path}: expected data (N, 3072) with N labels, got {data.shape}")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    return _finish(name, np.concatenate(xs), np.concatenate(ys), 10 if name == "cifar10" else 100,
                   source=folder)


_CIFAR_DIR = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def load_femnist_folder(folder: Path) -> DataPool:
    """LEAF FEMNIST JSON shards (``train/*.json``, ``test/*.json`` or ``*.json``), one group per writer."""
    files = sorted(folder.glob("train/*.json")) + sorted(folder.glob("test/*.json"))
    files = files or sorted(folder.glob("*.json"))
    if not files:
        raise DataError(
            f"femnist: {folder} holds no LEAF JSON files: point --data-dir at LEAF's "
            "data/femnist/data folder (train/*.json and test/*.json)"
        )
    writers: dict[str, int] = {}
    xs, ys, groups = [], [], []
    for path in files:
        try:
            shard = json.loads(path.read_text())
            users, user_data = shard["users"], shard["user_data"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(
                f"{path}: not a LEAF JSON shard (needs 'users' and 'user_data'): replace it"
            ) from exc
        for user in users:
            try:
                record = user_data[user]
                x = np.asarray(record["x"], dtype=np.float32)
                y = np.asarray(record["y"], dtype=np.int64)
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(f"{path}: writer {user!r} is listed in 'users' but its "
                                f"'user_data' entry is missing or malformed ({exc}): replace the "
                                "shard") from None
            if x.ndim != 2 or x.shape[1] != 784 or len(x) != len(y):
                raise DataError(f"{path}: writer {user} has x {x.shape}, y {y.shape}; expected (N, 784)")
            xs.append(x.reshape(-1, 1, 28, 28))
            ys.append(y)
            groups.append(np.full(len(y), writers.setdefault(user, len(writers)), dtype=np.int64))
    labels = np.concatenate(ys)
    return _finish("femnist", np.concatenate(xs), labels, 62, groups=np.concatenate(groups),
                   source=folder)


def _finish(name: str, x: np.ndarray, y: np.ndarray, num_classes: int,
            groups: np.ndarray | None = None, source: Path | None = None) -> DataPool:
    outside = y[(y < 0) | (y >= num_classes)]
    if outside.size:
        raise DataError(f"{name}: {source or 'the data'} has label {int(outside[0])} ({outside.size} "
                        f"samples), outside the dataset's {num_classes} classes: fix or replace the files")
    if np.issubdtype(x.dtype, np.floating):
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if bad.any():
            raise DataError(f"{name}: {source or 'the data'} has {int(bad.sum())} samples with "
                            f"non-finite values (e.g. sample {int(np.flatnonzero(bad)[0])}): fix or "
                            "replace the files")
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    sample = x[:: max(1, len(x) // 10000)].astype(np.float32) / scale
    std = float(sample.std()) or 1.0
    return DataPool(name=name, x=x, y=y, num_classes=num_classes, groups=groups,
                    mean=float(sample.mean()), std=std)


def resolve_data_dir(data: DataConfig) -> Path:
    """The folder to read, with Fashion-MNIST found at its Debian location when installed."""
    if data.data_dir is not None:
        folder = Path(data.data_dir).expanduser()
        if not folder.is_dir():
            raise DataError(f"data folder {folder} does not exist: pass an existing folder to --data-dir")
        return folder
    if data.dataset == "fashion-mnist":
        if FASHION_MNIST_DEBIAN_DIR.is_dir():
            return FASHION_MNIST_DEBIAN_DIR
        raise DataError(
            "fashion-mnist: no --data-dir given and /usr/share/datasets/fashion-mnist is missing: "
            "run 'apt-get install dataset-fashion-mnist' or pass --data-dir"
        )
    raise DataError(f"{data.dataset}: needs --data-dir pointing at its files (nothing is downloaded)")


def load_pool(config: ExperimentConfig) -> DataPool:
    """Load (or generate) the pooled dataset that the experiment's clients share."""
    data = config.data
    if data.dataset == "synthetic":
        return generate_synthetic(data.synthetic, config.num_clients, config.seed)
    folder = resolve_data_dir(data)
    if data.dataset in ("mnist", "fashion-mnist"):
        return load_idx_folder(folder, data.dataset)
    if data.dataset == "emnist":
        if data.emnist_split not in EMNIST_CLASSES:
            raise DataError(f"emnist: unknown split '{data.emnist_split}': use one of "
                            f"{', '.join(EMNIST_CLASSES)}")
        return load_idx_folder(folder, "emnist", prefix=f"emnist-{data.emnist_split}-", transpose=True,
                               num_classes=EMNIST_CLASSES[data.emnist_split])
    if data.dataset in ("cifar10", "cifar100"):
        return load_cifar_folder(folder, data.dataset)
    return load_femnist_folder(folder)
