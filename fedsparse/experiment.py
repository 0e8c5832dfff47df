"""From the validated config to the Flower-free core objects: the method, its run info, budgets.

The one place that reads ``ExperimentConfig`` on behalf of the core, so methods, budgets and
training never import the config module.
"""

from __future__ import annotations

import os
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


def warmup_epochs(config: ExperimentConfig) -> int:
    """Server warm-up epochs before round 1: the config's, or the method's default."""
    if config.partition.server_warmup_epochs is not None:
        return config.partition.server_warmup_epochs
    return method_class(config).default_warmup_epochs(method_options(config))


def needs_server_data(config: ExperimentConfig) -> bool:
    """Hold a labelled set back for the server: when asked, or when the method or the warm-up
    uses one."""
    warm = warmup_epochs(config) > 0
    if config.partition.server_set is False and warm:
        raise ConfigError(f"a server warm-up of {warmup_epochs(config)} epochs needs the server's "
                          "held-back set: set partition.server_set true or "
                          "partition.server_warmup_epochs 0")
    if config.partition.server_set is not None:
        return config.partition.server_set
    return warm or method_class(config).uses_server_data(method_options(config))


def budgets_of(config: ExperimentConfig) -> list[Budget]:
    """One declared budget per client, from the config's tiers or budget file."""
    return assign_budgets(config.budgets.tiers, config.num_clients, config.seed,
                          file=config.budgets.file)


#: what a simulation holds per client, measured with benchmarks/scale.py (100 -> 1,000 synthetic
#: clients added ~270 MiB to the process tree), and what it holds regardless (Ray, torch, model)
MEMORY_PER_CLIENT = 0.3 * 2**20
MEMORY_FIXED = 2 * 2**30


def check_fits_in_memory(config: ExperimentConfig, available: int | None = None) -> None:
    """Refuse a client count far beyond this machine's memory before anything is allocated."""
    if available is None:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    needed = MEMORY_FIXED + config.num_clients * MEMORY_PER_CLIENT
    if needed > available:
        raise ConfigError(f"--clients {config.num_clients} would need about {_size(needed)} of memory "
                          f"(~0.3 MiB per simulated client, measured by benchmarks/scale.py, plus "
                          f"~2 GiB for Ray and the model); this machine has {_size(available)}: use "
                          f"at most {int((available - MEMORY_FIXED) // MEMORY_PER_CLIENT)} clients")


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.0f} PiB"
