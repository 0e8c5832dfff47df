"""Channel-structured submodels: which output channels each layer keeps, and the physically
smaller network that trains them (plain torch, no Flower).

A *channel space* is a set of tensor axes that must keep the same channels: a layer's output
channels (Conv2d filters, Linear neurons) and its bias, the BatchNorm that follows, the next
layer's input channels (a Linear after a flatten takes each channel's H*W columns), and, across
a residual addition, both operands (ResNet's shortcuts). The spaces are found by tracing the model
with ``torch.fx``, so any network built of Conv2d / Linear / BatchNorm / pooling / activations /
additions / flatten works (mlp, lenet, cnn-bn, resnet18, vgg11-bn, leaf-cnn). The model's input
channels and its output classes are never sliced.

A ``Keep`` (space -> sorted channel indices) defines a submodel: ``masks`` says which coordinates
of the full model it holds, ``sliced_module`` builds it as an ordinary smaller network (dense
kernels, so its compute really falls), and ``scatter`` writes its trained tensors back into the
full model's coordinates.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

#: space name -> sorted int64 indices of the channels kept
Keep = dict[str, torch.Tensor]

_SAME_SPACE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh,
                       nn.Sigmoid, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                       nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d, nn.Identity)
_SAME_SPACE_FUNCTIONS = {torch.relu, torch.nn.functional.relu, torch.sigmoid, torch.tanh,
                         torch.nn.functional.gelu, torch.nn.functional.max_pool2d,
                         torch.nn.functional.avg_pool2d, torch.nn.functional.adaptive_avg_pool2d,
                         torch.nn.functional.dropout}
_SAME_SPACE_METHODS = {"relu", "sigmoid", "tanh", "contiguous"}
_ADD = {operator.add, torch.add, operator.iadd}
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class Axis:
    """One axis of one tensor (a ``state_dict`` key) that follows a channel space; ``group``
    consecutive coordinates per channel (a Linear reading a flattened C x H x W input)."""

    tensor: str
    dim: int
    group: int = 1

    def coordinates(self, channels: torch.Tensor) -> torch.Tensor:
        if self.group == 1:
            return channels
        return (channels[:, None] * self.group + torch.arange(self.group)).reshape(-1)


@dataclass(frozen=True)
class ChannelSpace:
    """Channels that are kept or dropped together; ``layers``: modules whose output it is."""

    name: str
    size: int
    axes: tuple[Axis, ...]
    layers: tuple[str, ...]


class UnsupportedModel(ValueError):
    """A model the structured engine cannot slice; the message names the operation."""


class ChannelGraph:
    """The channel spaces of one architecture (found once, by ``trace``)."""

    def __init__(self, spaces: Iterable[ChannelSpace], shapes: Mapping[str, tuple[int, ...]],
                 input_shape: tuple[int, ...], output_axes: Iterable[Axis] = ()) -> None:
        self.spaces = {s.name: s for s in spaces}
        #: the axes that follow the model's output classes (the last layer's rows and bias)
        self.output_axes = tuple(output_axes)
        self.input_shape = tuple(input_shape)
        self.shapes = dict(shapes)
        self.axes_of: dict[str, list[tuple[str, Axis]]] = {}
        for space in self.spaces.values():
            for axis in space.axes:
                self.axes_of.setdefault(axis.tensor, []).append((space.name, axis))
        #: module name -> the space of its output (hidden Conv2d / Linear layers)
        self.layer_space = {layer: s.name for s in self.spaces.values() for layer in s.layers}

    @classmethod
    def trace(cls, model: nn.Module, input_shape: tuple[int, ...]) -> ChannelGraph:
        """Find the channel spaces by tracing ``model`` on an input of ``input_shape``."""
        return _Tracer(model, input_shape).run()

    # --- submodels ------------------------------------------------------------------------------
    def widths(self, keep: Keep) -> dict[str, int]:
        return {name: len(idx) for name, idx in keep.items()}

    def full(self) -> Keep:
        return {name: torch.arange(s.size) for name, s in self.spaces.items()}

    def prefix(self, ratio: float) -> Keep:
        """The first ceil(ratio * C) channels of every space (HeteroFL's and FjORD's submodels)."""
        return {name: torch.arange(channels_at(ratio, s.size)) for name, s in self.spaces.items()}

    def rolling(self, ratio: float, offset: int | Mapping[str, int]) -> Keep:
        """The window {(offset + i) mod C : i < ceil(ratio * C)} of every space (FedRolex); one
        offset for all spaces, or one per space."""
        keep = {}
        for name, s in self.spaces.items():
            k = channels_at(ratio, s.size)
            start = offset if isinstance(offset, int) else offset[name]
            keep[name] = torch.sort((start + torch.arange(k)) % s.size).values
        return keep

    def class_masks(self, classes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Boolean masks (full shapes) of the output-class axes keeping only ``classes``: the
        rows of the last layer (and its bias) that a label split lets a client send."""
        out = {}
        for axis in self.output_axes:
            shape = self.shapes[axis.tensor]
            along = torch.zeros(shape[axis.dim], dtype=torch.bool)
            along[classes] = True
            view = [1] * len(shape)
            view[axis.dim] = shape[axis.dim]
            out[axis.tensor] = along.view(view).expand(shape).clone()
        return out

    def kept_counts(self, keep: Keep, names: Iterable[str] | None = None) -> dict[str, int]:
        """Coordinates of each tensor the submodel holds (all of a tensor with no channel axis)."""
        out = {}
        for name in names if names is not None else self.shapes:
            count = math.prod(self.shapes[name])
            for space, axis in self.axes_of.get(name, ()):
                count = count // self.shapes[name][axis.dim] * len(keep[space]) * axis.group
            out[name] = count
        return out

    def density(self, keep: Keep, params: Iterable[str]) -> float:
        names = list(params)
        kept = self.kept_counts(keep, names)
        return sum(kept.values()) / max(sum(math.prod(self.shapes[n]) for n in names), 1)

    def masks(self, keep: Keep, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Boolean masks (full shapes) of the tensors with a channel axis among ``names``."""
        out = {}
        for name in names if names is not None else self.axes_of:
            if name not in self.axes_of:
                continue
            shape = self.shapes[name]
            mask = torch.ones(shape, dtype=torch.bool)
            for space, axis in self.axes_of[name]:
                along = torch.zeros(shape[axis.dim], dtype=torch.bool)
                along[axis.coordinates(keep[space])] = True
                view = [1] * len(shape)
                view[axis.dim] = shape[axis.dim]
                mask &= along.view(view)
            out[name] = mask
        return out

    def keep_of(self, masks: Mapping[str, torch.Tensor] | None) -> Keep:
        """The channels a set of masks keeps (None: the whole model); ``ValueError`` when the masks
        are not channel-structured for this model."""
        if not masks:
            return self.full()
        keep: Keep = {}
        for name, space in self.spaces.items():
            axis = next((a for a in space.axes if a.tensor in masks), None)
            if axis is None:
                keep[name] = torch.arange(space.size)
                continue
            mask = masks[axis.tensor].cpu()  # channel bookkeeping lives on the host
            along = mask.movedim(axis.dim, 0).reshape(mask.shape[axis.dim], -1).any(dim=1)
            if axis.group > 1:
                along = along.view(space.size, axis.group).any(dim=1)
            keep[name] = torch.nonzero(along).reshape(-1)
        expected = self.masks(keep, masks)
        for name, mask in masks.items():
            if name in expected and not torch.equal(expected[name], mask.cpu().bool()):
                raise ValueError(f"the mask of '{name}' is not a channel-structured submodel")
        return keep

    def slice_tensor(self, name: str, tensor: torch.Tensor, keep: Keep) -> torch.Tensor:
        for space, axis in self.axes_of.get(name, ()):
            tensor = tensor.index_select(axis.dim, axis.coordinates(keep[space]).to(tensor.device))
        return tensor

    def slice_state(self, state: Mapping[str, torch.Tensor], keep: Keep) -> dict[str, torch.Tensor]:
        """The submodel's tensors (every tensor of ``state``; those without a channel axis whole)."""
        return {name: self.slice_tensor(name, t, keep) for name, t in state.items()}

    @torch.no_grad()
    def scatter(self, full: Mapping[str, torch.Tensor], small: Mapping[str, torch.Tensor],
                keep: Keep) -> None:
        """Write the submodel's tensors into the full tensors' kept coordinates, in place."""
        for name, tensor in small.items():
            target = full[name]
            axes = [(axis.dim, axis.coordinates(keep[space])) for space, axis in self.axes_of.get(name, ())]
            _scatter_into(target, tensor.to(target.dtype), axes)

    def narrow_state(self, small: Mapping[str, torch.Tensor], widths: Mapping[str, int]
                     ) -> dict[str, torch.Tensor]:
        """Views of the first ``widths[space]`` channels of a prefix submodel's tensors (FjORD's
        ordered dropout): no copy, so gradients and BatchNorm statistics reach the tensors."""
        out = {}
        for name, tensor in small.items():
            for space, axis in self.axes_of.get(name, ()):
                tensor = tensor.narrow(axis.dim, 0, widths[space] * axis.group)
            out[name] = tensor
        return out

    def sliced_module(self, model: nn.Module, keep: Keep) -> nn.Module:
        """A copy of ``model`` holding only the kept channels: an ordinary, smaller network."""
        memo: dict[int, object] = {}
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name in self.axes_of:
                small = self.slice_tensor(name, tensor.detach(), keep).clone()
                memo[id(tensor)] = nn.Parameter(small, tensor.requires_grad) \
                    if isinstance(tensor, nn.Parameter) else small
        sliced = copy.deepcopy(model, memo)
        for module in sliced.modules():
            _fix_sizes(module)
        return sliced


def channels_at(ratio: float, size: int) -> int:
    """Channels a width ratio keeps: ceil(ratio * C) as HeteroFL, at least one."""
    return max(1, min(size, math.ceil(ratio * size - 1e-9)))


def _scatter_into(target: torch.Tensor, values: torch.Tensor,
                  axes: list[tuple[int, torch.Tensor]]) -> None:
    if not axes:
        target.copy_(values)
        return
    dim, index = axes[0]
    index = index.to(target.device)
    if len(axes) == 1:
        target.index_copy_(dim, index, values)
        return
    part = target.index_select(dim, index)
    _scatter_into(part, values, axes[1:])
    target.index_copy_(dim, index, part)


def _fix_sizes(module: nn.Module) -> None:
    """Make a sliced module's size attributes agree with its tensors (repr, FLOP counters)."""
    if isinstance(module, nn.Conv2d):
        module.out_channels, module.in_channels = module.weight.shape[:2]
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, _NORMS):
        tensor = module.weight if module.weight is not None else module.running_mean
        if tensor is not None:
            module.num_features = tensor.shape[0]


