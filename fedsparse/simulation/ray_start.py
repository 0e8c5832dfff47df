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

A local Ray starts without the daemons a simulation never uses (``lean_local_node``): its
autoscaler monitor, its API server (with the dashboard off it serves only usage statistics,
which are off too) and, when worker logs are not shown, its log monitor. Each is a Python
process of its own importing much of Ray (a fraction of a second of CPU each), and
``ray.init`` waits for the API server to publish its address. Ray (2.55.1, pinned by Flower)
has no public switch for them, so the node is started with its own parameters for these
(``no_monitor``, ``include_log_monitor``) and without its ``start_api_server``; where a Ray
lacks either, it starts whole.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def lean_local_node(log_monitor: bool) -> Iterator[bool]:
    """While inside, a ``ray.init`` that starts a local node starts it without the autoscaler
    monitor and the API server, and without the log monitor unless ``log_monitor``. Yields
    whether it could (False: this Ray's internals differ, and it starts whole)."""
    import ray._private.node as node_module
    import ray._private.parameter as params_module

    params, node = params_module.RayParams, node_module.Node
    switches = {"no_monitor", "include_log_monitor"}
    if not switches <= set(inspect.signature(params).parameters) or \
            not hasattr(node, "start_api_server"):
        yield False
        return

    class LeanParams(params):  # type: ignore[misc,valid-type]
        def __init__(self, **kwargs: Any) -> None:
            kwargs.setdefault("no_monitor", True)
            kwargs.setdefault("include_log_monitor", log_monitor)
            super().__init__(**kwargs)

    class LeanNode(node):  # type: ignore[misc,valid-type]
        def start_api_server(self, *, include_dashboard: bool | None,
                             raise_on_failure: bool) -> None:
            if include_dashboard:  # asked for: the whole server, as Ray starts it
                super().start_api_server(include_dashboard=include_dashboard,
                                         raise_on_failure=raise_on_failure)

    # ray.init looks both up by attribute when it starts a node: swap them for its call only
    params_module.RayParams, node_module.Node = LeanParams, LeanNode
    try:
        yield True
    finally:
        params_module.RayParams, node_module.Node = params, node


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
            lean = "address" not in self._args and not self._args.get("include_dashboard")
            if lean:
                with lean_local_node(log_monitor=self._args.get("log_to_driver", True)):
                    ray.init(**self._args)
            else:
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
