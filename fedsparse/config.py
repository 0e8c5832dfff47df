"""Experiment configuration: one validated object from which everything is built.

Sources, in increasing priority: the pydantic defaults, a YAML file, ``--set key.path=value``
overrides and the dedicated CLI flags. Unknown keys are errors, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from fedsparse.budgets import BudgetTier
from fedsparse.clock import DeviceProfile
from fedsparse.errors import ConfigError, FedsparseError
from fedsparse.training import TrainSettings

TrainConfig = TrainSettings  # the ``train`` section is the training loop's own settings

DatasetName = Literal[
    "synthetic", "fashion-mnist", "mnist", "emnist", "cifar10", "cifar100", "femnist"
]
ModelName = Literal["mlp", "logreg", "leaf-cnn", "lenet", "cnn-bn", "resnet18", "vgg11-bn"]
PartitionKind = Literal["natural", "iid", "dirichlet", "shards"]


class _Strict(BaseModel):
    #: unknown keys are errors; so are inf and NaN, which no setting means
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SyntheticConfig(_Strict):
    """FedProx Synthetic(alpha, beta): alpha moves models apart, beta moves inputs apart."""

    alpha: float = Field(0.5, ge=0.0, description="how far apart the clients' models are")
    beta: float = Field(0.5, ge=0.0, description="how far apart the clients' inputs are")
    dim: int = Field(60, ge=1, description="input features")
    num_classes: int = Field(10, ge=2, description="classes")
    min_samples: int = Field(50, ge=10, description="fewest samples a client gets")
    max_samples: int = Field(1000, ge=10, description="most samples a client gets")
    iid: bool = Field(False, description="one shared model and input distribution (no skew)")

    @model_validator(mode="after")
    def _sample_range(self) -> SyntheticConfig:
        if self.max_samples < self.min_samples:
            raise ValueError("max_samples must be >= min_samples")
        return self


class DataConfig(_Strict):
    dataset: DatasetName = Field("synthetic", description="synthetic is generated; the others "
                                  "are read from data_dir")
    data_dir: Path | None = Field(None, description="folder holding the dataset's files")
    emnist_split: str = Field("balanced", description="EMNIST split (balanced, byclass, ...)")
    synthetic: SyntheticConfig = SyntheticConfig()


class PartitionConfig(_Strict):
    """How the pooled data is divided into clients and each client's data into splits."""

    kind: PartitionKind = Field("natural", description="how clients get their data: natural "
                                "owners (Synthetic, FEMNIST), iid, dirichlet label skew, shards")
    alpha: float = Field(0.5, gt=0.0, description="Dirichlet concentration")
    classes_per_client: int = Field(2, ge=1, description="classes per client for 'shards'")
    min_size: int = Field(10, ge=1, description="smallest Dirichlet partition accepted")
    server_set: bool | None = Field(
        None, description="hold a small labelled set back from every client for the server; None: "
                          "only when the method uses one (set true on every run of a comparison so "
                          "all share partitions)")
    server_samples_per_class: int = Field(
        5, ge=1, description="labelled samples per class the server holds (FedTiny's warm-up, SNIP)")
    server_warmup_epochs: int | None = Field(
        None, ge=0, description="epochs the server trains the initial model on its held-back set "
                                "before round 1, whatever the method (None: the method's default, "
                                "method.pruning.warmup_epochs for the FedTiny family, else 0); set "
                                "it on every run of a comparison so all start alike")
    train: float = Field(0.6, gt=0.0, lt=1.0, description="share of a client's data it trains on")
    val: float = Field(0.2, ge=0.0, lt=1.0, description="share it validates on (what tuning reads)")
    test: float = Field(0.2, gt=0.0, lt=1.0, description="share it is scored on")

    @model_validator(mode="after")
    def _fractions_sum(self) -> PartitionConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1 (got {total:g})")
        return self


