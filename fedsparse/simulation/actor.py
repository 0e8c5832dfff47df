"""The simulation's Ray actor: Flower's ``ClientAppActor``, loaded by workers without
``flwr/simulation/__init__``.

A Ray worker loads an actor's class by importing the module of the class (and its bases).
Flower's actor lives in ``flwr.simulation.ray_transport.ray_actor``, so every worker first ran
``flwr/simulation/__init__``: Flower's simulation app, its LinkState, SQLAlchemy and FastAPI,
none of which an actor uses, in each worker, on round 1 of every run (most of the worker's
import time; ``benchmarks/overhead.py`` measures start-up). Workers now import this module
first (``ClientAppActor`` is pickled by reference, as the base of the class Ray ships), and it
imports Flower's actor module with that ``__init__`` skipped.
"""

from __future__ import annotations

from collections.abc import Callable

import ray

from fedsparse.imports import import_skipping_init

_flower_actor = import_skipping_init("flwr.simulation", "flwr.simulation.ray_transport.ray_actor")


class ClientAppActor(_flower_actor.VirtualClientEngineActor):  # type: ignore[misc,name-defined]
    """Flower's ``ClientAppActor`` (the same constructor and ``run``, and the same name in the
    workers' process titles), defined in a module that workers import cheaply."""

    def __init__(self, on_actor_init_fn: Callable[[], None] | None = None) -> None:
        super().__init__()
        if on_actor_init_fn:
            on_actor_init_fn()


RemoteClientAppActor = ray.remote(ClientAppActor)


def install() -> None:
    """Make Flower's Ray backend (flwr 1.42, pinned) create this actor for the runs that start
    from now on: ``RayBackend.build`` looks ``ClientAppActor`` up in its module when it builds
    its pool."""
    from flwr.server.superlink.fleet.vce.backend import raybackend

    raybackend.ClientAppActor = RemoteClientAppActor  # type: ignore[misc]
