"""How shared-mask pruning's extra data travels in Flower records.

FedTiny's adjustment rounds: clients reply with a ``pairs`` ArrayRecord holding, per scored
layer, ``name#index`` (int64 flat positions) and ``name#value`` (float32 gradients); clients
below the top tier receive the top mask of the scored layers bit-packed in ``adjust-mask``.

Adaptive BN selection's candidates and statistics:

Round A and round B are their own Message types (``query.bn_stats``, ``query.bn_eval``) so a
ClientApp routes them to dedicated handlers. Candidate masks travel bit-packed (1 bit per
weight) beside one copy of the warmed-up weights, not as K masked models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fedsparse.masks import Masks

PAIRS_RECORD = "pairs"
ADJUST_MASK_RECORD = "adjust-mask"
BN_STATS_ACTION = "bn_stats"
BN_EVAL_ACTION = "bn_eval"
BN_STATS_TYPE = f"query.{BN_STATS_ACTION}"
BN_EVAL_TYPE = f"query.{BN_EVAL_ACTION}"


def pack_candidates(candidates: Sequence[Masks]) -> ArrayRecord:
    return ArrayRecord(array_dict={f"{k}/{name}": Array(np.packbits(m.numpy().ravel()))
                                   for k, masks in enumerate(candidates) for name, m in masks.items()})


def unpack_candidates(record: ArrayRecord, count: int,
                      params: Mapping[str, torch.Tensor]) -> list[Masks]:
    out: list[Masks] = [{} for _ in range(count)]
    for key, array in record.items():
        k, _, name = key.partition("/")
        shape = params[name].shape
        bits = np.unpackbits(array.numpy())[:params[name].numel()].astype(bool)
        out[int(k)][name] = torch.from_numpy(bits).view(shape)
    return out


def pack_candidate_stats(stats: Sequence[Mapping[str, torch.Tensor]]) -> ArrayRecord:
    return ArrayRecord(array_dict={f"{k}/{name}": Array(t.numpy().astype(np.float32))
                                   for k, bn in enumerate(stats) for name, t in bn.items()})


def unpack_candidate_stats(record: ArrayRecord, count: int) -> list[dict[str, torch.Tensor]]:
    """Per candidate, BN statistics by buffer name; raises ``ValueError`` on a malformed record."""
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(count)]
    for key, array in record.items():
        k, sep, name = key.partition("/")
        if not sep or not k.isdigit() or int(k) >= count:
            raise ValueError(f"unexpected key {key!r} in the BN statistics")
        values = array.numpy()
        if not np.issubdtype(values.dtype, np.floating) or not np.all(np.isfinite(values)):
            raise ValueError(f"{key}: BN statistics must be finite floats")
        out[int(k)][name] = torch.from_numpy(values.astype(np.float32))
    return out


def encode_pairs(pairs: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> ArrayRecord:
    arrays: dict[str, Array] = {}
    for name, (index, values) in pairs.items():
        arrays[f"{name}#index"] = Array(np.ascontiguousarray(index, dtype=np.int64))
        arrays[f"{name}#value"] = Array(np.ascontiguousarray(values, dtype=np.float32))
    return ArrayRecord(array_dict=arrays)


def decode_pairs(record: ArrayRecord) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Inverse of ``encode_pairs``; raises ``ValueError`` on a malformed record."""
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, array in record.items():
        name, sep, part = key.rpartition("#")
        if not sep or part not in ("index", "value"):
            raise ValueError(f"unexpected key {key!r} in the pairs record")
        pairs.setdefault(name, {})[part] = array.numpy()
    out = {}
    for name, parts in pairs.items():
        if set(parts) != {"index", "value"}:
            raise ValueError(f"{name}: pairs need both index and value arrays")
        if parts["index"].dtype.kind not in "iu":
            raise ValueError(f"{name}: indices must be integers")
        out[name] = (parts["index"].astype(np.int64), parts["value"].astype(np.float32))
    return out
