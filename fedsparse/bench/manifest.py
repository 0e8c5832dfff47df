"""The suite folder's manifest: every run's config hash and status, written after each change.

It is what makes a suite resumable (finished runs are kept, a run whose config changed is run
again, a folder of another suite is refused) and what the report reads to know which run
folder holds what.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedsparse.config import ExperimentConfig
from fedsparse.errors import ConfigError
from fedsparse.results import write_atomic

MANIFEST_FILE = "manifest.json"
#: the suite file as last run, beside its manifest (the report reads it)
SUITE_COPY = "suite.yaml"
RUNS_DIR = "runs"
#: config sections that say where and how a run executes, not what it computes
EXECUTION_ONLY = {"simulation", "output"}


def config_hash(config: ExperimentConfig) -> str:
    """A hash of what fixes a run's results (not where it runs or writes its folder). Keys left
    at their defaults are left out, a method's options included, so a release that adds a
    config key does not make every finished run of a suite look changed."""
    tree = config.model_dump(mode="json", exclude=EXECUTION_ONLY, exclude_defaults=True)
    method = tree.get("method") or {}
    for section, options in list(method.items()):
        if isinstance(options, dict):
            defaults = _option_defaults(section)
            method[section] = {k: v for k, v in options.items()
                               if k not in defaults or defaults[k] != v}
    text = json.dumps(tree, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recorded_hash(run_dir: Path) -> str | None:
    """The hash, by this release's rules, of the config a finished run folder recorded (None:
    none readable). An older release hashed differently, or had fewer keys: the run is the
    same if the config it ran with means the same today."""
    from fedsparse.config import load_config
    from fedsparse.errors import FedsparseError

    try:
        return config_hash(load_config(run_dir / "config.yaml"))
    except (FedsparseError, OSError):
        return None


def _option_defaults(section: str) -> dict[str, Any]:
    from fedsparse.clients.registry import sections

    method = sections().get(section)
    return method.Options().model_dump(mode="json") if method is not None else {}


@dataclass
class RunStatus:
    hash: str
    stage: str
    entry: str
    seed: int
    point: int
    #: pending, done or failed
    status: str = "pending"
    error: str | None = None
    seconds: float | None = None
    #: the fedsparse commit that ran it
    commit: str | None = None


@dataclass
class Manifest:
    suite: str
    runs: dict[str, RunStatus] = field(default_factory=dict)
    #: entry -> selected grid point and the validation accuracy of every point
    selection: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the command line that last ran the suite (the report quotes it)
    command: str = ""

    @staticmethod
    def path(folder: Path) -> Path:
        return Path(folder) / MANIFEST_FILE

    @classmethod
    def open(cls, folder: Path, suite: str) -> Manifest:
        """The folder's manifest, or a new one; a folder of another suite, or a non-empty
        folder that is no suite folder, is refused."""
        folder = Path(folder)
        path = cls.path(folder)
        if not path.is_file():
            if folder.is_dir() and any(folder.iterdir()):
                raise ConfigError(f"{folder} is not empty and holds no {MANIFEST_FILE}: name a new "
                                  "folder with --out, or an earlier folder of this suite to resume it")
            return cls(suite)
        try:
            data = json.loads(path.read_text())
            manifest = cls(data["suite"], {k: RunStatus(**v) for k, v in data["runs"].items()},
                           data.get("selection", {}), data.get("command", ""))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is damaged ({exc}): restore it or run the suite into a new "
                              "folder with --out") from None
        if manifest.suite != suite:
            raise ConfigError(f"{folder} holds suite '{manifest.suite}', not '{suite}': name another "
                              "folder with --out")
        return manifest

    def save(self, folder: Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        data = {"suite": self.suite, "runs": {k: asdict(v) for k, v in self.runs.items()},
                "selection": self.selection, "command": self.command}
        write_atomic(self.path(folder), json.dumps(data, indent=1, sort_keys=True))

    def needs_run(self, folder: Path, key: str, status: RunStatus) -> bool:
        """Whether ``key`` must (re)run: new, changed since it ran, unfinished, or failed. A
        changed or unfinished run's folder is removed first, so nothing stale is reported."""
        known = self.runs.get(key)
        if known is not None and known.status == "done":
            if known.hash == status.hash:
                return False
            if recorded_hash(run_folder(folder, key)) == status.hash:
                known.hash = status.hash  # same run, hashed by an older release: keep it
                return False
        shutil.rmtree(run_folder(folder, key), ignore_errors=True)
        self.runs[key] = status
        return True


def source_commit() -> str:
    """The commit of the fedsparse checkout in use (``+dirty`` with uncommitted changes to
    tracked files); the installed version when it is no checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        git = ["git", "-C", str(root)]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import version

        return f"fedsparse {version('fedsparse')}"


def run_folder(folder: Path, key: str) -> Path:
    """Where the run ``key`` (``entry/tune-0-s100``) keeps its ordinary run folder."""
    return Path(folder) / RUNS_DIR / key
