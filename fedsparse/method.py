"""The method interface: what a client trains under its budget and what the server does for it.

A method is one ``Method`` subclass in one package under ``clients/`` (or in a plug-in). The
Flower layer calls it; the method itself never sees Flower, the config module or a message:

- client side: ``fit`` trains the received model on local data and says which coordinates to
  upload, ``evaluate`` scores the model the client would deploy, ``answer`` serves a method's own
  query rounds (e.g. FedTiny's adaptive BN selection). Private state (e.g. a pFedGate gate) lives
  in ``ClientTask.state``, which persists per client across rounds and is never uploaded;
- server side: ``setup`` from the model, the budgets and the server's data set; ``start`` before
  round 1 (may ask clients); per round, ``begin_round``, ``client_masks`` and ``client_records``
  (what each sampled client is sent), ``check_reply`` (a reply's extra records), ``round_cost``
  (costs beyond masked training), ``after_aggregate``; then ``summary`` and checkpoint state.

Every hook but ``fit`` has a default, so a simple method is one short class (see
``clients/dense`` and ``examples/custom_method``). Extra data travels as ``Records``: named
groups of numpy arrays, which the Flower layer turns into ``ArrayRecord``s and back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from fedsparse.budgets import Budget
from fedsparse.costs import CostModel, TrainingCost
from fedsparse.masks import Masks
from fedsparse.training import TrainSettings, evaluate
from fedsparse.updates import SparseUpdate, UpdateRejected, coordinates_outside


class Scored(Protocol):
    """What scoring one split yields (``fedsparse.training.EvalResult`` has these)."""

    accuracy: float
    loss: float
    num_examples: int


def split_scores(score: Callable[[torch.Tensor, torch.Tensor], Scored], data: LocalData
                 ) -> dict[str, float]:
    """Evaluation metrics of one deployed model: ``accuracy``, ``loss`` and ``num-examples`` on
    the test split, and the same prefixed ``val-`` on the validation split (when it has
    samples). Hyper-parameters are selected on ``val-accuracy``; test is only reported."""
    test = score(data.x_test, data.y_test)
    metrics = {"accuracy": test.accuracy, "loss": test.loss, "num-examples": float(test.num_examples)}
    if len(data.y_val):
        val = score(data.x_val, data.y_val)
        metrics.update({"val-accuracy": val.accuracy, "val-loss": val.loss,
                        "val-num-examples": float(val.num_examples)})
    return metrics


#: extra data beside the model: record name -> array name -> array
Records = dict[str, dict[str, np.ndarray]]
#: a client's private state, kept across rounds: record name -> array name -> array
ClientState = MutableMapping[str, dict[str, np.ndarray]]


class NoOptions(BaseModel):
    """A method without options (unknown keys are still refused)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True,
                              allow_inf_nan=False)


class MethodOptions(BaseModel):
    """Base of a method's options: strict (a typo is an error), frozen, validated by the config."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True,
                              allow_inf_nan=False)


@dataclass(frozen=True)
class RunInfo:
    """What every method may know about the experiment."""

    seed: int
    num_clients: int
    rounds: int
    train: TrainSettings
    eval_batch_size: int = 512


@dataclass(frozen=True)
class LocalData:
    """One client's tensors; ``val`` may be empty."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def to(self, device: torch.device) -> LocalData:
        """These tensors on ``device`` (the same object on their own device)."""
        if self.x_train.device == device:
            return self
        return LocalData(*(t.to(device) for t in (self.x_train, self.y_train, self.x_val,
                                                   self.y_val, self.x_test, self.y_test)))


@dataclass
class ClientTask:
    """One request to a client: the model it received and everything around it."""

    model: nn.Module
    #: masks of the parameters the client was not sent whole (None: it holds the whole model)
    masks: Masks | None
    data: LocalData
    generator: torch.Generator
    partition_id: int
    server_round: int
    budget_density: float
    #: the round's configuration from the server (``begin_round``'s entries, a strategy's
    #: entries such as FedProx's ``proximal-mu``, ``novel``)
    config: Mapping[str, Any]
    #: extra records the server sent this client (``client_records``, a query's payload)
    inbox: Records = field(default_factory=dict)
    #: private, persistent per client (a Flower node's ``Context.state``)
    state: ClientState = field(default_factory=dict)
    #: where ``model``, ``masks`` and ``data`` live (a CUDA device when the worker has one): a
    #: method creates its own tensors there (the generator stays on the CPU)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