class ModelConfig(_Strict):
    name: ModelName = Field("mlp", description="sized from the data's input shape and classes")
    hidden: list[int] = Field(default_factory=lambda: [200], description="mlp: hidden layer widths")


class MethodConfig(BaseModel):
    """``name`` picks the method (``fedsparse methods`` lists them; plug-ins by entry point,
    ``module:Class`` or ``path/to/file.py:Class``); every other key is a method's options
    section (``method.pfedgate``, ``method.pruning``...), validated by that method's own options
    model. Sections of other methods may stay, so one config switches methods by ``--method``."""

    model_config = ConfigDict(extra="allow")

    name: str = "dense"

    @model_validator(mode="after")
    def _options(self) -> MethodConfig:
        from fedsparse.clients.registry import canonical, resolve, sections

        self.name = canonical(self.name)
        location, sep, attr = self.name.rpartition(":")
        if sep and location.endswith(".py"):  # workers in other folders must find the file too
            self.name = f"{Path(location).expanduser().resolve()}:{attr}"
        method = resolve(self.name)  # a ConfigError, not a ValueError: it surfaces as is
        known = {**sections(), method.section(): method}
        extras = self.model_extra if self.model_extra is not None else {}
        for key in list(extras):
            if key not in known:
                raise ValueError(f"unknown options section 'method.{key}': sections are "
                                 f"{', '.join(sorted(known))}")
            extras[key] = _validated_options(known[key], key, extras[key])
        if method.section() not in extras:
            extras[method.section()] = _validated_options(method, method.section(), {})
        return self

    def options_of(self, section: str) -> dict[str, Any]:
        """The validated options of a section (with every default filled in)."""
        extras = self.model_extra or {}
        return dict(extras.get(section, {}))


def _validated_options(method: Any, section: str, value: Any) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ValueError(f"method.{section} must be a mapping of options, not {type(value).__name__}")
    try:
        return method.Options.model_validate(value).model_dump(mode="json")
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"unknown key 'method.{section}.{loc}' of method '{method.name}': "
                              "remove it or check its spelling") from None
        if not loc:  # a rule across options
            message = first["msg"].removeprefix("Value error, ")
            raise ConfigError(f"method.{section}: {message}") from None
        raise ConfigError(f"'method.{section}.{loc}' {first['msg'].lower()} "
                          f"(got {first.get('input')!r}): fix this value") from None


class BudgetsConfig(_Strict):
    """Declared client budgets: tiers with population shares, or one row per client from a file."""

    tiers: list[BudgetTier] = Field(default_factory=lambda: [BudgetTier()],
                                    description="{density, share, train_flops, memory_bytes, "
                                                "upload_bytes, device} per tier")
    file: Path | None = Field(None, description="one budget per client (CSV or JSON); "
                                                "replaces tiers")

    @model_validator(mode="after")
    def _shares_sum(self) -> BudgetsConfig:
        total = sum(t.share for t in self.tiers)
        if self.file is None and abs(total - 1.0) > 1e-6:
            raise ValueError(f"tier shares must sum to 1 (got {total:g})")
        return self


class ClockConfig(_Strict):
    """The simulated device clock; on when any client has a device (tier ``device`` or
    ``default_device``)."""

    default_device: str | None = Field(None, description="profile of clients that name none")
    profiles: dict[str, DeviceProfile] = Field(default_factory=dict,
                                               description="custom profiles (override built-ins)")
    deadline: float | None = Field(None, gt=0.0, description="round deadline, simulated seconds")
    over_select: float = Field(1.0, ge=1.0, description="sample this many times the clients needed")
    availability: bool = Field(True, description="offline clients (by profile) are not sampled")
    target_fraction: float = Field(0.9, gt=0.0, le=1.0,
                                   description="time-to-accuracy target: this share of the final "
                                               "mean accuracy")
    target_accuracy: float | None = Field(None, gt=0.0, le=1.0,
                                          description="an absolute target instead")


