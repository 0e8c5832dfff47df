"""A ClientApp process that starts late: the "401 Unauthorized" restarts of a deployed node.

Flower 1.42's SuperNode hands each message to a ClientApp process with a task token that lapses
if the process makes no call within 30 s of the claim (``HEARTBEAT_DEFAULT_INTERVAL``). The node
then puts the message back and starts another process, which serves it; the late process, when
it finally calls, is refused (401 on heartbeat, pull and ``push-task-output``) and exits without
training. So the round loses no client and counts no failure: the cost is time. This test
delays the first ClientApp process of a loopback deployment past the window (a wrapper earlier
on PATH, as the SuperExec starts ``flwr-clientapp`` by name) and checks exactly that.

Opt-in (``python -m pytest -m slow``): it waits out Flower's 30 s window, ~75 s in all.
"""

import json
import os
import stat
from pathlib import Path

import pytest

from tests.deploy.test_processes import BIN, DENSITIES, Processes, deployment_env, launch_app, start_insecure

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: past Flower's 30 s claim window
DELAY_S = 40


def late_first_clientapp(folder: Path) -> Path:
    """A ``flwr-clientapp`` that sleeps DELAY_S on its first launch, then runs the real one."""
    wrappers = folder / "bin"
    wrappers.mkdir()
    script = wrappers / "flwr-clientapp"
    script.write_text(f"""#!/bin/bash
if mkdir "{folder}/first-launch" 2>/dev/null; then
  echo "late $(date +%s)" >> "{folder}/launches.log"; sleep {DELAY_S}
else
  echo "launch $(date +%s)" >> "{folder}/launches.log"
fi
exec "{BIN / 'flwr-clientapp'}" "$@"
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return wrappers


def test_a_late_clientapp_is_replaced_and_the_round_loses_no_client(tmp_path):
    env = deployment_env(tmp_path)
    env["PATH"] = f"{late_first_clientapp(tmp_path)}{os.pathsep}{env['PATH']}"
    deployment = Processes(tmp_path, env)
    try:
        start_insecure(deployment, tmp_path)
        run = launch_app(deployment, tmp_path / "runs", len(DENSITIES))
        stdout, stderr = run.communicate(timeout=400)
    finally:
        deployment.stop()
    assert run.returncode == 0, stdout[-2000:] + stderr[-2000:]
    launches = [line.split() for line in (tmp_path / "launches.log").read_text().splitlines()]
    late = int(next(t for kind, t in launches if kind == "late"))
    assert any(kind == "launch" and int(t) - late >= 30 for kind, t in launches), launches  # the restart
    node_logs = "".join(p.read_text() for p in tmp_path.glob("node*.log"))
    assert "401 Unauthorized" in node_logs and "push-task-output" in node_logs
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["failures"]["clients_failed"] == 0
    (record,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert record["clients_accepted"] == len(DENSITIES)  # every node's update, each once
