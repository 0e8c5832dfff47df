"""Import a submodule without running its package's ``__init__``.

Some packages import far more in ``__init__`` than one of their submodules needs: flwr-datasets
its plots (seaborn, scipy.stats) before its partitioners, Flower's ``flwr.simulation`` its whole
simulation app (LinkState, SQLAlchemy, FastAPI) before the Ray actor every simulation worker
loads. Both are paid in every run's start-up. The package is stood in for, its ``__init__`` not
run, while the submodule imports, then removed: a later import of the package runs the real
``__init__`` and finds the same submodules.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType


def import_skipping_init(package: str, submodule: str) -> ModuleType:
    """``submodule`` (inside ``package``), imported with ``package/__init__`` skipped.

    A plain import where the package is loaded already or not installed (Python's own error
    then), and the whole package's import where the submodule needs more of it.
    """
    loaded = package in sys.modules or submodule in sys.modules
    spec = None if loaded else importlib.util.find_spec(package)
    if spec is None or spec.submodule_search_locations is None:
        return importlib.import_module(submodule)
    stand_in = importlib.util.module_from_spec(spec)  # the package, its __init__ not run
    sys.modules[package] = stand_in
    try:
        return importlib.import_module(submodule)
    except ImportError:  # a version whose submodule needs more of the package
        for partial in [m for m in sys.modules if m.startswith(f"{package}.")]:
            del sys.modules[partial]
    finally:
        if sys.modules.get(package) is stand_in:
            del sys.modules[package]
    return importlib.import_module(submodule)  # the whole package, slowly
