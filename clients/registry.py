"""Find a method by name: built-ins, installed plug-ins, or ``module:Class`` / ``file.py:Class``.

Resolution order for ``--method NAME``:
1. a built-in name (``fedsparse methods`` lists them), any case; ``fedavg`` (or ``FedAvg``) is
   an alias of ``dense``, the name people know the dense reference by;
2. an entry point named NAME in the group ``fedsparse.methods`` (installed plug-ins);
3. ``package.module:Class`` or ``path/to/file.py:Class``.
The class must subclass ``fedsparse.method.Method``. Its options are the config section
``method.<section>`` (its ``options_key``, default its name), validated by its ``Options`` model.
"""

from __future__ import annotations

import inspect

from fedsparse.clients.dense import Dense
from fedsparse.clients.ditto import Ditto
from fedsparse.clients.fedavg_ft import FedAvgFT
from fedsparse.clients.feddst import FedDST
from fedsparse.clients.fedmef import FedMef
from fedsparse.clients.fedrolex import FedRolex
from fedsparse.clients.fedtiny import FedTiny
from fedsparse.clients.fjord import FjORD
from fedsparse.clients.heterofl import HeteroFL
from fedsparse.clients.local import LocalOnly
from fedsparse.clients.magnitude import Magnitude
from fedsparse.clients.pfedgate import PFedGate
from fedsparse.clients.prune_at_init import PruneAtInit
from fedsparse.errors import ConfigError
from fedsparse.method import Method
from fedsparse.plugins import did_you_mean, entry_point, entry_point_names, installed, load_object

ENTRY_POINT_GROUP = "fedsparse.methods"

BUILTIN: dict[str, type[Method]] = {cls.name: cls for cls in (
    Dense, FedAvgFT, LocalOnly, Ditto, Magnitude, PFedGate, FedTiny, PruneAtInit, FedDST, FedMef,
    HeteroFL, FjORD, FedRolex)}


#: other names of built-in methods
ALIASES: dict[str, str] = {"fedavg": "dense"}


def canonical(name: str) -> str:
    """The built-in name a user's spelling means (``FedAvg`` -> ``dense``, ``FjORD`` -> ``fjord``);
    any other name (a plug-in, ``module:Class``) is returned as given."""
    if ":" in name:
        return name
    lower = name.lower()
    lower = ALIASES.get(lower, lower)
    return lower if lower in BUILTIN else name


def _checked(name: str, obj: object) -> type[Method]:
    if inspect.isclass(obj) and issubclass(obj, Method) and not inspect.isabstract(obj):
        if not getattr(obj, "name", None):
            raise ConfigError(f"method '{name}': {obj.__name__} sets no 'name': give the class a "
                              "name = '...' attribute")
        return obj
    what = f"an abstract {obj.__name__}" if inspect.isclass(obj) else f"a {type(obj).__name__}"
    raise ConfigError(f"method '{name}' is {what}, not a concrete subclass of "
                      "fedsparse.method.Method: implement fit() and subclass Method")


def resolve(name: str) -> type[Method]:
    """Turn a method name into its class, or raise a one-line ConfigError."""
    if canonical(name) in BUILTIN:
        return BUILTIN[canonical(name)]
    obj = entry_point(ENTRY_POINT_GROUP, name, "method")
    if obj is None:
        if ":" not in name:
            known = [*BUILTIN, *ALIASES, *entry_point_names(ENTRY_POINT_GROUP)]
            raise ConfigError(f"unknown method '{name}'{did_you_mean(name, known)}: run "
                              "'fedsparse methods' to list names, or pass module:Class or "
                              "path/to/file.py:Class")
        obj = load_object(name, "method")
    return _checked(name, obj)


def sections() -> dict[str, type[Method]]:
    """Config section -> a method reading it, for every built-in and installed method."""
    out = {cls.section(): cls for cls in BUILTIN.values()}
    for _name, _target, obj in installed(ENTRY_POINT_GROUP):
        if inspect.isclass(obj) and issubclass(obj, Method):
            out.setdefault(obj.section(), obj)
    return out


def available() -> list[tuple[str, str]]:
    """(name, one-line description) of every method that can be named."""
    rows = [(name, cls.describe()) for name, cls in BUILTIN.items()]
    for name, target, obj in installed(ENTRY_POINT_GROUP):
        if isinstance(obj, Exception):
            rows.append((name, f"plug-in {target} (fails to load: {obj})"))
        else:
            line = obj.describe() if inspect.isclass(obj) and issubclass(obj, Method) else ""
            rows.append((name, f"plug-in {target}: {line}"))
    return rows
