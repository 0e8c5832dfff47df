"""Start Ray in a background thread while the driver builds the federation.

Ray's start-up is mostly waiting: its daemons (GCS, raylet, agents) start as processes of
their own. Started first, in a thread, it overlaps the driver's partitioning (flwr-datasets'
import alone takes about a second) instead of following it. Flower's Ray backend then finds Ray
running and uses it, so this passes the arguments Flower's ``init_ray`` would (the dashboard
off, the driver's ``sys.path`` as the workers' ``PYTHONPATH``).

Ray sets a SIGTERM handler only when started from the main thread; from this thread it leaves
signals alone, which the run's own ``StopRequest`` handles.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

#: the warning Ray logs when started outside the main thread (nothing to act on here)
_THREAD_WARNING = "SIGTERM handler is not set"


class _DropThreadWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_THREAD_WARNING)


def flower_init_args(init_args: dict[str, Any]) -> dict[str, Any]:
    """``ray.init`` arguments as Flower's Ray backend builds them from ``init_args``."""
    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath  # as Flower sets it for processes started later
    return {"include_dashboard": False, **init_args,
            "runtime_env": {"env_vars": {"PYTHONPATH": pythonpath}}}


class BackgroundRay:
    """``ray.init`` running in a thread; ``wait()`` before Flower needs it, ``stop()`` always."""

    def __init__(self, init_args: dict[str, Any]) -> None:
        self._args = flower_init_args(init_args)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._start, name="fedsparse-ray-start", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            import ray

            logging.getLogger("ray._private.worker").addFilter(_DropThreadWarning())
            ray.init(**self._args)
        except BaseException as exc:  # re-raised in the driver's thread by wait()
            self._error = exc

    def wait(self) -> None:
        """Block until Ray runs; raise what stopped it from starting."""
        self._thread.join()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Shut Ray down once its start has finished (a run that failed before it needed Ray)."""
        self._thread.join()
        import ray

        if ray.is_initialized():
            ray.shutdown()
