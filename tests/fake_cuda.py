"""A CUDA device emulated on the CPU: finds a method's device mix-ups on a machine without a GPU.

Every tensor op passes through a ``TorchFunctionMode`` that tags tensors as on the device or on
the host and refuses what CUDA refuses: an op mixing a device tensor with a host tensor that is
not a 0-d scalar, ``numpy()`` of a device tensor, a CPU generator drawing device tensors. Moving
to ``cuda`` (``.to``, ``.cuda``, ``device=`` of a factory) tags the result (a copy, the data
stays on the CPU); ``.device`` of a tagged tensor answers ``cuda:0``. Tensors of unknown origin
(gradients autograd made, tensors made before the mode) are neutral: they take the device of
what they meet, as autograd's would. Indexing with host index tensors is allowed, as on CUDA.
"""

from __future__ import annotations

import traceback
import weakref
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

CUDA = torch.device("cuda", 0)
DEVICE, HOST = "device", "host"
#: ops that take host index tensors beside device tensors
INDEXING = {"__getitem__", "__setitem__", "index_put_", "index_put", "copy_"}
#: ops that move data between devices
MOVES = {"to", "cuda", "cpu"}
#: questions about tensors, not computations: any devices may be asked together
METADATA = {"_has_compatible_shallow_copy_type", "is_floating_point", "is_complex", "size", "dim",
            "numel", "nelement", "__len__", "data_ptr", "element_size", "is_contiguous", "stride",
            "storage_offset", "__hash__", "requires_grad_", "is_same_size", "_is_view",
            "get_device", "untyped_storage", "_is_zerotensor", "is_neg", "is_conj", "__format__",
            "__repr__", "__str__"}


class DeviceMixup(RuntimeError):
    """What CUDA would raise."""


