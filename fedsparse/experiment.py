"""From the validated config to the Flower-free core objects: the method, its run info, budgets.

The one place that reads ``ExperimentConfig`` on behalf of the core, so methods, budgets and
training never import the config module.
"""

from __future__ import annotations

from functools import lru_cache

from fedsparse.budgets import Budget, assign_budgets
from fedsparse.clients.registry import resolve
from fedsparse.config import ExperimentConfig
from fedsparse.errors import ConfigError
from fedsparse.method import Method, RunInfo


def run_info(config: ExperimentConfig) -> RunInfo:
    return RunInfo(seed=config.seed, num_clients=config.num_clients, rounds=config.rounds,
                   train=config.train, eval_batch_size=config.eval.batch_size)


def method_class(config: ExperimentConfig) -> type[Method]:
    return resolve(config.method.name)


def method_options(config: ExperimentConfig):  # -> the method's Options instance
    cls = method_class(config)
    return cls.Options.model_validate(config.method.options_of(cls.section()))


def build_method(config: ExperimentConfig) -> Method:
    """A fresh instance of the configured method (server or client side)."""
    cls = method_class(config)
    try:
        return cls(method_options(config), run_info(config))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"method '{cls.name}' cannot be built: {exc}") from exc


@lru_cache(maxsize=4)
def cached_method(config_json: str) -> Method:
    """One method object per process and experiment (a client worker may cache helpers in it)."""
    return build_method(ExperimentConfig.model_validate_json(config_json))


def needs_server_data(config: ExperimentConfig) -> bool:
    """Hold a labelled set back for the server: when asked, or when the method uses one."""
    if config.partition.server_set is not None:
        return config.partition.server_set
    return method_class(config).uses_server_data(method_options(config))


def budgets_of(config: ExperimentConfig) -> list[Budget]:
    """One declared budget per client, from the config's tiers or budget file."""
    return assign_budgets(config.budgets.tiers, config.num_clients, config.seed,
                          file=config.budgets.file)
