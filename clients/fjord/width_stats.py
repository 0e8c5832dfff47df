"""FjORD's per-width BatchNorm statistics (the authors' ODBatchNorm), kept beside the model.

ODBatchNorm gives every width p its own running statistics over its first ceil(pC) channels and
shares the affine parameters. fedsparse keeps the model's architecture (every other part of the
platform slices, sends and checks it) and holds the per-width statistics apart: the server keeps
one set per width, sends each client those it may draw as records, and averages each width's over
the clients that trained batches at it, weighted by those batches' samples. Statistics are
client-reported (the server cannot recount them); they are checked for shape and sign only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedsparse.method import Records
from fedsparse.structured import ChannelGraph, channels_at

STATS = ("running_mean", "running_var")
SAMPLES = "samples"


def width_key(width: float) -> str:
    """The record name of one width's statistics."""
    return f"bn-width-{width:.6f}"


def _norm_layers(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}


@dataclass
class WidthStats:
    """Server side: width -> {``<bn>.running_mean`` / ``<bn>.running_var``: array}."""

    #: BatchNorm layer -> channels it keeps at each width
    channels: dict[float, dict[str, int]]
    values: dict[float, dict[str, np.ndarray]]

    @classmethod
    def initial(cls, graph: ChannelGraph, model: nn.Module, widths: Iterable[float]) -> WidthStats:
        """Every width starts from the model's own statistics, cut to its channels."""
        space_of = {axis.tensor: space for space in graph.spaces.values() for axis in space.axes}
        channels: dict[float, dict[str, int]] = {}
        values: dict[float, dict[str, np.ndarray]] = {}
        for width in widths:
            channels[width], values[width] = {}, {}
            for name, layer in _norm_layers(model).items():
                space = space_of.get(f"{name}.running_mean")
                count = channels_at(width, space.size) if space is not None else layer.num_features
                channels[width][name] = count
                for stat in STATS:
                    tensor = getattr(layer, stat)
                    values[width][f"{name}.{stat}"] = tensor[:count].detach().cpu().numpy().copy()
        return cls(channels, values)

    def records(self, widths: Iterable[float]) -> Records:
        return {width_key(w): {k: v.copy() for k, v in self.values[w].items()} for w in widths}

    def check(self, records: Records, allowed: Iterable[float]) -> None:
        """``ValueError`` naming the problem unless ``records`` are statistics of widths in
        ``allowed``, each of the right shapes, finite, variances and sample counts >= 0."""
        names = {width_key(w): w for w in allowed}
        for record, arrays in records.items():
            if record not in names:
                raise ValueError(f"unexpected record '{record}' for method 'fjord'")
            width = names[record]
            expected = {k: v.shape for k, v in self.values[width].items()} | {SAMPLES: (1,)}
            if set(arrays) != set(expected):
                raise ValueError(f"record '{record}' holds {sorted(arrays)}, not the width's "
                                 "BatchNorm statistics and sample count")
            for key, array in arrays.items():
                if tuple(array.shape) != expected[key]:
                    raise ValueError(f"'{record}/{key}' has shape {tuple(array.shape)}, "
                                     f"expected {expected[key]}")
                if not np.all(np.isfinite(array)):
                    raise ValueError(f"'{record}/{key}' is not finite")
                if key != f"{key.rsplit('.', 1)[0]}.running_mean" and np.any(array < 0):
                    raise ValueError(f"'{record}/{key}' is negative")

    def merge(self, reports: Iterable[Records]) -> None:
        """Each width's statistics: the sample-weighted mean of the clients that trained it (a
        width nobody trained keeps its statistics)."""
        sums: dict[float, tuple[dict[str, np.ndarray], float]] = {}
        keys = {width_key(w): w for w in self.values}
        for report in reports:
            for record, arrays in report.items():
                width, samples = keys[record], float(arrays[SAMPLES][0])
                if samples <= 0:
                    continue
                total, weight = sums.get(width, ({}, 0.0))
                for key in self.values[width]:
                    total[key] = total.get(key, 0.0) + samples * arrays[key].astype(np.float64)
                sums[width] = (total, weight + samples)
        for width, (total, weight) in sums.items():
            self.values[width] = {k: (v / weight).astype(self.values[width][k].dtype)
                                  for k, v in total.items()}

    def into_full(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's own BatchNorm buffers take the full width's statistics (when a client
        holds the full width), so the global model is scored with them."""
        if 1.0 not in self.values:
            return arrays
        out = dict(arrays)
        for key, value in self.values[1.0].items():
            out[key] = value.astype(arrays[key].dtype).reshape(arrays[key].shape)
        return out

    def load(self, model: nn.Module, width: float) -> None:
        """Write ``width``'s statistics into a submodel sliced at that width."""
        _load(model, {k: torch.from_numpy(v) for k, v in self.values[width].items()})

    def state(self) -> dict[float, dict[str, np.ndarray]]:
        return {w: {k: v.copy() for k, v in values.items()} for w, values in self.values.items()}

    def restore(self, state: Mapping[float, Mapping[str, np.ndarray]]) -> None:
        for width, values in state.items():
            if width in self.values:
                self.values[width] = {k: np.array(v) for k, v in values.items()}

    # --- client side ----------------------------------------------------------------------------
    @staticmethod
    def received(inbox: Records, widths: Iterable[float]) -> dict[float, dict[str, torch.Tensor]]:
        """The statistics the server sent for ``widths``, as trainable buffers."""
        out = {}
        for width in widths:
            record = inbox.get(width_key(width))
            if record is None:
                raise ValueError(f"the server sent no BatchNorm statistics for width {width:g}")
            out[width] = {k: torch.from_numpy(np.array(v)) for k, v in record.items()}
        return out

    @staticmethod
    def report(stats: Mapping[float, Mapping[str, torch.Tensor]],
               trained: Mapping[float, int]) -> Records:
        """The statistics of every width the client trained batches at, with their samples."""
        return {width_key(w): {**{k: t.detach().cpu().numpy() for k, t in stats[w].items()},
                               SAMPLES: np.array([float(trained[w])])}
                for w in stats if trained.get(w, 0) > 0}

    @staticmethod
    def load_received(model: nn.Module, inbox: Records, width: float) -> None:
        _load(model, WidthStats.received(inbox, [width])[width])


@torch.no_grad()
def _load(model: nn.Module, stats: Mapping[str, torch.Tensor]) -> None:
    buffers = dict(model.named_buffers())
    for key, value in stats.items():
        buffers[key].copy_(value.to(buffers[key].dtype).reshape(buffers[key].shape))