class FakeCuda(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self._tags: dict[int, tuple[weakref.ref, str]] = {}
        self.mixups: list[str] = []
        #: ops computed on the device (a check that something ran there at all)
        self.device_ops = 0

    def __enter__(self):
        """Also: a Parameter made from a tensor (``nn.Parameter(t)``, a deep copy) is where ``t``
        is; PyTorch builds it with ``Tensor._make_subclass``, which no mode sees."""
        self._parameter_new = torch.nn.Parameter.__new__
        mode, make = self, self._parameter_new

        def parameter_new(cls, data=None, requires_grad=True):
            param = make(cls, data, requires_grad)
            mode._set(param, mode.tag(data))
            return param

        torch.nn.Parameter.__new__ = parameter_new
        return super().__enter__()

    def __exit__(self, *exc):
        torch.nn.Parameter.__new__ = self._parameter_new
        return super().__exit__(*exc)

    # --- tags -----------------------------------------------------------------------------
    def tag(self, t: Any) -> str | None:
        if not isinstance(t, torch.Tensor):
            return None
        entry = self._tags.get(id(t))
        return entry[1] if entry is not None and entry[0]() is t else None

    def _set(self, t: Any, tag: str | None) -> None:
        if isinstance(t, torch.Tensor) and tag is not None:
            self._tags[id(t)] = (weakref.ref(t), tag)

    def _set_all(self, out: Any, tag: str | None) -> None:
        for leaf in tree_flatten(out)[0]:
            self._set(leaf, tag)

    def _refuse(self, why: str) -> None:
        """Record where (the innermost fedsparse frames) and raise what CUDA would."""
        frames = [f for f in traceback.extract_stack()[:-2] if "site-packages" not in f.filename
                  and not f.filename.endswith("fake_cuda.py")]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[::-1][:3])
        self.mixups.append(f"{why} at {where}")
        raise DeviceMixup(why)

    # --- the mode ---------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = _name(func)
        if isinstance(getattr(func, "__self__", None), type(torch.Tensor.grad)):
            return self._attribute(func, name, args)
        if name in MOVES:
            return self._move(func, name, args, kwargs)
        if name in METADATA:
            return func(*args, **kwargs)
        if name in ("numpy", "__array__") and self.tag(args[0]) == DEVICE:
            self._refuse("can't convert cuda:0 device type tensor to numpy: call .cpu() first")
        target = kwargs.get("device")
        if target is not None and torch.device(target).type == "cuda":
            if kwargs.get("generator") is not None:
                self._refuse(f"{name}: a CPU generator cannot draw on cuda")
            kwargs["device"] = "cpu"
            out = func(*args, **kwargs)
            self._set_all(out, DEVICE)
            return out
        leaves = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        tags = self._tags_of(name, args, leaves)
        if DEVICE in tags and HOST in tags:
            host = [tuple(t.shape) for t in leaves if self.tag(t) == HOST and t.dim() > 0]
            self._refuse(f"{name}: expected all tensors on the same device, found cuda:0 and cpu "
                         f"(host operands of shapes {host})")
        if DEVICE in tags and isinstance(kwargs.get("generator"), torch.Generator):
            self._refuse(f"{name}: a CPU generator cannot draw on cuda")
        out = func(*args, **kwargs)
        if DEVICE in tags:
            self.device_ops += 1
            self._set_all(out, DEVICE)
        elif HOST in tags or not leaves:
            self._set_all(out, HOST)
        return out

    def _tags_of(self, name: str, args: tuple, leaves: list[torch.Tensor]) -> set[str]:
        """The devices an op combines: 0-d host tensors are scalars, host indices are allowed."""
        considered = leaves
        if name in INDEXING:
            considered = [a for i, a in enumerate(args) if isinstance(a, torch.Tensor) and i != 1]
        tags = set()
        for t in considered:
            tag = self.tag(t)
            if tag == DEVICE or (tag == HOST and t.dim() > 0):
                tags.add(tag)
        return tags

    def _attribute(self, func, name: str, args: tuple) -> Any:
        owner = args[0]
        getter = func.__name__ == "__get__"
        if getter and name == "device":
            return CUDA if self.tag(owner) == DEVICE else func(*args)
        if getter and name == "is_cuda":
            return self.tag(owner) == DEVICE
        out = func(*args)
        if getter:
            if self.tag(owner) is not None and isinstance(out, torch.Tensor) and self.tag(out) is None:
                self._set(out, self.tag(owner))
        elif name in ("data", "grad") and len(args) > 1:
            self._set(owner, self.tag(args[1]))
        return out

    def _move(self, func, name: str, args: tuple, kwargs: dict) -> Any:
        source = args[0]
        device = _target(name, args, kwargs)
        other = [a for a in (*args[1:], *kwargs.values()) if isinstance(a, torch.Tensor)]
        if other:  # .to(tensor): to that tensor's device
            device = CUDA if self.tag(other[0]) == DEVICE else torch.device("cpu")
            args = (source, *(a.dtype if isinstance(a, torch.Tensor) else a for a in args[1:]))
        if device is None:  # a dtype change only: stays where it is
            out = func(*args, **kwargs)
            self._set_all(out, self.tag(source))
            return out
        if device.type not in ("cuda", "cpu"):  # e.g. meta: a real move
            return func(*args, **kwargs)
        if name == "to" and device.type == "cuda":
            args, kwargs = _to_cpu_args(args, kwargs)
        out = func(*args, **kwargs) if name != "cuda" else source
        if out is source and self.tag(source) != (DEVICE if device.type == "cuda" else HOST):
            out = source.clone()  # the emulated copy: the source keeps its own device
        self._set(out, DEVICE if device.type == "cuda" else HOST)
        return out


def _name(func: Any) -> str:
    self = getattr(func, "__self__", None)
    if isinstance(self, type(torch.Tensor.grad)):
        return self.__name__
    return getattr(func, "__name__", repr(func))


def _target(name: str, args: tuple, kwargs: dict) -> torch.device | None:
    if name == "cuda":
        return CUDA
    if name == "cpu":
        return torch.device("cpu")
    for value in (*args[1:], *kwargs.values()):
        if isinstance(value, (str, torch.device)):
            return torch.device(value)
    return None


def _to_cpu_args(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    def cpu(value: Any) -> Any:
        return "cpu" if isinstance(value, (str, torch.device)) else value
    return tuple(cpu(a) for a in args), {k: cpu(v) for k, v in kwargs.items()}

