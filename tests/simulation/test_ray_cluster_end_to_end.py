"""``--ray-address``: a simulation on an existing Ray cluster that the test starts and stops,
running plug-ins from outside the package: a strategy and a method installed by entry point
(``examples/``, their dist-info on PYTHONPATH for the head and the driver, as a cluster needs
them on every worker), then one run of `fedsparse bench --ray-address` on the same cluster.
Sharing one Ray start-up for all saves the suite two.

Ray advertises the machine's external interface even when told 127.0.0.1, so the head, the
simulation and everything Ray spawns run inside a fresh network namespace (``unshare -n``) whose
only interface is loopback: no traffic can reach any other address. It is a fresh PID namespace
too, so when the script ends the kernel stops every process the cluster left (``ray stop`` would
stop every Ray on the machine, a benchmark's or another test's included).
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.clients.test_registry import EXAMPLE as METHOD_EXAMPLE
from tests.clients.test_registry import write_dist_info as write_method_dist_info
from tests.strategies.test_registry import EXAMPLE, write_dist_info
from tests.test_cli import invoke

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
#: loopback-only network, own PID namespace (its processes die with the script), own /proc
UNSHARE = ["unshare", "--net", "--pid", "--fork", "--mount-proc"]


def can_isolate_network() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        [*UNSHARE, "true"], capture_output=True).returncode == 0


def kill_processes_mentioning(marker: str) -> None:
    out = subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True).stdout
    for line in out.splitlines()[1:]:
        pid, _, args = line.strip().partition(" ")
        if marker in args and int(pid) != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


@pytest.mark.skipif(not can_isolate_network(), reason="needs 'unshare' (root) to keep Ray on loopback")
def test_simulation_runs_on_an_existing_cluster(tmp_path):
    ray_dir = Path(tempfile.mkdtemp(prefix="fsrc-", dir="/tmp"))  # Ray's socket paths must be short
    site = tmp_path / "site"
    write_dist_info(site)
    write_method_dist_info(site)
    path = os.pathsep.join([str(site), str(EXAMPLE), str(METHOD_EXAMPLE),
                            os.environ.get("PYTHONPATH", "")])
    suite = tmp_path / "suite.yaml"  # one run of `fedsparse bench` on the same cluster
    suite.write_text("name: cluster\nbase: quickstart.yaml\nseeds: [3]\ntune: {seeds: [4]}\n"
                     "set: {num_clients: 4, rounds: 1, fraction: 1.0, data.synthetic.iid: true}\n"
                     "entries: [{name: fedavg, method: dense, strategy: fedavg, budgets: '1.0:1'}]\n")
    script = tmp_path / "cluster.sh"
    script.write_text(f"""set -u
ip link set lo up
export RAY_USAGE_STATS_ENABLED=0 PYTHONPATH="{path}"
"{BIN / 'ray'}" start --head --port=6379 --include-dashboard=false --num-cpus=2 \\
  --temp-dir={ray_dir} --disable-usage-stats > {tmp_path}/head.log 2>&1 || exit 90
"{sys.executable}" -m fedsparse.cli simulate --clients 4 --rounds 2 --fraction 1 \\
  --set data.synthetic.iid=true --set eval.every=2 --strategy norm-clipped \\
  --method federated-dropout --budgets 0.5:1 \\
  --ray-address 127.0.0.1:6379 --out {tmp_path}/runs --name cluster > {tmp_path}/simulate.log 2>&1 \\
  || exit 91
"{sys.executable}" -m fedsparse.cli bench {suite} --ray-address 127.0.0.1:6379 \\
  --out {tmp_path}/bench > {tmp_path}/bench.log 2>&1
""")
    try:
        result = subprocess.run([*UNSHARE, "bash", str(script)], timeout=300)
        gcs_log = (ray_dir / "session_latest" / "logs" / "gcs_server.out").read_text()
    finally:
        kill_processes_mentioning(str(ray_dir))  # only if the namespace could not do it
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert result.returncode != 91, (tmp_path / "simulate.log").read_text()[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds"] == 2
    assert summary["failures"] == {"clients_failed": 0, "updates_rejected": 0, "aggregates_refused": 0}
    # both plug-ins ran, named like built-ins, on the cluster's workers
    assert summary["strategy"] == "norm-clipped" and summary["method"] == "federated-dropout"
    assert summary["sparse_updates"] and summary["cost"]["train_flops_ratio"] < 0.8
    assert 0.0 < summary["accuracy"]["global"] <= 1.0
    assert "Registering job" in gcs_log  # the simulation ran as a job of the test's cluster
    assert not (run / "ray-logs").exists()  # no Ray of its own was started
    assert result.returncode == 0, (tmp_path / "bench.log").read_text()[-3000:]
    bench_run = tmp_path / "bench" / "runs" / "fedavg" / "seed3"
    assert json.loads((bench_run / "summary.json").read_text())["seed"] == 3
    assert not (bench_run / "ray-logs").exists()  # the suite's run used the cluster too
    assert gcs_log.count("Registering job") >= 2


@pytest.mark.parametrize(("address", "needle"), [("127.0.0.1:9", "no Ray cluster answers at 127.0.0.1:9"),
                                                 ("nonsense", "is not host:port")])
def test_a_bad_ray_address_fails_fast_with_one_line(tmp_path, address, needle):
    result = invoke("simulate", "--ray-address", address, "--out", str(tmp_path))
    assert result.returncode == 2 and needle in result.stderr + result.stdout
    assert not any(tmp_path.iterdir())