def add_width_scaler(model: nn.Module, graph: ChannelGraph, rate: float) -> list:
    """HeteroFL's scaler: every hidden Conv2d / Linear output divided by the width rate, so a
    narrow network's activations keep the full network's scale. Returns the hook handles."""
    handles = []
    if rate >= 1.0:
        return handles
    for name, module in model.named_modules():
        if name in graph.layer_space:
            handles.append(module.register_forward_hook(lambda _m, _i, out: out / rate))
    return handles


# --- tracing ------------------------------------------------------------------------------------
@dataclass
class _Feature:
    """What a traced value's dim 1 is: channels of space ``sid`` (``group`` coordinates each)."""

    sid: int
    group: int = 1


class _Tracer:
    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        self.model = model
        self.input_shape = input_shape
        self.parent: list[int] = []
        self.size: list[int] = []
        self.name: list[str] = []
        self.fixed: list[bool] = []
        self.axes: list[list[Axis]] = []
        self.layers: list[list[str]] = []
        self.output_sid: int | None = None

    def new_space(self, name: str, size: int, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.name.append(name)
        self.fixed.append(fixed)
        self.axes.append([])
        self.layers.append([])
        return len(self.parent) - 1

    def find(self, sid: int) -> int:
        while self.parent[sid] != sid:
            self.parent[sid] = self.parent[self.parent[sid]]
            sid = self.parent[sid]
        return sid

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] != self.size[rb]:
            raise UnsupportedModel(f"an addition joins {self.size[ra]} and {self.size[rb]} channels")
        keep, drop = (ra, rb) if ra < rb else (rb, ra)
        self.parent[drop] = keep
        self.fixed[keep] = self.fixed[keep] or self.fixed[drop]
        return keep

    def run(self) -> ChannelGraph:
        try:
            traced = torch.fx.symbolic_trace(self.model)
        except Exception as exc:  # torch.fx raises many kinds for untraceable code
            raise UnsupportedModel(f"the model cannot be traced by torch.fx ({exc})") from None
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                device = next(self.model.parameters()).device
                ShapeProp(traced).propagate(torch.zeros(1, *self.input_shape, device=device))
        finally:
            self.model.train(was_training)
        feature: dict[torch.fx.Node, _Feature] = {}
        for node in traced.graph.nodes:
            if node.op == "placeholder":
                feature[node] = _Feature(self.new_space("input", self.input_shape[0], fixed=True))
            elif node.op == "output":
                out = feature[node.args[0]]
                self.fixed[self.find(out.sid)] = True
                self.output_sid = out.sid
            elif node.op == "call_module":
                feature[node] = self.module(node, traced.get_submodule(node.target), feature)
            elif node.op == "call_function" and node.target in _ADD:
                a, b = (feature[arg] for arg in node.args[:2])
                if a.group != 1 or b.group != 1:
                    raise UnsupportedModel("an addition of flattened features")
                feature[node] = _Feature(self.union(a.sid, b.sid))
            elif node.op == "call_function" and node.target in _SAME_SPACE_FUNCTIONS:
                feature[node] = feature[node.args[0]]
            elif node.op == "call_function" and node.target is torch.flatten:
                feature[node] = self.flatten(node, feature[node.args[0]])
            elif node.op == "call_method" and node.target in _SAME_SPACE_METHODS:
                feature[node] = feature[node.args[0]]
            elif node.op == "call_method" and node.target == "flatten":
                feature[node] = self.flatten(node, feature[node.args[0]])
            else:
                raise UnsupportedModel(f"the structured engine does not know '{node.target}' "
                                       f"({node.op}) in {type(self.model).__name__}")
        return self.graph()

    def flatten(self, node: torch.fx.Node, source: _Feature) -> _Feature:
        shape = tuple(node.args[0].meta["tensor_meta"].shape)
        if len(shape) <= 2:
            return source
        return _Feature(source.sid, source.group * math.prod(shape[2:]))

    def module(self, node: torch.fx.Node, module: nn.Module,
               feature: dict[torch.fx.Node, _Feature]) -> _Feature:
        name = str(node.target)
        source = feature[node.args[0]]
        if isinstance(module, nn.Conv2d | nn.Linear):
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                raise UnsupportedModel(f"grouped convolution '{name}'")
            if isinstance(module, nn.Conv2d) and source.group != 1:
                raise UnsupportedModel(f"convolution '{name}' of flattened features")
            out = self.new_space(name, module.weight.shape[0])
            self.layers[out].append(name)
            self.axes[out].append(Axis(f"{name}.weight", 0))
            if module.bias is not None:
                self.axes[out].append(Axis(f"{name}.bias", 0))
            self.axes[source.sid].append(Axis(f"{name}.weight", 1, source.group))
            return _Feature(out)
        if isinstance(module, _NORMS):
            if source.group != 1:
                raise UnsupportedModel(f"normalisation '{name}' of flattened features")
            for tensor in ("weight", "bias", "running_mean", "running_var"):
                if getattr(module, tensor, None) is not None:
                    self.axes[source.sid].append(Axis(f"{name}.{tensor}", 0))
            return source
        if isinstance(module, nn.Flatten):
            if module.start_dim != 1:
                raise UnsupportedModel(f"flatten '{name}' from dim {module.start_dim}")
            return self.flatten(node, source)
        if isinstance(module, _SAME_SPACE_MODULES):
            return source
        raise UnsupportedModel(f"the structured engine does not know module '{name}' "
                               f"({type(module).__name__})")

    def graph(self) -> ChannelGraph:
        members: dict[int, list[int]] = {}
        for sid in range(len(self.parent)):
            members.setdefault(self.find(sid), []).append(sid)
        spaces = []
        for root, sids in members.items():
            if self.fixed[root]:
                continue
            axes = [axis for sid in sids for axis in self.axes[sid]]
            layers = [layer for sid in sids for layer in self.layers[sid]]
            spaces.append(ChannelSpace(self.name[root], self.size[root], tuple(axes), tuple(layers)))
        shapes = {n: tuple(t.shape) for n, t in self.model.state_dict().items()}
        output_axes: list[Axis] = []
        if self.output_sid is not None:
            root = self.find(self.output_sid)
            output_axes = [axis for sid in members.get(root, []) for axis in self.axes[sid]
                           if axis.group == 1]
        return ChannelGraph(spaces, shapes, self.input_shape, output_axes)