@dataclass
class FitResult:
    """What local training returns: metrics, which coordinates to upload, extra records."""

    metrics: dict[str, float]
    #: coordinates to upload (None: every coordinate of every tensor)
    upload: Masks | None = None
    outbox: Records = field(default_factory=dict)


@dataclass(frozen=True)
class ServerSetup:
    """What the server side of a method is built from."""

    #: the initial global model (the seed's initialisation)
    model: nn.Module
    #: one declared budget per client, by partition id
    budgets: list[Budget]
    cost_model: CostModel
    #: the labelled set only the server holds, when ``uses_server_data`` asked for one
    server_data: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass(frozen=True)
class CostContext:
    """What the server knows about a client's round when it counts its cost."""

    partition_id: int
    server_round: int
    #: the partition's training samples, as the server knows them
    num_examples: int
    local_epochs: int
    batch_size: int
    momentum: bool


@dataclass(frozen=True)
class QueryReply:
    """A client's answer to a method's query round."""

    partition_id: int
    records: Records
    metrics: dict[str, float]


#: ask(action, model, payload records, config) -> the replies of the clients sampled for the
#: query, by partition id; each client receives ``model`` as ``task.model`` and the payload as
#: ``task.inbox``, and answers with ``Method.answer``
Ask = Callable[[str, Mapping[str, np.ndarray], Records, dict[str, Any]], list[QueryReply]]


