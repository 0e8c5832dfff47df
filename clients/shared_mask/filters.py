"""Filter-level shared masks (``method.pruning.granularity: filter``), plain torch.

The unit pruned and grown is a whole channel of a *channel space* (``fedsparse.structured``): a
Conv2d filter or Linear neuron with its bias, its BatchNorm feature, the next layer's input
columns and, across a residual addition, the tied channels. A tier's submodel is then an
ordinary narrower network, trained sliced, so its compute and memory really fall.

- Counts: every tier keeps, per space, its share of the top tier's channels, one common factor
  for all spaces found by bisection on the real parameter counts, so a tier never holds more
  than its declared density of the model's parameters (``fit_counts``).
- Which channels: the most *important* (``importance``): the L2 norm of the weights that read
  the channel, times the mean |gamma| of its BatchNorm features (the L2 norm of its own filter
  when it has none). Tiers nest: a smaller tier keeps the most important of the top tier's.
- Growth: a pruned channel's weights are all zero, so its gradient is zero too and the
  unstructured rule (grow the largest gradients at pruned positions) would see nothing. A
  channel is grown as GradMax (Evci et al., ICLR 2022) does without its optimised
  initialisation: its own filter gets a fresh seeded initialisation (the same values on every
  client and on the server, from the run's seed, the round and the space), its BatchNorm
  gamma 1 and beta 0, and the weights that read it start at 0, so growing it leaves the
  network's function unchanged. Clients score each pruned channel by the squared norm of the
  gradient of those reading weights with the channel switched on so (``growth_scores``, one
  batch on the sliced network with just that space at full width); the server grows the K
  channels of largest mean score and prunes the K least important (``prune_and_grow_channels``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fedsparse.structured import Axis, ChannelGraph, Keep, channels_at

#: seed stream of the fresh filters of grown channels
GROW_STREAM = 53


def channel_params(graph: ChannelGraph, params: Sequence[str]) -> list[str]:
    """The parameters a channel mask covers (those with a channel axis)."""
    return [n for n in params if n in graph.axes_of]


def counts_density(graph: ChannelGraph, counts: Mapping[str, int], params: Sequence[str]) -> float:
    """Share of the ``params`` coordinates a submodel with these channel counts holds."""
    return graph.density({s: torch.arange(c) for s, c in counts.items()}, params)


def fit_counts(graph: ChannelGraph, base: Mapping[str, int], params: Sequence[str],
               density: float) -> dict[str, int]:
    """``base``'s counts times the largest common factor (each count in [1, its space's size])
    whose submodel holds at most ``density`` of the parameters: scaled down when ``base`` holds
    more, up when it holds less. ``ValueError`` when even one channel per space holds more."""
    sizes = {s: graph.spaces[s].size for s in base}

    def scaled(factor: float) -> dict[str, int]:
        return {s: max(1, min(sizes[s], math.floor(factor * c + 1e-9))) for s, c in base.items()}

    low, high = 0.0, max(sizes[s] / max(c, 1) for s, c in base.items())
    if counts_density(graph, scaled(high), params) <= density + 1e-12:
        return scaled(high)
    for _ in range(60):
        mid = (low + high) / 2
        if counts_density(graph, scaled(mid), params) <= density + 1e-12:
            low = mid
        else:
            high = mid
    counts = scaled(low)
    if counts_density(graph, counts, params) > density + 1e-12:
        raise ValueError(f"density {density:g} is below the narrowest filter-level submodel (one "
                         "channel per layer)")
    return counts


def uniform_counts(graph: ChannelGraph, params: Sequence[str], density: float) -> dict[str, int]:
    """One width ratio for every space (HeteroFL's shape), fitted to ``density``."""
    return fit_counts(graph, {s: sp.size for s, sp in graph.spaces.items()}, params, density)


def _is_weight_of(axis: Axis, layers: Sequence[str]) -> bool:
    return axis.tensor in {f"{layer}.weight" for layer in layers}


def _per_channel_sq(tensor: torch.Tensor, axis: Axis, size: int) -> torch.Tensor:
    moved = tensor.detach().movedim(axis.dim, 0).reshape(tensor.shape[axis.dim], -1)
    sq = (moved.double() ** 2).sum(dim=1)
    return sq.view(size, axis.group).sum(dim=1) if axis.group > 1 else sq


def reading_axes(graph: ChannelGraph, space: str) -> list[Axis]:
    """The axes of weights that read the space's channels (the next layers' input columns)."""
    return [a for a in graph.spaces[space].axes if a.dim == 1 and a.tensor.endswith(".weight")]


def norm_axes(graph: ChannelGraph, space: str) -> list[Axis]:
    """The axes of the space's BatchNorm weights (gamma)."""
    sp = graph.spaces[space]
    return [a for a in sp.axes if a.dim == 0 and a.tensor.endswith(".weight")
            and not _is_weight_of(a, sp.layers)]


def importance(graph: ChannelGraph, state: Mapping[str, torch.Tensor], space: str) -> torch.Tensor:
    """Per channel of ``space``: ||weights reading it|| x mean |gamma| (or ||its filter||)."""
    sp = graph.spaces[space]
    out_sq = torch.zeros(sp.size, dtype=torch.float64)
    for axis in reading_axes(graph, space):
        out_sq += _per_channel_sq(state[axis.tensor], axis, sp.size)
    gammas = norm_axes(graph, space)
    if gammas:
        scale = torch.stack([state[a.tensor].detach().double().abs() for a in gammas]).mean(dim=0)
    else:
        in_sq = torch.zeros(sp.size, dtype=torch.float64)
        for axis in sp.axes:
            if axis.dim == 0 and _is_weight_of(axis, sp.layers):
                in_sq += _per_channel_sq(state[axis.tensor], axis, sp.size)
        scale = in_sq.sqrt()
    return out_sq.sqrt() * scale


def top_channels(scores: torch.Tensor, among: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` channels of ``among`` with the largest scores, sorted (ties: lower index)."""
    count = max(0, min(count, len(among)))
    order = torch.sort(scores[among], descending=True, stable=True).indices[:count]
    return torch.sort(among[order]).values


def keep_by_importance(graph: ChannelGraph, state: Mapping[str, torch.Tensor],
                       counts: Mapping[str, int], within: Keep | None = None) -> Keep:
    """Per space, the ``counts`` most important channels (of ``within``'s, when given)."""
    keep: Keep = {}
    for space, sp in graph.spaces.items():
        among = within[space] if within is not None else torch.arange(sp.size)
        keep[space] = top_channels(importance(graph, state, space), among, counts[space])
    return keep


def random_keep(graph: ChannelGraph, counts: Mapping[str, int], seed: int) -> Keep:
    """Per space, ``counts`` channels drawn uniformly (the random prune-at-init baseline)."""
    generator = torch.Generator().manual_seed(seed)
    return {s: torch.sort(torch.randperm(sp.size, generator=generator)[:counts[s]]).values
            for s, sp in graph.spaces.items()}


def candidate_counts(graph: ChannelGraph, params: Sequence[str], density: float, count: int,
                     draw: np.random.Generator) -> list[dict[str, int]]:
    """FedTiny's coarse candidates at filter level: each space's width ratio drawn in [0.5, 1.5]
    x the uniform ratio, then all scaled by one factor to fit ``density``."""
    ratio = max(len_ / graph.spaces[s].size for s, len_ in uniform_counts(graph, params, density).items())
    out = []
    for _ in range(count):
        base = {s: channels_at(min(1.0, ratio * float(draw.uniform(0.5, 1.5))), sp.size)
                for s, sp in graph.spaces.items()}
        out.append(fit_counts(graph, base, params, density))
    return out


# --- growth ---------------------------------------------------------------------------------------
def fresh_values(graph: ChannelGraph, shapes: Mapping[str, tuple[int, ...]], space: str,
                 seed: int, server_round: int) -> dict[str, torch.Tensor]:
    """What a grown channel of ``space`` starts from, for *every* channel of the space (callers
    pick theirs): full-shaped tensors along each of the space's axes. Its own filters: PyTorch's
    default uniform(+-1/sqrt(fan_in)), seeded by (seed, round, space), so clients and server
    agree without sending them; biases and BatchNorm beta 0, gamma 1, running statistics 0 / 1;
    the weights that read it 0."""
    generator = torch.Generator().manual_seed(
        int(np.random.default_rng([seed, GROW_STREAM, server_round,
                                   *space.encode()]).integers(2**62)))
    sp = graph.spaces[space]
    out: dict[str, torch.Tensor] = {}
    for axis in sp.axes:
        shape = shapes[axis.tensor]
        if axis.dim == 1 or axis.tensor.endswith((".bias", ".running_mean")):
            out[axis.tensor] = torch.zeros(shape)
        elif axis.tensor.endswith(".running_var"):
            out[axis.tensor] = torch.ones(shape)
        elif _is_weight_of(axis, sp.layers):
            bound = 1.0 / math.sqrt(max(1, math.prod(shape[1:])))
            out[axis.tensor] = torch.empty(shape).uniform_(-bound, bound, generator=generator)
        else:  # a BatchNorm gamma
            out[axis.tensor] = torch.ones(shape)
    return out


def _along(axis: Axis, channels: torch.Tensor) -> torch.Tensor:
    return axis.coordinates(channels)


@torch.no_grad()
def write_channels(state: Mapping[str, torch.Tensor], graph: ChannelGraph, space: str,
                   channels: torch.Tensor, values: Mapping[str, torch.Tensor] | None) -> None:
    """Set ``channels`` of ``space`` in place along every axis of the space: to ``values``
    (``fresh_values``' full-shaped tensors) or, with None, to zero (pruned)."""
    if not len(channels):
        return
    for axis in graph.spaces[space].axes:
        if axis.tensor not in state:
            continue
        target = state[axis.tensor]
        index = _along(axis, channels)
        if values is None:
            target.index_fill_(axis.dim, index, 0)
        else:
            target.index_copy_(axis.dim, index,
                               values[axis.tensor].index_select(axis.dim, index).to(target.dtype))


def growth_scores(graph: ChannelGraph, model: nn.Module, keep: Keep, space: str,
                  candidates: torch.Tensor, x: torch.Tensor, y: torch.Tensor, seed: int,
                  server_round: int) -> torch.Tensor:
    """Per channel of ``candidates`` (pruned channels of ``space``): the squared norm of the loss
    gradient of the weights that read it, with the channel grown (``fresh_values``), on one
    batch. Runs on the sliced network with only ``space`` at full width (every other space as
    ``keep``); ``model`` and its BatchNorm statistics are left as they were."""
    probe_keep = {**keep, space: torch.arange(graph.spaces[space].size)}
    state = model.state_dict()
    fresh = fresh_values(graph, {n: tuple(t.shape) for n, t in state.items()}, space, seed,
                         server_round)
    touched = {a.tensor for a in graph.spaces[space].axes}
    full = {n: state[n].detach().clone() for n in touched}
    write_channels(full, graph, space, candidates, fresh)
    probe = graph.sliced_module(model, probe_keep)
    probe.load_state_dict({**probe.state_dict(),
                           **{n: graph.slice_tensor(n, full[n], probe_keep) for n in touched}})
    reading = reading_axes(graph, space)
    readers = {a.tensor for a in reading}
    params = dict(probe.named_parameters())
    for name, param in params.items():
        param.requires_grad_(name in readers)
    probe.train()
    nn.functional.cross_entropy(probe(x), y).backward()
    size = graph.spaces[space].size
    scores = torch.zeros(size, dtype=torch.float64)
    for axis in reading:
        grad = params[axis.tensor].grad
        if grad is not None:
            scores += _per_channel_sq(grad, axis, size)
    return scores[candidates].float()


def report_top(scores: torch.Tensor, candidates: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A client's report for one space: at most ``k`` (channel, score) pairs, largest scores."""
    k = min(k, len(candidates))
    if k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    top = torch.topk(scores, k, sorted=True).indices
    order = torch.argsort(candidates[top])
    return (candidates[top][order].numpy().astype(np.int64),
            scores[top][order].numpy().astype(np.float32))


def prune_and_grow_channels(graph: ChannelGraph, state: Mapping[str, torch.Tensor], space: str,
                            kept: torch.Tensor, reports: Sequence[tuple[np.ndarray, np.ndarray]],
                            k: int, seed: int, server_round: int) -> tuple[torch.Tensor, int]:
    """The server's step for one space, in place on ``state``: grow the ``k`` pruned channels of
    largest mean reported score (a client's missing entries count 0; fresh filters, reading
    weights 0) and prune the ``k`` least important kept ones (every coordinate zeroed). Returns
    the new kept channels (sorted) and how many were grown. The count is unchanged."""
    size = graph.spaces[space].size
    mean = torch.zeros(size, dtype=torch.float64)
    for index, values in reports:
        mean[torch.from_numpy(index.astype(np.int64))] += torch.from_numpy(values.astype(np.float64))
    mean /= max(len(reports), 1)
    is_kept = torch.zeros(size, dtype=torch.bool)
    is_kept[kept] = True
    pruned = torch.nonzero(~is_kept).reshape(-1)
    k = min(k, len(pruned), len(kept) - 1)
    if k <= 0:
        return kept.clone(), 0
    grow = top_channels(mean, pruned, k)
    drop = top_channels(-importance(graph, state, space), kept, k)
    write_channels(state, graph, space, drop, None)
    write_channels(state, graph, space, grow,
                   fresh_values(graph, {n: tuple(t.shape) for n, t in state.items()}, space, seed,
                                server_round))
    is_kept[drop] = False
    is_kept[grow] = True
    return torch.nonzero(is_kept).reshape(-1), len(grow)
