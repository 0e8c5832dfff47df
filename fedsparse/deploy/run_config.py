"""The Flower run config of a deployed fedsparse app -> the experiment config.

Keys (``[tool.flwr.app.config]`` in pyproject.toml, overridden by ``flwr run --run-config``):

- ``config``: a config shipped in ``fedsparse.configs`` (e.g. ``quickstart.yaml``) or an
  absolute path to a YAML file that exists where the ServerApp and ClientApps run;
- ``set``: ``key.path=value`` overrides separated by ``;`` (as ``fedsparse simulate --set``);
- ``out``: the folder the server writes its run folder into.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fedsparse.config import ExperimentConfig, parse_assignment, set_path, validate_tree
from fedsparse.errors import ConfigError


def deployed_config(run_config: dict[str, Any]) -> ExperimentConfig:
    """Resolve the run config into an experiment config (clear one-line errors)."""
    name = str(run_config.get("config", "quickstart.yaml"))
    path = Path(name)
    if path.is_absolute():
        if not path.is_file():
            raise ConfigError(f"run config 'config' names {path}, which does not exist on this "
                              "machine: ship the file with every node or use a packaged config")
        text = path.read_text()
    else:
        packaged = resources.files("fedsparse.configs").joinpath(name)
        if not packaged.is_file():
            raise ConfigError(f"run config 'config={name}' is not a packaged config: use one of "
                              f"{', '.join(sorted(_packaged()))} or an absolute path")
        text = packaged.read_text()
    tree = yaml.safe_load(text) or {}
    for item in str(run_config.get("set", "")).split(";"):
        if item.strip():
            set_path(tree, *parse_assignment(item.strip()))
    if run_config.get("out"):
        set_path(tree, "output.dir", str(run_config["out"]))
    return validate_tree(tree, f"run config ({name})")


def _packaged() -> list[str]:
    return [p.name for p in resources.files("fedsparse.configs").iterdir() if p.name.endswith(".yaml")]


@lru_cache(maxsize=4)
def _cached(run_config_json: str) -> str:
    return deployed_config(json.loads(run_config_json)).model_dump_json()


def deployed_config_json(run_config: dict[str, Any]) -> str:
    """The experiment config as JSON, resolved once per process and run config."""
    return _cached(json.dumps(run_config, sort_keys=True, default=str))
