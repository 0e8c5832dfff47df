"""Run a script in a fresh Python: what a module imports shows only where nothing is loaded yet."""

from __future__ import annotations

import subprocess
import sys


def run_fresh(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``script`` with ``python -c`` (in the current folder, ``env`` or this environment);
    fail the calling test with its stderr unless it exits 0."""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-1500:]
    return done