class StrategyConfig(_Strict):
    name: str = Field("fedavg", description="a name from 'fedsparse strategies', module:Class "
                                             "or file.py:Class")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="keyword arguments of the strategy's constructor")
    max_update_norm: float | None = Field(
        None, gt=0.0, description="L2 bound on each client's change to the model; larger updates "
                                  "are scaled down to it before any strategy sees them (None: off)")


class EvalConfig(_Strict):
    """Every ``every`` rounds a seeded ``fraction`` of the clients evaluates (a curve for the
    price of a training round); the final round evaluates every client (the reported figures)."""

    every: int = Field(2, ge=1, description="evaluate every this many rounds")
    fraction: float = Field(0.2, gt=0.0, le=1.0,
                            description="share of clients evaluated between the first and the "
                                        "final round (1.0: all)")
    final: bool = Field(True, description="evaluate every client after the last round")
    #: the server scores the global model (on the evaluated clients' pooled tests; all at the end)
    global_model: bool = Field(True, description="the server scores the global model too")
    batch_size: int = Field(512, ge=1, description="evaluation batch size")


#: a local simulation starts at most this many Flower nodes, each serving virtual clients:
#: Flower's in-memory runtime scans every node's queue against every pending message ten times
#: a second (O(nodes x messages) per poll)
MAX_LOCAL_NODES = 100


class SimulationConfig(_Strict):
    cpus_per_client: float = Field(1.0, gt=0.0, description="CPUs each simulated client holds "
                                                              "(Flower's client resources)")
    gpus_per_client: float = Field(
        0.0, ge=0.0, description="GPUs each simulated client holds (fractional: several clients "
                                 "share one, as Flower's client resources); > 0 trains on CUDA")
    round_timeout: float = Field(600.0, gt=0.0, description="seconds to wait for replies at most")
    straggler_slack: float | None = Field(
        3.0, ge=1.0, description="once half a round's clients answered, give up a client after "
                                 "this many times the slowest answer so far (None: wait the "
                                 "round_timeout)")
    straggler_floor: float = Field(10.0, gt=0.0, description="seconds a client is always waited "
                                                             "for before being given up as a "
                                                             "straggler")
    startup_grace: float = Field(60.0, ge=0.0,
                                 description="seconds added to round_timeout for the run's first "
                                             "exchange with the clients (round 1, or the first "
                                             "round after a resume, or a method's queries before "
                                             "it), whose replies wait for the workers to start")
    node_wait_timeout: float = Field(120.0, gt=0.0,
                                     description="seconds to wait for every node to register")
    min_clients: int = Field(1, ge=1, description="fewest accepted updates a round aggregates")
    checkpoint_every: int = Field(5, ge=1, description="write checkpoint.npz every k rounds "
                                                       "(and after the last)")
    inject_failures: float = Field(0.0, ge=0.0, le=1.0,
                                   description="share of training clients made to fail")
    failure_kinds: list[Literal["crash", "hang", "liar", "byzantine"]] = Field(
        default_factory=lambda: ["crash", "hang"],
        description="what an injected failure does; liar and byzantine attack the server")
    hang_seconds: float | None = Field(None, gt=0.0,
                                       description="how long a hanging client sleeps "
                                                   "(default: round_timeout + startup_grace + "
                                                   "5, longer than any round waits)")
    nodes: int | None = Field(
        None, ge=1, description="Flower nodes a local simulation starts, each serving the virtual "
                                "clients its messages name (default: as many as the clients, at "
                                f"most {MAX_LOCAL_NODES}); a Ray cluster has one per client")
    ray_address: str | None = Field(
        None, description="run on an existing Ray cluster (host:port of its head) instead of "
                          "starting Ray on this machine")
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs a local simulation's Ray uses (default: every CPU of this "
                                "machine); `fedsparse bench --parallel N` gives each run its share")
    verbose: bool = Field(False, description="show Flower's and Ray's logs")


