"""Checkpoints of a run, written atomically, so a killed run can resume where it stopped.

A checkpoint holds the round it closes, the global arrays, the server loop's accumulated outcome,
the strategy's own state (e.g. server-optimizer moments) and the method's server-side state
(e.g. a shared mask). Randomness needs no saving: every generator is derived from (seed, round,
client). Client-private state (e.g. pFedGate's gates) is kept by the clients themselves under
``client_state/``, tagged by round.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsparse.errors import FedsparseError

CHECKPOINT_FILE = "checkpoint.npz"
CLIENT_STATE_DIR = "client_state"
_META_KEY = "__server_state__"


@dataclass
class Checkpoint:
    server_round: int
    arrays: dict[str, np.ndarray]
    outcome: Any
    strategy_state: dict[str, Any]
    #: the method's server-side state (e.g. a shared mask and its adjustment counter)
    method_state: dict[str, Any] = field(default_factory=dict)
    #: the experiment-defining part of the config the rounds were run with (a resume must match)
    experiment: dict[str, Any] = field(default_factory=dict)
    #: hashes of the data, partitions and budget file the rounds were run with (ditto)
    inputs: dict[str, str] = field(default_factory=dict)


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint.npz`` through a temporary file and an atomic rename."""
    meta = pickle.dumps({"round": checkpoint.server_round, "outcome": checkpoint.outcome,
                         "strategy": checkpoint.strategy_state, "method": checkpoint.method_state,
                         "experiment": checkpoint.experiment, "inputs": checkpoint.inputs})
    buffer = io.BytesIO()
    np.savez(buffer, **{f"a/{k}": v for k, v in checkpoint.arrays.items()},
             **{_META_KEY: np.frombuffer(meta, dtype=np.uint8)})
    tmp = run_dir / f".{CHECKPOINT_FILE}.tmp"
    with tmp.open("wb") as handle:
        handle.write(buffer.getvalue())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, run_dir / CHECKPOINT_FILE)


def load_checkpoint(run_dir: Path) -> Checkpoint:
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise FedsparseError(f"{run_dir} has no {CHECKPOINT_FILE}: it stopped before its first "
                             "checkpoint; start it again instead of --resume")
    try:
        with np.load(path) as data:
            meta = pickle.loads(data[_META_KEY].tobytes())
            arrays = {k[2:]: data[k] for k in data.files if k.startswith("a/")}
        checkpoint = Checkpoint(meta["round"], arrays, meta["outcome"], meta["strategy"],
                                meta.get("method", {}), meta.get("experiment", {}),
                                meta.get("inputs", {}))
    except Exception as exc:
        raise FedsparseError(f"{path} is unreadable ({type(exc).__name__}: {exc}): start the run "
                             "again") from None
    if not isinstance(checkpoint.server_round, int) or not all(
            isinstance(getattr(checkpoint, name), dict)
            for name in ("strategy_state", "method_state", "experiment", "inputs")):
        raise FedsparseError(f"{path} has malformed metadata (round {checkpoint.server_round!r}): "
                             "start the run again")
    return checkpoint


def first_difference(saved: Any, current: Any, path: str = "") -> str | None:
    """The dotted key where two config trees first differ (None when equal)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in saved or key not in current:
                return where
            found = first_difference(saved[key], current[key], where)
            if found:
                return found
        return None
    return None if saved == current else (path or "(top level)")


def save_client_state(run_dir: Path, partition_id: int, server_round: int, state: Any,
                      keep_from: int) -> None:
    """Store a client's private state after ``server_round``; prune copies older than needed.

    ``keep_from``: the latest checkpointed round; the newest copy at or before it must survive,
    since a resume from that checkpoint restores it.
    """
    folder = run_dir / CLIENT_STATE_DIR / str(partition_id)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".r{server_round}.tmp"
    tmp.write_bytes(pickle.dumps(state))
    os.replace(tmp, folder / f"r{server_round}.pkl")
    rounds = sorted(int(p.stem[1:]) for p in folder.glob("r*.pkl"))
    anchor = max((r for r in rounds if r <= keep_from), default=None)
    for r in rounds:
        if r not in (server_round, anchor):
            (folder / f"r{r}.pkl").unlink(missing_ok=True)


def load_client_state(run_dir: Path, partition_id: int, up_to_round: int) -> Any | None:
    """The client's newest stored state from a round <= ``up_to_round``, if any."""
    folder = run_dir / CLIENT_STATE_DIR / str(partition_id)
    rounds = [int(p.stem[1:]) for p in folder.glob("r*.pkl")] if folder.is_dir() else []
    usable = [r for r in rounds if r <= up_to_round]
    if not usable:
        return None
    return pickle.loads((folder / f"r{max(usable)}.pkl").read_bytes())


def drop_client_states_after(run_dir: Path, server_round: int) -> None:
    """Delete stored client states of rounds after ``server_round`` (a resume redoes them)."""
    root = run_dir / CLIENT_STATE_DIR
    if not root.is_dir():
        return
    for path in root.glob("*/r*.pkl"):
        if int(path.stem[1:]) > server_round:
            path.unlink(missing_ok=True)
