"""Loading plug-ins by name: installed entry points, ``module:Attr`` and ``path/file.py:Attr``.

Strategies and methods plug in the same way; both registries use these helpers, so a bad
plug-in gives the same one-line errors whichever seam it plugs into.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from fedsparse.errors import ConfigError

#: the command that lists the names of each kind of plug-in
LISTINGS = {"strategy": "strategies", "method": "methods"}


def first_line(obj: Any) -> str:
    """The first line of an object's docstring ('' without one)."""
    doc = inspect.getdoc(obj)
    return doc.strip().splitlines()[0] if doc else ""


def load_object(target: str, kind: str) -> Any:
    """``module:Attr`` or ``path/to/file.py:Attr``; ``kind`` ('strategy', 'method') names the
    seam in errors."""
    location, _, attr = target.rpartition(":")
    if not location or not attr:
        raise ConfigError(f"{kind} '{target}' is not a known name nor module:Class: run "
                          f"'fedsparse {LISTINGS.get(kind, kind)}' to list names")
    try:
        if location.endswith(".py"):
            path = Path(location).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"{kind} file {path} not found: check the path before ':'")
            module_name = f"fedsparse_plugin_{path.stem}"
            module = sys.modules.get(module_name)
            if module is None or getattr(module, "__file__", None) != str(path):
                spec = importlib.util.spec_from_file_location(module_name, path)
                module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
                sys.modules[module_name] = module
                spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(location)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{kind} '{target}': importing {location} failed "
                          f"({type(exc).__name__}: {exc}): fix the plug-in module") from exc
    if not hasattr(module, attr):
        raise ConfigError(f"{kind} '{target}': {location} has no attribute '{attr}'")
    return getattr(module, attr)


def entry_point(group: str, name: str, kind: str) -> Any | None:
    """The object the installed entry point ``name`` of ``group`` names (None: no such one)."""
    for ep in entry_points(group=group):
        if ep.name == name:
            try:
                return ep.load()
            except Exception as exc:
                raise ConfigError(f"{kind} plug-in '{name}' ({ep.value}) failed to load "
                                  f"({type(exc).__name__}: {exc}): reinstall or fix it") from exc
    return None


def did_you_mean(name: str, names: list[str]) -> str:
    """`` (did you mean 'x'?)`` for a near miss among ``names``, else nothing."""
    close = difflib.get_close_matches(name.lower(), names, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def entry_point_names(group: str) -> list[str]:
    """Names of the installed entry points of ``group`` (none is loaded)."""
    return [ep.name for ep in entry_points(group=group)]


def installed(group: str) -> list[tuple[str, str, Any]]:
    """(name, target, loaded object or the exception loading raised) of every entry point."""
    rows = []
    for ep in entry_points(group=group):
        try:
            rows.append((ep.name, ep.value, ep.load()))
        except Exception as exc:
            rows.append((ep.name, ep.value, exc))
    return rows