class OutputConfig(_Strict):
    dir: Path = Field(Path("runs"), description="parent folder of run folders")
    name: str | None = Field(None, description="run-folder prefix; default: method-dataset")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str | None) -> str | None:
        """The run folder stays inside ``dir``: a name is one plain path component."""
        if name is not None and (not name.strip() or "/" in name or "\\" in name
                                 or name.startswith(".") or "\0" in name):
            raise ValueError("must be a plain folder name (no '/', no leading '.'): give --name "
                             "without a path and the folder with --out")
        return name


class ExperimentConfig(_Strict):
    seed: int = Field(0, ge=0, lt=2**32, description="one seed fixes data, budgets, sampling, init")
    num_clients: int = Field(100, ge=1, description="clients in the federation")
    rounds: int = Field(20, ge=1, description="federated rounds")
    fraction: float = Field(0.1, gt=0.0, le=1.0, description="share of clients sampled per round")
    data: DataConfig = DataConfig()
    partition: PartitionConfig = PartitionConfig()
    model: ModelConfig = ModelConfig()
    method: MethodConfig = Field(default_factory=MethodConfig,
                                 description="name, and each method's options section below")
    budgets: BudgetsConfig = BudgetsConfig()
    strategy: StrategyConfig = StrategyConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    simulation: SimulationConfig = SimulationConfig()
    clock: ClockConfig = ClockConfig()
    output: OutputConfig = OutputConfig()
    #: what validation changed in the user's words (a strategy mapped to its mask-aware twin)
    _notes: list[str] = PrivateAttr(default_factory=list)

    @property
    def notes(self) -> list[str]:
        return self._notes

    @model_validator(mode="after")
    def _strategy_for_method(self) -> ExperimentConfig:
        """No strategy named: the method's authors' aggregation (``Method.default_strategy``),
        else FedAvg. Flower's names in any case; for a method with sparse updates, a dense
        strategy that has a mask-aware counterpart means that counterpart (said when named)."""
        from fedsparse.clients.registry import resolve
        from fedsparse.strategies.registry import canonical

        method = resolve(self.method.name)
        named = "name" in self.strategy.model_fields_set
        if not named and method.default_strategy:
            self.strategy.name, options = method.default_strategy
            self.strategy.options = {**options, **self.strategy.options}
        name, note = canonical(self.strategy.name, method.sparse_updates)
        if name != self.strategy.name:
            self.strategy.name = name
        if note and named:
            self._notes.append(note)
        return self

    @model_validator(mode="after")
    def _feasible(self) -> ExperimentConfig:
        if self.simulation.min_clients > self.clients_per_round:
            raise ValueError(f"simulation.min_clients={self.simulation.min_clients} exceeds the "
                             f"{self.clients_per_round} clients sampled per round: lower it or "
                             "raise --fraction")
        if self.simulation.ray_address and self.flower_nodes < self.num_clients:
            raise ValueError(f"simulation.nodes={self.simulation.nodes} is fewer than the "
                             f"{self.num_clients} clients, but virtual clients keep their state on "
                             "this machine's disk, which a Ray cluster's other machines cannot "
                             "read: drop simulation.nodes or run without --ray-address")
        return self

    @property
    def eval_clients(self) -> int | None:
        """Clients evaluated at an intermediate evaluation round (None: all of them)."""
        if self.eval.fraction >= 1.0:
            return None
        return max(1, round(self.eval.fraction * self.num_clients))

    @property
    def flower_nodes(self) -> int:
        """Flower nodes serving the clients."""
        nodes = self.simulation.nodes
        if nodes is None:
            on_cluster = self.simulation.ray_address is not None
            nodes = self.num_clients if on_cluster else min(self.num_clients, MAX_LOCAL_NODES)
        return min(nodes, self.num_clients)

    @property
    def clients_per_round(self) -> int:
        """Clients sampled per training round (at least one)."""
        return max(1, round(self.fraction * self.num_clients))


