"""The Flower codec: fedsparse's arrays and records <-> Flower records, and message byte counts.

The one place where fedsparse's Flower-free types meet Flower's records:

- a model update (``fedsparse.updates``'s encoded arrays) <-> one ``ArrayRecord``;
- a method's extra ``Records`` (name -> arrays) <-> ``ArrayRecord``s of a ``RecordDict``;
- message bytes are measured, not estimated: the serialized size of the Message's records (every
  object of its RecordDict tree as Flower's transport pushes them). The Message header (~100
  bytes of ids that are random per run) is left out so that one seed gives one count.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.app.message.arraychunk import ArrayChunk
from flwr.supercore.constant import HEAD_BODY_DIVIDER, HEAD_VALUE_DIVIDER
from flwr.supercore.inflatable.inflatable_object import (
    InflatableObject,
    get_all_nested_objects,
    no_object_id_recompute,
)

from fedsparse.method import Records
from fedsparse.updates import SparseUpdate, Template, UpdateRejected, decode_arrays, encode_arrays


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays as one ArrayRecord (C-ordered copies: Flower keeps the bytes)."""
    return ArrayRecord(array_dict={k: Array(np.array(v, order="C", copy=True))
                                   for k, v in arrays.items()})


def from_record(record: ArrayRecord, writeable: bool = True) -> dict[str, np.ndarray]:
    """An ArrayRecord's arrays; ``UpdateRejected`` names one that cannot be read.

    ``writeable=False``: arrays may be read-only views of the received bytes (no copy).
    """
    out = {}
    for key, array in record.items():
        try:
            out[key] = _numpy(array, writeable)
        except Exception as exc:  # unreadable payload
            raise UpdateRejected(f"array '{key}' cannot be read: {exc}") from exc
    return out


def _numpy(array: Array, writeable: bool) -> np.ndarray:
    """``Array.numpy()`` without parsing the .npy header when it is byte for byte the header
    numpy writes for the Array's declared dtype and shape: a sparse update of ResNet18 has 122
    arrays, and parsing their headers was a third of decoding it. Anything else goes through
    Flower's own reader, with its checks."""
    if array.stype == "numpy.ndarray":
        header = _npy_header(array.dtype, tuple(array.shape))
        data = array.data
        if header is not None and data[:len(header)] == header:
            dtype = np.dtype(array.dtype)
            count = math.prod(array.shape)
            if len(data) == len(header) + count * dtype.itemsize:
                view = np.frombuffer(data, dtype, count, offset=len(header)).reshape(array.shape)
                return view.copy() if writeable else view
    return array.numpy()


@functools.lru_cache(maxsize=4096)
def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes | None:
    """The .npy (version 1.0) header that ``np.save`` writes for a C-ordered array."""
    try:
        descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    except TypeError:
        return None
    if not isinstance(descr, str) or np.dtype(dtype).hasobject:
        return None
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False,
                                                  "shape": shape})
    return buffer.getvalue()


def encode(state: Mapping[str, torch.Tensor],
           masks: Mapping[str, torch.Tensor] | None = None) -> ArrayRecord:
    """A model (or the coordinates ``masks`` keep) as one ArrayRecord."""
    return ArrayRecord(array_dict={k: Array(v) for k, v in encode_arrays(state, masks).items()})


def decode(record: ArrayRecord, template: Template) -> SparseUpdate:
    """Parse and validate an encoded update; ``UpdateRejected`` names the first problem."""
    return decode_arrays(from_record(record, writeable=False), template)


def pack_records(records: Records) -> dict[str, ArrayRecord]:
    return {name: to_record(arrays) for name, arrays in records.items()}


def unpack_records(content: RecordDict, skip: Iterable[str]) -> Records:
    """Every ArrayRecord of a message except those in ``skip`` (e.g. the model)."""
    skipped = set(skip)
    return {name: from_record(record) for name, record in content.array_records.items()
            if name not in skipped}


def deflated_size(obj: InflatableObject) -> int:
    """``len(obj.deflate())``, derived without serializing where the size follows from the
    object: an ``ArrayChunk`` (almost all of a model's bytes) deflates to Flower's header (type,
    no children, body length) and its data unchanged, so copying megabytes only to take their
    length is skipped. Other objects (small: metadata, configs, metrics) are serialized."""
    if type(obj) is ArrayChunk:
        header = f"ArrayChunk{HEAD_VALUE_DIVIDER}{HEAD_VALUE_DIVIDER}{len(obj.data)}"
        return len(header.encode()) + len(HEAD_BODY_DIVIDER) + memoryview(obj.data).nbytes
    return len(obj.deflate())


def serialized_bytes(obj: Message | RecordDict | ArrayRecord) -> int:
    """Exact bytes of a Message (or record) as serialized for Flower's transport."""
    return sum(deflated_size(o) for o in get_all_nested_objects(obj).values())


class ByteCounter:
    """``serialized_bytes`` with sizes remembered by object id.

    Flower objects are content-addressed, so a model broadcast to many clients is serialized
    once here instead of once per message. Objects counted in one call are hashed once (Flower's
    own ``no_object_id_recompute``, as its gRPC grid uses when pushing): hashing every chunk
    again for each nested lookup was most of the server's per-round bookkeeping.
    """

    def __init__(self) -> None:
        self._sizes: dict[str, int] = {}

    def __call__(self, obj: Message | RecordDict | ArrayRecord) -> int:
        return self.many([obj])[0]

    def many(self, objs: Sequence[Message | RecordDict | ArrayRecord]) -> list[int]:
        """Bytes of each object; shared parts (the same model in many messages) counted once."""
        with no_object_id_recompute():
            return [self._count(obj) for obj in objs]

    def _count(self, obj: Message | RecordDict | ArrayRecord) -> int:
        total = 0
        for object_id, nested in get_all_nested_objects(obj).items():
            if object_id not in self._sizes:
                self._sizes[object_id] = deflated_size(nested)
            total += self._sizes[object_id]
        return total

    def forget(self) -> None:
        self._sizes.clear()
