"""Ray started in the background: Flower's arguments, and a failed start as one error line."""

import os
import sys

import pytest

from fedsparse.errors import SimulationError
from fedsparse.simulation.ray_start import BackgroundRay, flower_init_args


def test_flower_init_args_give_the_workers_the_drivers_path(monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)
    args = flower_init_args({"num_cpus": 2, "logging_level": "ERROR"})
    assert args["include_dashboard"] is False and args["num_cpus"] == 2
    # Ray started here: its workers inherit the environment, so no runtime environment keeps the
    # workers Ray prestarts usable by the actors
    assert os.environ["PYTHONPATH"].split(os.pathsep) == sys.path and "runtime_env" not in args
    cluster = flower_init_args({"address": "127.0.0.1:6379"})  # workers started by another raylet
    assert cluster["runtime_env"]["env_vars"]["PYTHONPATH"] == os.environ["PYTHONPATH"]


def test_a_ray_that_cannot_start_is_one_simulation_error():
    starting = BackgroundRay({"num_cpus": -1})  # refused by ray.init before any process starts
    with pytest.raises(SimulationError, match=r"Ray did not start: ValueError: .*nonnegative"):
        starting.wait()
    starting.stop()  # and stopping it is safe
    assert not starting._thread.is_alive()
