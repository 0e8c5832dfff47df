"""``--ray-address``: a simulation on an existing Ray cluster that the test starts and stops.

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
    script = tmp_path / "cluster.sh"
    script.write_text(f"""set -u
ip link set lo up
export RAY_USAGE_STATS_ENABLED=0
"{BIN / 'ray'}" start --head --port=6379 --include-dashboard=false --num-cpus=2 \\
  --temp-dir={ray_dir} --disable-usage-stats > {tmp_path}/head.log 2>&1 || exit 90
"{sys.executable}" -m fedsparse.cli simulate --clients 4 --rounds 2 --fraction 0.5 \\
  --ray-address 127.0.0.1:6379 --out {tmp_path}/runs --name cluster > {tmp_path}/simulate.log 2>&1
""")
    try:
        result = subprocess.run([*UNSHARE, "bash", str(script)], timeout=300)
        gcs_log = (ray_dir / "session_latest" / "logs" / "gcs_server.out").read_text()
    finally:
        kill_processes_mentioning(str(ray_dir))  # only if the namespace could not do it
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert result.returncode == 0, (tmp_path / "simulate.log").read_text()[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["failures"]["clients_failed"] == 0
    assert "Registering job" in gcs_log  # the simulation ran as a job of the test's cluster
    assert not (run / "ray-logs").exists()  # no Ray of its own was started


@pytest.mark.parametrize(("address", "needle"), [("127.0.0.1:9", "no Ray cluster answers at 127.0.0.1:9"),
                                                 ("nonsense", "is not host:port")])
def test_a_bad_ray_address_fails_fast_with_one_line(tmp_path, address, needle):
    result = invoke("simulate", "--ray-address", address, "--out", str(tmp_path))
    assert result.returncode == 2 and needle in result.stderr + result.stdout
    assert not any(tmp_path.iterdir())
