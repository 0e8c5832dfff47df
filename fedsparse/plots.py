"""Pictures of a run (PNG, matplotlib's headless Agg backend), drawn from the run folder's files.

Each function returns the number of data series it drew, so callers and tests can check what a
figure holds without parsing pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

PLOTS_DIR = "plots"


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _series(rounds: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["round"], r[key]) for r in rounds
              if r.get(key) is not None and not (isinstance(r[key], float) and math.isnan(r[key]))]
    return [p[0] for p in points], [p[1] for p in points]


def accuracy_curves(rounds: Sequence[dict[str, Any]], path: Path, title: str = "") -> int:
    """Left: mean and bottom-decile client accuracy (and the global model's) per evaluated
    round. Right: the clients' training loss per round and their test loss when evaluated."""
    fig, (ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    drawn = 0
    for key, label, style in (("accuracy_mean", "mean over clients", "-o"),
                              ("accuracy_bottom_decile", "bottom decile", "-s"),
                              ("accuracy_global", "global model, pooled test", "--^")):
        x, y = _series(rounds, key)
        if x:
            ax.plot(x, y, style, label=label, markersize=4)
            drawn += 1
    for key, label, style in (("train_loss", "training loss (sampled clients)", "-"),
                              ("loss_mean", "test loss (evaluated clients)", "-o")):
        x, y = _series(rounds, key)
        if x:
            loss_ax.plot(x, y, style, label=label, markersize=4)
            drawn += 1
    ax.set(xlabel="round", ylabel="accuracy", title=title or "accuracy per round", ylim=(0, 1))
    loss_ax.set(xlabel="round", ylabel="loss", title="loss per round")
    for axis in (ax, loss_ax):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    _save(fig, path)
    return drawn


def accuracy_vs_time(rounds: Sequence[dict[str, Any]], path: Path, title: str = "") -> int:
    """Mean and bottom-decile accuracy against cumulative simulated device time."""
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = 0
    for key, label, style in (("accuracy_mean", "mean over clients", "-o"),
                              ("accuracy_bottom_decile", "bottom decile", "-s")):
        points = [(r["sim_seconds"], r[key]) for r in rounds
                  if r.get("sim_seconds") is not None and r.get(key) is not None]
        if points:
            ax.plot([p[0] / 60 for p in points], [p[1] for p in points], style, label=label,
                    markersize=4)
            drawn += 1
    ax.set(xlabel="simulated device time (minutes)", ylabel="accuracy", ylim=(0, 1),
           title=title or "accuracy against simulated time")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend()
    _save(fig, path)
    return drawn


def accuracy_vs_budget(clients: Sequence[dict[str, Any]], path: Path) -> int:
    """One marker per client: final accuracy against declared density, coloured by tier."""
    fig, ax = plt.subplots(figsize=(6, 4))
    tiers: dict[str, list[tuple[float, float]]] = {}
    for row in clients:
        tier = str(row.get("budget_tier", "0"))
        tiers.setdefault(tier, []).append((float(row.get("budget_density") or 1.0),
                                           float(row["accuracy"])))
    jitter = np.random.default_rng(0)  # spread equal budgets sideways so markers stay visible
    for tier, points in sorted(tiers.items()):
        xs, ys = (np.asarray(v) for v in zip(*points, strict=True))
        xs = xs * (1 + jitter.uniform(-0.03, 0.03, len(xs)))
        ax.scatter(xs, ys, s=18, alpha=0.75, label=f"tier {tier} (n={len(points)})")
    ax.set(xlabel="declared density", ylabel="final accuracy on own test split",
           title="per-client accuracy vs budget", ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    if tiers:
        ax.legend()
    _save(fig, path)
    return len(tiers)


def costs_per_round(rounds: Sequence[dict[str, Any]], path: Path) -> int:
    """Mean training FLOPs, upload and download bytes per client per round, with dense beside."""
    keys = (("cost_train_flops", "training FLOPs"), ("cost_upload_bytes", "upload bytes"),
            ("cost_download_bytes", "download bytes"))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    drawn = 0
    for ax, (key, label) in zip(axes, keys, strict=True):
        x, y = _series(rounds, key)
        _, ratio = _series(rounds, f"{key}_ratio")
        if x:
            ax.plot(x, y, "-o", markersize=3, label="this run")
            drawn += 1
            if len(ratio) == len(y):
                ax.plot(x, [v / r for v, r in zip(y, ratio, strict=True)], "--", color="gray",
                        label="dense, same work")
                drawn += 1
        ax.set(xlabel="round", title=f"{label} per client")
        ax.set_ylim(bottom=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)
    return drawn


def layer_density(layers: dict[str, dict[str, float]], path: Path) -> int:
    """Mean density of the uploaded updates per parameter tensor."""
    names = list(layers)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4))
    ax.bar(range(len(names)), [layers[n]["density"] for n in names])
    ax.set_xticks(range(len(names)), names, rotation=75, fontsize=7)
    ax.set(ylabel="mean density of uploads", ylim=(0, 1.02), title="mask density per layer")
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)
    return 1 if names else 0


def overlaid_accuracy(runs: dict[str, Sequence[dict[str, Any]]], path: Path,
                      against: str = "round") -> int:
    """Mean (solid) and bottom-decile (dashed) accuracy of several runs on one chart, against
    the round or (``against="sim_seconds"``) the simulated device time in minutes."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    scale = 60.0 if against == "sim_seconds" else 1.0
    for i, (name, rounds) in enumerate(runs.items()):
        color = f"C{i % 10}"
        for key, style, label in (("accuracy_mean", "-o", "mean"),
                                  ("accuracy_bottom_decile", "--", "bottom decile")):
            points = [(r[against] / scale, r[key]) for r in rounds
                      if r.get(against) is not None and r.get(key) is not None]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], style, color=color,
                        markersize=3, label=f"{name} {label}")
                drawn += 1
    xlabel = "simulated device time (minutes)" if against == "sim_seconds" else "round"
    ax.set(xlabel=xlabel, ylabel="accuracy", ylim=(0, 1), title=f"accuracy against {xlabel}")
    if against == "round":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7)
    _save(fig, path)
    return drawn
