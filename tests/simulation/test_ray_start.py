"""Ray started in the background: Flower's arguments, a lean local node, fedsparse's actor, and a
failed start as one error line."""

import functools
import json
import os
import shutil
import sys
import tempfile

import pytest

from fedsparse.errors import SimulationError
from fedsparse.simulation.ray_start import BackgroundRay, flower_init_args, lean_local_node


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


def test_the_lean_node_switches_off_only_what_a_simulation_never_uses():
    import ray._private.node as node_module
    import ray._private.parameter as params_module

    params, node = params_module.RayParams, node_module.Node
    for log_monitor in (False, True):
        with lean_local_node(log_monitor=log_monitor) as lean:
            assert lean
            made = params_module.RayParams(num_cpus=1)
            assert made.no_monitor and made.include_log_monitor is log_monitor
            assert params_module.RayParams(no_monitor=False).no_monitor is False  # asked: kept
    assert (params_module.RayParams, node_module.Node) == (params, node)  # restored after


def test_a_local_ray_runs_fedsparses_actor_without_its_unused_daemons_and_imports(tmp_path):
    """One real start: no autoscaler monitor, log monitor or API server, and an actor whose
    worker loaded Flower's actor module without the rest of ``flwr.simulation``."""
    import ray
    from ray._private import ray_constants

    from fedsparse.simulation.actor import RemoteClientAppActor

    ray_tmp = tempfile.mkdtemp(prefix="fsray-", dir="/tmp")
    started = BackgroundRay({"num_cpus": 1, "log_to_driver": False, "logging_level": "ERROR",
                             "_temp_dir": ray_tmp})
    try:
        started.wait()
        running = set(ray._private.worker._global_node.all_processes)
        assert {ray_constants.PROCESS_TYPE_RAYLET, ray_constants.PROCESS_TYPE_GCS_SERVER} <= running
        assert not running & {ray_constants.PROCESS_TYPE_MONITOR, ray_constants.PROCESS_TYPE_LOG_MONITOR,
                              ray_constants.PROCESS_TYPE_DASHBOARD}
        report = tmp_path / "modules.json"
        actor = RemoteClientAppActor.options(num_cpus=1).remote(
            on_actor_init_fn=functools.partial(_write_loaded_modules, report))
        ray.get(actor.__ray_ready__.remote(), timeout=60)
        loaded = json.loads(report.read_text())
        assert loaded["fedsparse.simulation.actor"] and loaded["flwr.simulation.ray_transport.ray_actor"]
        assert not loaded["flwr.simulation.app"] and not loaded["sqlalchemy"] and not loaded["fastapi"]
    finally:
        started.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _write_loaded_modules(path):
    names = ["fedsparse.simulation.actor", "flwr.simulation.ray_transport.ray_actor",
             "flwr.simulation.app", "sqlalchemy", "fastapi"]
    path.write_text(json.dumps({name: name in sys.modules for name in names}))
