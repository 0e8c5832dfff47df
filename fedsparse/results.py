"""The run folder: resolved config, per-round metrics, per-client metrics and ``summary.json``.

Every write is durable as soon as it happens (metrics are appended and flushed per round;
whole files are written to a temporary name and renamed), so an interrupted run keeps what it
already computed.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from fedsparse.config import ExperimentConfig, dump_config
from fedsparse.errors import ConfigError, FedsparseError

CONFIG_FILE = "config.yaml"
ROUNDS_FILE = "metrics.jsonl"
CLIENTS_FILE = "clients.csv"
SUMMARY_FILE = "summary.json"
PARTITIONS_FILE = "partitions.npz"
#: the run's data pool as memory-mapped .npy files, for the simulation's workers (removed at the end)
POOL_DIR = "pool"
LAYERS_FILE = "layers.json"


def check_output_dir(folder: Path) -> None:
    """Refuse, before anything runs, an output folder that cannot hold run folders."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file, not a folder: name a folder for run folders")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {folder} cannot be created ({exc.strerror or exc}): name a folder "
                          "you can write to") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {folder} is not writable: name a folder you can write to")


def run_name(config: ExperimentConfig) -> str:
    """``output.name``, or what the run is: ``<method>-<dataset>`` (a plug-in by its class name),
    so folders built from flags say what they hold."""
    if config.output.name:
        return config.output.name
    method = config.method.name.rpartition(":")[2] or config.method.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{method}-{config.data.dataset}").lower()


def new_run_dir(config: ExperimentConfig, now: datetime | None = None) -> Path:
    """``<output.dir>/<name>-<timestamp>``, made unique if two runs start in the same second."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    base = Path(config.output.dir) / f"{run_name(config)}-{stamp}"
    candidate, n = base, 1
    while candidate.exists():
        candidate = base.with_name(f"{base.name}-{n}")
        n += 1
    candidate.mkdir(parents=True)
    return candidate.resolve()


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def bottom_decile(values: Sequence[float]) -> float:
    """The floor(n/10)-th worst value (the worst one when n < 10)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(len(ordered) // 10, 1) - 1]


class RunRecorder:
    """Writes one run's results as they arrive."""

    def __init__(self, run_dir: Path, config: ExperimentConfig) -> None:
        self.run_dir = run_dir
        self.config = config
        write_atomic(run_dir / CONFIG_FILE, dump_config(config))

    def log_round(self, record: dict[str, Any]) -> None:
        with (self.run_dir / ROUNDS_FILE).open("a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def truncate_rounds(self, last_round: int) -> None:
        """Drop records of rounds after ``last_round`` (finished after the checkpoint resumed)."""
        kept = [r for r in read_rounds(self.run_dir) if r["round"] <= last_round]
        write_atomic(self.run_dir / ROUNDS_FILE,
                     "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    def write_clients(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        fields = list(dict.fromkeys(key for row in rows for key in row))  # some rows lack some keys
        tmp = self.run_dir / f".{CLIENTS_FILE}.tmp"
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.run_dir / CLIENTS_FILE)

    def write_layers(self, layers: dict[str, dict[str, float]]) -> None:
        write_atomic(self.run_dir / LAYERS_FILE, json.dumps(layers, indent=1))

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_atomic(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=False))


def read_rounds(run_dir: Path, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Every finished round's record. A run killed while writing leaves a partial last line:
    it is left out (and said in ``notes``), the finished rounds still count. A damaged line
    elsewhere is a one-line error naming it."""
    path = run_dir / ROUNDS_FILE
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").splitlines()
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("round"), int):
                raise ValueError("not a round record")
        except ValueError as exc:
            if number == len(lines):
                if notes is not None:
                    notes.append(f"{path} line {number} is incomplete (the run stopped while "
                                 f"writing it): left out, {len(records)} finished rounds read")
                break
            raise FedsparseError(f"{path} line {number} is not a round record ({exc}): the run "
                                 "folder is damaged; remove that line or run again") from None
        records.append(record)
    return records
