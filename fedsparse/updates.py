"""Sparse model updates and their compact encoding as named numpy arrays (free of Flower).

Each tensor travels as exactly one array (Flower adds a fixed header per Array, so one array
per tensor keeps sparse messages smaller than dense ones even for tiny tensors); the Flower
codec (``fedsparse.codec``) turns the arrays into an ``ArrayRecord`` and back:

- ``name``: dense values (all kept, or a buffer such as BatchNorm statistics);
- ``name#bits``: uint8 bytes = the mask bit-packed (1 bit per coordinate, numpy bit order
  "big", ceil(n/8) bytes), then the kept values (the tensor's dtype, little-endian, row-major);
- ``name#gaps``: uint8 bytes = nnz (uint32, little-endian), the gaps between consecutive kept
  positions (the first counted from -1) one byte each, a gap g > 255 written as (g-1)//255 zero
  bytes then ((g-1) % 255) + 1, then the nnz kept values. Cheaper than bits below density 1/8,
  and decoded by one cumulative sum over the kept coordinates instead of a scan of every bit;
- ``name#index``: uint8 bytes = nnz int32 flat indices (strictly increasing), then the nnz kept
  values. Cheaper than gaps only when the kept coordinates are ~800 apart (density < ~0.13%).

A tensor may be absent (nothing of it sent). ``decode`` validates everything a receiver relies
on: known keys, shapes, dtypes, lengths, index range and order, bit padding, finite values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fedsparse.masks import pack_mask

SEP = "#"
BITS, GAPS, INDEX = "bits", "gaps", "index"
#: a gap byte covers at most this many positions; a zero byte is an escape that skips as many
GAP_STEP = 255


class UpdateRejected(ValueError):
    """A received update that must not be aggregated; the message says why."""


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


Template = dict[str, TensorSpec]


def template_of(state: Mapping[str, torch.Tensor]) -> Template:
    """Names, shapes and dtypes a valid update must match."""
    return {n: TensorSpec(tuple(t.shape), torch.empty(0, dtype=t.dtype).numpy().dtype)
            for n, t in state.items()}


@dataclass(frozen=True)
class TensorUpdate:
    """One received tensor: ``index`` (flat, increasing) is None when the tensor came dense."""

    values: np.ndarray
    index: np.ndarray | None
    numel: int

    @property
    def nnz(self) -> int:
        return int(self.values.size)

    def mask(self) -> np.ndarray:
        """Flat boolean mask of the kept coordinates."""
        if self.index is None:
            return np.ones(self.numel, dtype=bool)
        flat = np.zeros(self.numel, dtype=bool)
        flat[self.index] = True
        return flat


@dataclass(frozen=True)
class SparseUpdate:
    tensors: dict[str, TensorUpdate]

    def kept(self, names: Mapping[str, int]) -> int:
        """Kept coordinates among the tensors named in ``names`` (name -> numel)."""
        return sum(self.tensors[n].nnz for n in names if n in self.tensors)

    def density(self, sizes: Mapping[str, int]) -> float:
        return self.kept(sizes) / max(sum(sizes.values()), 1)

    def masks(self, template: Template) -> dict[str, torch.Tensor]:
        """Boolean masks of the tensors in ``template`` (all-False for tensors not sent)."""
        out = {}
        for name, spec in template.items():
            tensor = self.tensors.get(name)
            flat = np.zeros(spec.numel, dtype=bool) if tensor is None else tensor.mask()
            out[name] = torch.from_numpy(flat.reshape(spec.shape).copy())
        return out

    def partial_masks(self, template: Template, names: set[str]) -> dict[str, torch.Tensor]:
        """Masks of the tensors in ``names`` that did not arrive whole (sparse or absent)."""
        full = self.masks({n: template[n] for n in names if n in template})
        return {n: m for n, m in full.items()
                if n not in self.tensors or self.tensors[n].index is not None}

    def to_state(self, template: Template) -> dict[str, torch.Tensor]:
        """Dense tensors with zeros wherever nothing was sent."""
        state = {}
        for name, spec in template.items():
            flat = np.zeros(spec.numel, dtype=spec.dtype)
            tensor = self.tensors.get(name)
            if tensor is not None:
                if tensor.index is None:
                    flat[:] = tensor.values
                else:
                    flat[tensor.index] = tensor.values
            state[name] = torch.from_numpy(flat.reshape(spec.shape))
        return state


def encode_arrays(state: Mapping[str, torch.Tensor],
                  masks: Mapping[str, torch.Tensor] | None = None) -> dict[str, np.ndarray]:
    """Encode tensors, each masked by ``masks[name]`` if present, in its smallest form."""
    arrays: dict[str, np.ndarray] = {}
    for name, tensor in state.items():
        array = tensor.detach().cpu().numpy()
        mask = None if masks is None or name not in masks else masks[name].cpu().numpy().reshape(-1)
        if mask is None or mask.all():
            arrays[name] = np.array(array, order="C", copy=True)  # keeps 0-d shapes
            continue
        kept = np.flatnonzero(mask)
        values = array.reshape(-1)[kept].astype(array.dtype.newbyteorder("<")).tobytes()
        gaps = np.diff(kept, prepend=-1)
        escapes = (gaps - 1) // GAP_STEP
        sizes = {BITS: (mask.size + 7) // 8, INDEX: 4 * kept.size,
                 GAPS: 4 + kept.size + int(escapes.sum())}
        kind = min(sizes, key=sizes.__getitem__)  # ties: bits, then index
        if kind == BITS:
            head = pack_mask(mask).tobytes()
        elif kind == INDEX:
            head = kept.astype("<i4").tobytes()
        else:
            head = np.uint32(kept.size).astype("<u4").tobytes() + _gap_bytes(gaps, escapes).tobytes()
        arrays[f"{name}{SEP}{kind}"] = np.frombuffer(head + values, dtype=np.uint8)
    return arrays


def _gap_bytes(gaps: np.ndarray, escapes: np.ndarray) -> np.ndarray:
    """Each gap as its escape (zero) bytes followed by one non-zero byte."""
    out = np.zeros(gaps.size + int(escapes.sum()), dtype=np.uint8)
    out[np.arange(gaps.size) + np.cumsum(escapes)] = (gaps - 1) % GAP_STEP + 1
    return out


def _split_key(key: str) -> tuple[str, str]:
    base, sep, part = key.rpartition(SEP)
    return (base, part) if sep and part in (BITS, GAPS, INDEX) else (key, "")


def decode_arrays(arrays: Mapping[str, np.ndarray], template: Template) -> SparseUpdate:
    """Parse and validate an encoded update; raise ``UpdateRejected`` naming the first problem."""
    tensors: dict[str, TensorUpdate] = {}
    for key, data in arrays.items():
        base, kind = _split_key(key)
        if base not in template:
            raise UpdateRejected(f"unknown tensor '{base}'")
        if base in tensors:
            raise UpdateRejected(f"tensor '{base}' is sent twice")
        tensors[base] = _decode_tensor(base, kind, data, template[base])
    return SparseUpdate(tensors)


def _decode_tensor(name: str, kind: str, data: np.ndarray, spec: TensorSpec) -> TensorUpdate:
    if not kind:
        if tuple(data.shape) != spec.shape:
            raise UpdateRejected(f"'{name}' has shape {tuple(data.shape)}, expected {spec.shape}")
        _check_values(name, data, spec)
        return TensorUpdate(values=data.reshape(-1), index=None, numel=spec.numel)
    if data.dtype != np.uint8 or data.ndim != 1:
        raise UpdateRejected(f"'{name}#{kind}' must be 1-D uint8 bytes, got {data.dtype} {data.shape}")
    itemsize = spec.dtype.itemsize
    if kind == BITS:
        head = (spec.numel + 7) // 8
        if data.size < head:
            raise UpdateRejected(f"'{name}#bits' is shorter than its {head}-byte mask")
        padding = 8 * head - spec.numel  # the last byte's low bits (np.packbits is big-endian)
        if padding and int(data[head - 1]) & ((1 << padding) - 1):
            raise UpdateRejected(f"'{name}#bits' sets padding bits beyond {spec.numel} coordinates")
        index = _set_bits(data[:head], spec.numel)
    elif kind == GAPS:
        head, index = _decode_gaps(name, data, spec, itemsize)
    else:
        nnz, rest = divmod(data.size, 4 + itemsize)
        if rest:
            raise UpdateRejected(f"'{name}#index' length {data.size} is not a whole number of "
                                 f"(int32 index, value) pairs")
        head = 4 * nnz
        index = data[:head].view("<i4").astype(np.int64)
        if index.size and (index.min() < 0 or index.max() >= spec.numel):
            raise UpdateRejected(f"'{name}#index' has indices outside [0, {spec.numel})")
        if index.size > 1 and not (np.diff(index) > 0).all():
            raise UpdateRejected(f"'{name}#index' must be strictly increasing (no duplicates)")
    body = data[head:]
    if body.size != index.size * itemsize:
        raise UpdateRejected(f"'{name}' keeps {index.size} coordinates but sends "
                             f"{body.size // itemsize} values")
    values = body.view(spec.dtype.newbyteorder("<")).astype(spec.dtype)
    _check_values(name, values, spec)
    return TensorUpdate(values=values, index=index, numel=spec.numel)


def _decode_gaps(name: str, data: np.ndarray, spec: TensorSpec,
                 itemsize: int) -> tuple[int, np.ndarray]:
    """The header's length and the kept positions (increasing; int32 where they fit: half the
    memory of int64 for the scatter that uses them) of a ``#gaps`` tensor."""
    if data.size < 4:
        raise UpdateRejected(f"'{name}#gaps' is shorter than its 4-byte count")
    nnz = int(data[:4].view("<u4")[0])
    length = data.size - 4 - nnz * itemsize
    if length < nnz:
        raise UpdateRejected(f"'{name}#gaps' is too short for the {nnz} coordinates it announces")
    gaps = data[4:4 + length]
    ends = None
    if length == nnz:  # no escapes: every byte is one gap
        if not gaps.all():
            raise UpdateRejected(f"'{name}#gaps' holds {np.count_nonzero(gaps)} gaps, not the "
                                 f"{nnz} it announces")
        steps = gaps
    else:
        ends = gaps != 0
        if np.count_nonzero(ends) != nnz:
            raise UpdateRejected(f"'{name}#gaps' holds {np.count_nonzero(ends)} gaps, not the "
                                 f"{nnz} it announces")
        if not ends[-1]:
            raise UpdateRejected(f"'{name}#gaps' ends in escape bytes that skip to no coordinate")
        steps = np.where(ends, gaps, np.uint8(GAP_STEP))
    small = spec.numel < 2**31
    if small and GAP_STEP * length >= 2**31 and int(steps.sum(dtype=np.int64)) > spec.numel:
        # the int32 running sum could wrap around before the last position is checked
        raise UpdateRejected(f"'{name}#gaps' has positions outside [0, {spec.numel})")
    positions = np.cumsum(steps, dtype=np.int32 if small else np.int64)
    positions -= 1
    if positions.size and positions[-1] >= spec.numel:
        raise UpdateRejected(f"'{name}#gaps' has positions outside [0, {spec.numel})")
    return 4 + length, positions if ends is None else positions[ends]


def _set_bits(packed: np.ndarray, numel: int) -> np.ndarray:
    """Positions (int64, increasing) of the set bits of a big-endian packed mask: torch's
    nonzero on the unpacked bytes viewed as booleans is about twice as fast as numpy's."""
    unpacked = np.unpackbits(packed, count=numel).view(np.bool_)
    return torch.from_numpy(unpacked).nonzero().reshape(-1).numpy()


def _check_values(name: str, values: np.ndarray, spec: TensorSpec) -> None:
    if values.dtype != spec.dtype:
        raise UpdateRejected(f"'{name}' has dtype {values.dtype}, expected {spec.dtype}")
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise UpdateRejected(f"'{name}' holds NaN or Inf values")


def coordinates_outside(update: SparseUpdate, masks: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Per masked tensor, how many coordinates the update carries outside ``masks`` (the tensors
    a client was sent only in part); tensors with none outside are left out."""
    out = {}
    for name, mask in masks.items():
        tensor = update.tensors.get(name)
        if tensor is None:
            continue
        flat = mask.reshape(-1).numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask).reshape(-1)
        sent = tensor.mask()
        extra = int(np.count_nonzero(sent & ~flat.astype(bool)))
        if extra:
            out[name] = extra
    return out
