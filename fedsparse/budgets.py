"""Declared client budgets: parsing, per-client files and seeded assignment to clients."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedsparse.errors import ConfigError
from fedsparse.seeding import rng

BUDGET_FIELDS = ("density", "train_flops", "memory_bytes", "upload_bytes")


class BudgetTier(BaseModel):
    """A share of the population declaring the same budget (``None``: no limit on that cost)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    density: float = Field(1.0, gt=0.0, le=1.0, description="fraction of parameters held and trained")
    share: float = Field(1.0, gt=0.0, le=1.0, description="fraction of clients in this tier")
    train_flops: float | None = Field(None, gt=0.0, description="training FLOPs per round")
    memory_bytes: float | None = Field(None, gt=0.0, description="peak training memory")
    upload_bytes: float | None = Field(None, gt=0.0, description="bytes uploaded per round")
    device: str | None = Field(None, description="device profile for the simulated clock")


@dataclass(frozen=True)
class Budget:
    """What one client may spend per round; ``None`` means no limit on that cost."""

    density: float = 1.0
    train_flops: float | None = None
    memory_bytes: float | None = None
    upload_bytes: float | None = None
    tier: int = 0
    #: device profile name for the simulated clock (None: ``clock.default_device``)
    device: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def budget_tiers(budgets: list[Budget]) -> list[dict[str, Any]]:
    """The budgets a run used, grouped: one entry per distinct declaration with its share and
    count of clients (what the clients declared, not what a config hoped for)."""
    groups: dict[tuple, int] = {}
    for b in budgets:
        key = (b.density, b.train_flops, b.memory_bytes, b.upload_bytes, b.device)
        groups[key] = groups.get(key, 0) + 1
    return [{"density": d, "share": n / len(budgets), "clients": n, "train_flops": f,
             "memory_bytes": m, "upload_bytes": u, "device": dev}
            for (d, f, m, u, dev), n in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0])))]


def over_budget(budget: Budget, spent: dict[str, float]) -> str | None:
    """The first declared limit ``spent`` exceeds (density, train_flops, memory_bytes,
    upload_bytes), as a sentence; None when every limit holds."""
    for name in BUDGET_FIELDS:
        limit = getattr(budget, name)
        value = spent[name]
        if limit is not None and value > limit * (1 + 1e-9):
            return f"{name} {value:.6g} exceeds its declared {limit:.6g}"
    return None


def parse_budget_shorthand(text: str) -> list[BudgetTier]:
    """``0.1:0.5,0.3:0.3,1.0:0.2`` -> tiers of (density, share); an optional third field names
    the tier's device profile (``0.1:0.5:low-end-phone``)."""
    tiers = []
    for item in text.split(","):
        parts = item.strip().split(":")
        try:
            if len(parts) not in (2, 3):
                raise ValueError
            density, share = float(parts[0]), float(parts[1])
        except ValueError:
            raise ConfigError(f"--budgets item '{item}' is not density:share[:device]: write e.g. "
                              "--budgets 0.1:0.5,1.0:0.5") from None
        tier: dict[str, Any] = {"density": density, "share": share}
        if len(parts) == 3:
            tier["device"] = parts[2]
        tiers.append(tier)
    try:
        parsed = [BudgetTier.model_validate(t) for t in tiers]
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise ConfigError(f"--budgets {text}: {reason}: densities in (0, 1], shares summing to 1") \
            from None
    total = sum(t.share for t in parsed)
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"--budgets {text}: tier shares must sum to 1 (got {total:g}): densities "
                          "in (0, 1], shares summing to 1")
    return parsed


