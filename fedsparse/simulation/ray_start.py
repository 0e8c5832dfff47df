"""Start Ray in a background thread while the driver builds the federation.

Ray's start-up is mostly waiting: its daemons (GCS, raylet, agents) start as processes of
their own. Started first, in a thread, it overlaps the driver's partitioning (flwr-datasets'
import alone takes about a second) instead of following it. Flower's Ray backend then finds Ray
running and uses it, so this passes the arguments Flower's ``init_ray`` would (the dashboard
off, the driver's ``sys.path`` as the workers' ``PYTHONPATH``), except Flower's runtime
environment where Ray starts here (see ``flower_init_args``).

The thread lives until ``stop()``: Ray ties its daemons' lives to the thread that started them
(Linux's parent-death signal follows the thread, not the process), so a thread that returned
after ``ray.init`` would take GCS and raylet down with it. Ray sets a SIGTERM handler only when
started from the main thread; from this one it leaves signals to the run's ``StopRequest``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

from fedsparse.errors import SimulationError

#: the warning Ray logs when started outside the main thread (nothing to act on here)
_THREAD_WARNING = "SIGTERM handler is not set"


class _DropThreadWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_THREAD_WARNING)


def flower_init_args(init_args: dict[str, Any]) -> dict[str, Any]:
    """``ray.init`` arguments as Flower's Ray backend builds them from ``init_args``, less its
    runtime environment when Ray starts here (below)."""
    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath  # as Flower sets it for processes started later
    args = {"include_dashboard": False, **init_args}
    if "address" in init_args:  # a cluster's workers start elsewhere: they get the path from Ray
        args["runtime_env"] = {"env_vars": {"PYTHONPATH": pythonpath}}
    # Ray started here: its raylet, and so every worker, inherits this process's PYTHONPATH. No
    # runtime environment lets the actors take the workers Ray prestarts at ray.init, while the
    # driver partitions, instead of starting their own once round 1 asks for them
    return args


class BackgroundRay:
    """``ray.init`` running in a thread; ``wait()`` before Flower needs it, ``stop()`` always."""

    def __init__(self, init_args: dict[str, Any]) -> None:
        self._args = flower_init_args(init_args)
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._start, name="fedsparse-ray", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            import ray

            logging.getLogger("ray._private.worker").addFilter(_DropThreadWarning())
            ray.init(**self._args)
        except BaseException as exc:  # re-raised in the driver's thread by wait()
            self._error = exc
        finally:
            self._ready.set()
        self._release.wait()  # Ray's daemons live as long as this thread

    def wait(self) -> None:
        """Block until Ray runs; a Ray that did not start is a one-line SimulationError."""
        self._ready.wait()
        if self._error is not None:
            error = self._error
            raise SimulationError(f"Ray did not start: {type(error).__name__}: {error}; see "
                                  "'ray status', or free memory and CPUs for it") from error

    def stop(self) -> None:
        """Shut Ray down (if the run has not) once its start has finished, and end the thread."""
        self._ready.wait()
        import ray

        if ray.is_initialized():
            ray.shutdown()
        self._release.set()
        self._thread.join()