def default_config_text() -> str:
    """The packaged ``configs/quickstart.yaml``."""
    return resources.files("fedsparse.configs").joinpath("quickstart.yaml").read_text()


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} not found: pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not text (not UTF-8): pass a YAML file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: fix its syntax") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree['a']['b'] = value`` for ``dotted='a.b'``, creating mappings on the way."""
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"--set key '{dotted}' is malformed: use dotted names like train.lr=0.1")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set key '{dotted}': '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse ``key.path=value``; the value is read as YAML so numbers and lists work."""
    if "=" not in text:
        raise ConfigError(f"--set '{text}' lacks '=': use --set key.path=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set '{text}': value is not valid YAML") from exc
    return key.strip(), value


def _format_validation_error(exc: ValidationError, source: str) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{loc}': remove it or check its spelling"
    given = first.get("input")
    given_text = "" if isinstance(given, dict) else f" (got {given!r})"
    more = f" [+{len(exc.errors()) - 1} more]" if len(exc.errors()) > 1 else ""
    return f"{source}: '{loc}' {first['msg'].lower()}{given_text}: fix this value{more}"


def validate_tree(tree: dict[str, Any], source: str) -> ExperimentConfig:
    """Validate a raw mapping, turning pydantic's report into a one-line ConfigError."""
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from exc


def load_config(
    path: Path | None = None,
    assignments: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> ExperimentConfig:
    """Build the experiment config from a file (default: quickstart), ``--set`` and flags.

    ``overrides`` maps dotted keys to values for the dedicated CLI flags; ``None`` values are
    ignored so unset flags do not clobber the file.
    """
    if path is None:
        tree = yaml.safe_load(default_config_text()) or {}
        source = "configs/quickstart.yaml"
    else:
        tree = read_yaml(path)
        source = str(path)
    for text in assignments or []:
        set_path(tree, *parse_assignment(text))
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_path(tree, dotted, value)
    if assignments or any(v is not None for v in (overrides or {}).values()):
        source = f"{source} with overrides"
    note = None
    if path is None and not _budgets_given(assignments, overrides):
        note = _full_model_budgets(tree)
    config = validate_tree(tree, source)
    if note:
        config.notes.append(note)
    return config


def _budgets_given(assignments: list[str] | None, overrides: dict[str, Any] | None) -> bool:
    """Whether the user named budgets (``--budgets`` or ``--set budgets...``)."""
    if (overrides or {}).get("budgets.tiers") is not None:
        return True
    return any(text.strip().startswith("budgets") for text in assignments or [])


def _full_model_budgets(tree: dict[str, Any]) -> str | None:
    """A method that trains the whole model on the default config: drop the default's sparse
    budget tiers (every client at density 1) and return the note saying so."""
    from fedsparse.clients.registry import resolve

    method = tree.get("method", {}).get("name") if isinstance(tree.get("method"), dict) else None
    tiers = (tree.get("budgets") or {}).get("tiers") if isinstance(tree.get("budgets"), dict) else None
    if not isinstance(method, str) or not isinstance(tiers, list):
        return None
    try:
        if not resolve(method).full_model_only:
            return None
    except FedsparseError:
        return None  # validation reports the unknown method
    densities = sorted({float(t.get("density", 1.0)) for t in tiers if isinstance(t, dict)})
    if all(d >= 1.0 for d in densities):
        return None
    tree["budgets"] = {"tiers": [{"density": 1.0, "share": 1.0}]}
    shown = ", ".join(f"{d:g}" for d in densities)
    return (f"method '{method}' trains the whole model: the default config's budget tiers "
            f"(densities {shown}) are not applied, every client declares density 1")


def dump_config(config: ExperimentConfig) -> str:
    """Resolved config as YAML (paths as strings), loadable again by ``load_config``."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