def tier_counts(shares: list[float], n: int) -> list[int]:
    """Clients per tier by largest remainder, so counts sum to ``n`` and match shares best."""
    raw = [s * n for s in shares]
    counts = [math.floor(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def assign_budgets(tiers: Sequence[BudgetTier], num_clients: int, seed: int,
                   file: Path | None = None) -> list[Budget]:
    """One budget per client: from ``file`` if given, else ``tiers`` shuffled by the seed."""
    if file is not None:
        return load_budget_file(Path(file), num_clients)
    counts = tier_counts([t.share for t in tiers], num_clients)
    tier_of = np.repeat(np.arange(len(tiers)), counts)
    tier_of = tier_of[rng(seed, "budgets").permutation(num_clients)]
    return [_from_tier(tiers[t], int(t)) for t in tier_of]


def _from_tier(tier: BudgetTier, index: int) -> Budget:
    return Budget(density=tier.density, train_flops=tier.train_flops,
                  memory_bytes=tier.memory_bytes, upload_bytes=tier.upload_bytes, tier=index,
                  device=tier.device)


def load_budget_file(path: Path, num_clients: int) -> list[Budget]:
    """Per-client budgets from CSV (header ``client,density,...``) or JSON (list of objects)."""
    if not path.is_file():
        raise ConfigError(f"budget file {path} not found: pass an existing CSV or JSON file")
    try:
        if path.suffix.lower() == ".json":
            rows = json.loads(path.read_text())
            if isinstance(rows, dict):
                rows = [{"client": k, **v} for k, v in rows.items()]
        else:
            with path.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
    except (json.JSONDecodeError, csv.Error, TypeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"budget file {path} is malformed ({exc}): fix its syntax") from exc
    if not isinstance(rows, list):
        raise ConfigError(f"budget file {path} must hold a list of rows (or a mapping client -> "
                          "budget): fix its structure")
    budgets: dict[int, Budget] = {}
    for line, row in enumerate(rows, start=1):
        client, budget = _parse_row(row, path, line)
        if client in budgets:
            raise ConfigError(f"budget file {path} row {line} declares client {client} again: give "
                              "each client one row")
        if not 0 <= client < num_clients:
            raise ConfigError(f"budget file {path} row {line} names client {client}, but the run has "
                              f"clients 0..{num_clients - 1}: fix the row or --clients")
        budgets[client] = budget
    missing = sorted(set(range(num_clients)) - set(budgets))
    if missing:
        raise ConfigError(f"budget file {path} has no row for client {missing[0]} "
                          f"({len(missing)} missing): give one row per client 0..{num_clients - 1}")
    return [budgets[c] for c in range(num_clients)]


def _parse_row(row: Any, path: Path, line: int) -> tuple[int, Budget]:
    if not isinstance(row, dict) or "client" not in row or "density" not in row:
        raise ConfigError(f"budget file {path} row {line} lacks 'client' or 'density': "
                          "columns are client,density[,train_flops,memory_bytes,upload_bytes,device]")
    unknown = set(row) - {"client", "tier", "device", *BUDGET_FIELDS}
    if unknown:
        raise ConfigError(f"budget file {path} row {line} has unknown column {sorted(unknown)[0]!r}: "
                          f"use client and {', '.join(BUDGET_FIELDS)}")
    try:
        client = int(row["client"])
        values = {k: (None if row.get(k) in (None, "") else float(row[k])) for k in BUDGET_FIELDS}
        tier = BudgetTier(density=values["density"], train_flops=values["train_flops"],
                          memory_bytes=values["memory_bytes"], upload_bytes=values["upload_bytes"],
                          device=str(row["device"]) if row.get("device") not in (None, "") else None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"budget file {path} row {line} has a bad value: densities in (0, 1], "
                          "limits positive numbers") from exc
    return client, _from_tier(tier, int(row.get("tier") or 0))


#: the node-config key (and reply metric) naming the partition a node serves
PARTITION_KEY = "partition-id"
#: the ConfigRecord in a node's handshake reply that carries the budget it declares
DECLARED_BUDGET = "declared-budget"
#: node-config keys a SuperNode declares its budget with -> Budget fields
NODE_BUDGET_KEYS = {"budget-density": "density", "budget-train-flops": "train_flops",
                    "budget-memory-bytes": "memory_bytes", "budget-upload-bytes": "upload_bytes",
                    "device": "device"}


def declared_budget_fields(node_config: dict[str, Any]) -> dict[str, Any]:
    """The budget keys a node's ``--node-config`` sets (empty: it declares nothing)."""
    return {field: node_config[key] for key, field in NODE_BUDGET_KEYS.items() if key in node_config}


def parse_declared_budget(fields: dict[str, Any], partition_id: int) -> Budget:
    """Validate a node's declared budget; a bad one is a one-line ``ConfigError``."""
    try:
        tier = BudgetTier.model_validate({"share": 1.0, **fields})
    except ValidationError as exc:
        error = exc.errors()[0]
        reason = f"{'.'.join(str(x) for x in error['loc'])}: {error['msg']}"
        raise ConfigError(f"node serving partition {partition_id} declares a bad budget {fields}: "
                          f"{reason}: fix its --node-config") from None
    return _from_tier(tier, 0)
