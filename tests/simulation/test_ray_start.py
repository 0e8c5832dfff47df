"""Ray started in the background: Flower's arguments, and a failed start as one error line."""

import os
import sys

import pytest

from fedsparse.errors import SimulationError
from fedsparse.simulation.ray_start import BackgroundRay, flower_init_args


def test_flower_init_args_are_what_flowers_backend_would_pass(monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)
    args = flower_init_args({"num_cpus": 2, "logging_level": "ERROR"})
    assert args["include_dashboard"] is False and args["num_cpus"] == 2
    workers_path = args["runtime_env"]["env_vars"]["PYTHONPATH"]
    assert workers_path.split(os.pathsep) == sys.path  # workers import what the driver does
    assert os.environ["PYTHONPATH"] == workers_path


def test_a_ray_that_cannot_start_is_one_simulation_error():
    starting = BackgroundRay({"num_cpus": -1})  # refused by ray.init before any process starts
    with pytest.raises(SimulationError, match=r"Ray did not start: ValueError: .*nonnegative"):
        starting.wait()
    starting.stop()  # and stopping it is safe
    assert not starting._thread.is_alive()
