"""A benchmark suite: one YAML file naming a base config, the compared entries, each entry's
tuning grid, the seeds that tune and the seeds that are reported.

The rules a fair comparison needs are checked here, before anything runs: every entry gets the
same number of grid points (unless the suite says otherwise), tuning seeds never overlap
reported seeds, and every run's config validates.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fedsparse.budgets import parse_budget_shorthand
from fedsparse.config import ExperimentConfig, read_yaml, set_path, validate_tree
from fedsparse.errors import ConfigError

#: what a suite's or an entry's name may hold: it names folders
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def folder_name(value: str) -> str:
    if not NAME.match(value):
        raise ValueError(f"name {value!r} must be letters, digits, '-', '_' or '.' (it names a folder)")
    return value


FolderName = Annotated[str, AfterValidator(folder_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Entry(_Strict):
    """One compared configuration: a method (with its strategy and budgets), fixed overrides,
    and the grid its hyper-parameters are tuned over."""

    name: FolderName
    method: str
    strategy: str | None = None
    budgets: str | None = Field(None, description="tiers as density:share pairs, e.g. 0.1:0.5,0.5:0.5")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted key -> value")
    grid: dict[str, list[Any]] = Field(default_factory=dict,
                                       description="dotted key -> values; points: their product")
    label: str | None = Field(None, description="words shown beside the method in the tables, "
                                                "e.g. 'fixed mask' (runs that say so themselves "
                                                "are labelled without it)")


    @field_validator("grid")
    @classmethod
    def _grid(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if not values:
                raise ValueError(f"grid '{key}' is empty: give it at least one value")
            if len(set(map(repr, values))) != len(values):
                raise ValueError(f"grid '{key}' repeats a value: each point must differ")
        return value

    def points(self) -> list[dict[str, Any]]:
        """The grid's points, in a fixed order (the product of the keys' values as written)."""
        keys = list(self.grid)
        return [dict(zip(keys, values, strict=True))
                for values in itertools.product(*(self.grid[k] for k in keys))]


class Tuning(_Strict):
    """Selection by mean validation accuracy over ``seeds`` (never the reported ones)."""

    seeds: list[int] = Field(default_factory=lambda: [100])
    #: grid points every entry has; None: as many as the first entry's grid
    points: int | None = Field(None, ge=1)
    #: let entries have grids of different sizes (the report says so)
    unequal: bool = False


class Suite(_Strict):
    name: FolderName
    description: str = ""
    #: a config file (relative to the suite file, or a packaged config such as quickstart.yaml)
    base: str
    #: overrides of the base for every entry (dotted key -> value)
    set: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int] = Field(min_length=1)
    tune: Tuning = Tuning()
    #: the entry every other entry is compared with, seed by seed
    baseline: str | None = None
    entries: list[Entry] = Field(min_length=1)


    @model_validator(mode="after")
    def _fair(self) -> Suite:
        names = [e.name for e in self.entries]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"entry names repeat: {', '.join(twice)}")
        if len(set(self.seeds)) != len(self.seeds) or len(set(self.tune.seeds)) != len(self.tune.seeds):
            raise ValueError("a seed is listed twice")
        shared = sorted(set(self.seeds) & set(self.tune.seeds))
        if shared:
            raise ValueError(f"tuning seeds {shared} are also reported seeds: selection must never "
                             "see a reported seed; pick disjoint tune.seeds")
        if not self.tune.seeds and any(len(e.points()) > 1 for e in self.entries):
            raise ValueError("tune.seeds is empty but entries have grids to tune: give at least "
                             "one tuning seed")
        if self.baseline is not None and self.baseline not in names:
            raise ValueError(f"baseline {self.baseline!r} is not an entry ({', '.join(names)})")
        if not self.tune.unequal:
            want = self.tune.points or len(self.entries[0].points())
            unequal = [f"{e.name} ({len(e.points())})" for e in self.entries
                       if len(e.points()) != want]
            if unequal:
                raise ValueError(f"every entry must have {want} grid points (the same tuning budget), "
                                 f"but {', '.join(unequal)} differ: even the grids out, or set "
                                 "tune.unequal: true")
        return self


@dataclass(frozen=True)
class PlannedRun:
    """One run of the suite: an ordinary experiment config and where its folder goes."""

    #: ``<entry>/tune-<point>-s<seed>`` or ``<entry>/seed<seed>``
    key: str
    entry: str
    stage: str  # "tune" or "report"
    seed: int
    point: int
    config: ExperimentConfig


def load_suite(path: Path) -> Suite:
    """The suite in ``path``, validated (one-line ConfigError otherwise)."""
    if not Path(path).is_file():
        raise ConfigError(f"suite file {path} not found: pass a suite YAML file, e.g. "
                          "benchmarks/suites/smoke.yaml")
    tree = read_yaml(Path(path))
    try:
        return Suite.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"suite {path}: unknown key '{loc}': remove it or check its "
                              "spelling") from None
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"suite {path}: '{loc}': {message}") from None


def base_tree(suite: Suite, suite_path: Path) -> dict[str, Any]:
    """The base config as a raw mapping (a path relative to the suite file, else a packaged
    config of ``fedsparse.configs``)."""
    candidate = Path(suite_path).parent / suite.base
    if candidate.is_file():
        return read_yaml(candidate)
    resource = resources.files("fedsparse.configs").joinpath(suite.base)
    if not resource.is_file():
        raise ConfigError(f"suite base {suite.base!r} is neither a file next to the suite nor a "
                          "packaged config (fedsparse/configs): fix 'base'")
    return yaml.safe_load(resource.read_text()) or {}


def entry_config(suite: Suite, tree: dict[str, Any], entry: Entry, point: dict[str, Any],
                 seed: int) -> ExperimentConfig:
    """The config of one run: base, suite overrides, the entry's method, strategy, budgets and
    overrides, the grid point, the seed."""
    tree = yaml.safe_load(yaml.safe_dump(tree))  # a deep copy
    for key, value in {**suite.set, **entry.set, **point}.items():
        set_path(tree, key, value)
    set_path(tree, "method.name", entry.method)
    if entry.strategy is not None:
        set_path(tree, "strategy.name", entry.strategy)
    if entry.budgets is not None:
        set_path(tree, "budgets.tiers", [t.model_dump() for t in parse_budget_shorthand(entry.budgets)])
    set_path(tree, "seed", seed)
    set_path(tree, "output.name", entry.name)
    return validate_tree(tree, f"suite '{suite.name}', entry '{entry.name}'")


def tuning_runs(suite: Suite, tree: dict[str, Any]) -> list[PlannedRun]:
    """Every (entry, grid point, tuning seed) run; an entry with a single point is not tuned."""
    runs = []
    for entry in suite.entries:
        points = entry.points()
        if len(points) < 2:
            continue
        for i, point in enumerate(points):
            for seed in suite.tune.seeds:
                runs.append(PlannedRun(f"{entry.name}/tune-{i}-s{seed}", entry.name, "tune", seed, i,
                                       entry_config(suite, tree, entry, point, seed)))
    return runs


def report_runs(suite: Suite, tree: dict[str, Any], entry: Entry, point: int) -> list[PlannedRun]:
    """The entry's reported runs at its selected grid point."""
    chosen = entry.points()[point] if entry.grid else {}
    return [PlannedRun(f"{entry.name}/seed{seed}", entry.name, "report", seed, point,
                       entry_config(suite, tree, entry, chosen, seed)) for seed in suite.seeds]


def check_plan(suite: Suite, tree: dict[str, Any]) -> int:
    """Validate every run's config before anything runs; the number of runs the suite holds."""
    runs = tuning_runs(suite, tree)
    for entry in suite.entries:
        report_runs(suite, tree, entry, 0)
    return len(runs) + len(suite.entries) * len(suite.seeds)