class Method(ABC):
    """Base of every method. Subclasses set ``name`` and implement ``fit``."""

    #: the name users write after ``--method``
    name: ClassVar[str]
    #: its options (the config section ``method.<options_key>``)
    Options: ClassVar[type[BaseModel]] = NoOptions
    #: config section of the options (default: ``name``); methods of one family may share one
    options_key: ClassVar[str | None] = None
    #: uploads may be sparse (then the strategy must be mask-aware)
    sparse_updates: ClassVar[bool] = False
    #: cost figures only the client can measure (the server cannot recount them); the summary
    #: labels them client-reported. Everything else is counted by the server from what it
    #: sent and received.
    client_reported: ClassVar[tuple[str, ...]] = ()
    #: every client trains the whole model (density 1): budget tiers that only the default
    #: config declared are then not applied (budgets the user gave are still checked)
    full_model_only: ClassVar[bool] = False
    #: the aggregation the method's authors run (strategy name, options), used when the config
    #: names no strategy; None: FedAvg (its mask-aware form for sparse updates)
    default_strategy: ClassVar[tuple[str, dict[str, Any]] | None] = None
    #: the reference a run of this method is read against, and its command (the results table's
    #: last line); None: the method is itself a reference
    compare_with: ClassVar[str | None] = ("FedAvg on the dense model: fedsparse simulate "
                                          "--method dense --strategy fedavg --budgets 1.0:1, "
                                          "the config otherwise the same")

    def __init__(self, options: BaseModel, run: RunInfo) -> None:
        self.options = options
        self.run = run

    @classmethod
    def section(cls) -> str:
        return cls.options_key or cls.name

    @classmethod
    def uses_server_data(cls, options: BaseModel) -> bool:
        """Whether the server needs a small labelled set held back from every client."""
        return False

    @classmethod
    def default_warmup_epochs(cls, options: BaseModel) -> int:
        """Epochs the server trains the initial model on its held-back set before round 1 when
        the config does not say (``partition.server_warmup_epochs``)."""
        return 0

    @classmethod
    def describe(cls) -> str:
        """One line for ``fedsparse methods``: the first line of the class docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    # --- server side --------------------------------------------------------------------------
    def setup(self, setup: ServerSetup) -> None:
        """Build server-side state; raise ``ValueError`` naming the fix for budgets it cannot serve."""
        return None

    def start(self, state: dict[str, np.ndarray], ask: Ask) -> dict[str, np.ndarray]:
        """Before round 1: return the global model to start from (may query clients)."""
        return state

    def novel_clients(self) -> frozenset[int]:
        """Novel clients: they never train the global model, they only evaluate (told by
        ``novel`` = 1 in their round config); pFedGate adapts its gate on them."""
        return frozenset()

    def begin_round(self, server_round: int) -> dict[str, Any]:
        """Plan a training round; the entries join every sampled client's round config."""
        return {}

    def client_masks(self, params: Mapping[str, torch.Tensor], budget: Budget) -> Masks | None:
        """The submodel a client with ``budget`` is sent (None: the whole model). Depends only on
        the global parameters and the budget, so equal budgets share one call per round."""
        return None

    def client_records(self, budget: Budget) -> Records:
        """Extra records sent to a training client with ``budget`` this round."""
        return {}

    def evaluation_records(self, budget: Budget) -> Records:
        """Extra records sent to an evaluating client with ``budget`` (``task.inbox``)."""
        return {}

    def check_upload(self, budget: Budget, sent: Masks | None, update: SparseUpdate,
                     num_examples: int) -> None:
        """Refuse (``UpdateRejected``) coordinates the client may not update: by default any
        outside the submodel it was sent (``sent``: None when it was sent the whole model).
        ``num_examples``: the partition's training samples, as the server knows them."""
        if sent is None:
            return
        outside = coordinates_outside(update, sent)
        if outside:
            name, count = next(iter(outside.items()))
            raise UpdateRejected(f"{count} coordinates of '{name}' lie outside the submodel the "
                                 f"client was sent ({sum(outside.values())} in all)")

    def check_reply(self, partition_id: int, budget: Budget, records: Records,
                    metrics: Mapping[str, float]) -> None:
        """Validate a reply's extra records (raise ``UpdateRejected``); keep what ``after_aggregate``
        needs. Called for every reply that passed the generic checks, before budget checks."""
        if records:
            raise UpdateRejected(f"unexpected records {sorted(records)} for method '{self.name}'")

    def round_cost(self, budget: Budget, computed: TrainingCost, density: float,
                   metrics: Mapping[str, float], context: CostContext | None = None
                   ) -> tuple[TrainingCost, float]:
        """(cost, density) of a client's round. ``computed`` is the server's count from the
        coordinates uploaded; a method adds what masked training does not show (``context``:
        the client, round and training protocol, when the method must recount)."""
        return computed, density

    def after_aggregate(self, arrays: dict[str, np.ndarray],
                        accepted: list[int]) -> dict[str, np.ndarray]:
        """Adjust the aggregated model (``accepted``: partition ids aggregated this round)."""
        return arrays

    def summary(self) -> dict[str, Any]:
        """The method's part of ``summary.json`` (top-level keys)."""
        return {}

    def server_scores(self, model: nn.Module, data: LocalData, budget: Budget) -> dict[str, float]:
        """Scores the server computes itself from the final global ``model`` on one client's
        data (a simulation holds every client's splits), beside what the client reports: e.g.
        every width the client could hold, so a tier's figure is not only which clients landed
        in it. Keys become per-client columns and are averaged in ``summary.json``'s
        ``server_scores``; ``{}`` (the default): none."""
        return {}

    def evaluation_protocol(self) -> str:
        """What each client scores at evaluation (``summary.json`` says it: a personalised
        method must be compared with personalised baselines)."""
        return "the global model as received"

    def state_dict(self) -> dict[str, Any]:
        """Server-side state a checkpoint keeps (picklable)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        return None

    # --- client side --------------------------------------------------------------------------
    def train_settings(self, task: ClientTask) -> TrainSettings:
        """The training settings of ``task``'s round: the config's, with the lr schedule applied."""
        return self.run.train.at_round(task.server_round, self.run.rounds)

    @abstractmethod
    def fit(self, task: ClientTask) -> FitResult:
        """Train ``task.model`` in place on ``task.data``; metrics must hold ``train-loss``,
        ``num-examples`` and ``samples-seen``."""

    def evaluate(self, task: ClientTask) -> dict[str, float]:
        """Score the model this client would deploy on its own test and validation splits
        (``split_scores``: selection reads ``val-accuracy``, never ``accuracy``)."""
        model, size = task.model, self.run.eval_batch_size
        return split_scores(lambda x, y: evaluate(model, x, y, size), task.data)

    def evaluation_cost(self, budget: Budget, num_train: int, novel: bool) -> TrainingCost | None:
        """What a client's evaluation trains before it scores (fine-tuning, a gate fitted),
        counted by the server from the protocol and the partition's ``num_train`` samples, so
        that personalisation is charged like training (None: evaluation trains nothing)."""
        return None

    def answer(self, action: str, task: ClientTask) -> tuple[Records, dict[str, float]]:
        """Serve one of the method's query rounds (``start``'s ``ask``)."""
        raise NotImplementedError(f"method '{self.name}' has no query '{action}'")
