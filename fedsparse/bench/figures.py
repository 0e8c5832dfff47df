"""A suite's pictures: accuracy against total FLOPs and against upload (error bars, the Pareto
front marked), accuracy curves with a band over seeds, and per-tier bars."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from fedsparse.plots import _save, plt

if TYPE_CHECKING:
    from fedsparse.bench.leaderboard import EntryResult, SuiteResults


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (lower or equal cost and higher or equal
    accuracy, one of them strictly), by increasing cost."""
    front = []
    for i, (cost, acc) in enumerate(points):
        beaten = any((c <= cost and a >= acc and (c < cost or a > acc))
                     for j, (c, a) in enumerate(points) if j != i)
        if not beaten:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def accuracy_vs_cost(entries: list[EntryResult], metric: str, label: str, path: Path) -> int:
    """Mean accuracy (sd bars) against a cost ratio (sd bars); the Pareto front joined."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    shown: list[tuple[float, float]] = []
    for e in entries:
        acc, cost = e.estimate("accuracy"), e.estimate(metric)
        if acc.n == 0 or cost.n == 0:
            continue
        ax.errorbar(cost.mean, acc.mean, xerr=_bar(cost.sd), yerr=_bar(acc.sd), fmt="o", capsize=3,
                    label=e.name)
        shown.append((cost.mean, acc.mean))
    if not shown:
        plt.close(fig)
        return 0
    front = pareto_front(shown)
    if len(front) > 1:
        ax.plot([shown[i][0] for i in front], [shown[i][1] for i in front], "k--", lw=1,
                label="Pareto front")
    ax.set_xlabel(f"{label} (ratio to dense training of the same work)")
    ax.set_ylabel("mean accuracy of the evaluated clients (test)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)
    return len(shown)


def _bar(sd: float) -> float | None:
    return None if math.isnan(sd) else sd


def curves(entries: list[EntryResult], path: Path) -> int:
    """Mean client accuracy per evaluated round: the mean over seeds, and a band from the
    lowest to the highest seed."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    drawn = 0
    for e in entries:
        by_round: dict[int, list[float]] = {}
        for rounds in e.rounds.values():
            for record in rounds:
                value = record.get("accuracy_mean")
                if value is not None and not math.isnan(value):
                    by_round.setdefault(record["round"], []).append(value)
        if not by_round:
            continue
        xs = sorted(by_round)
        mean = [sum(by_round[x]) / len(by_round[x]) for x in xs]
        seeds = len(e.rounds)
        (line,) = ax.plot(xs, mean, marker=".",
                          label=f"{e.name} ({seeds} seed{'' if seeds == 1 else 's'})")
        ax.fill_between(xs, [min(by_round[x]) for x in xs], [max(by_round[x]) for x in xs],
                        color=line.get_color(), alpha=0.2)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return 0
    ax.set_xlabel("round")
    ax.set_ylabel("mean accuracy of the evaluated clients (test)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)
    return drawn


def tier_bars(entries: list[EntryResult], path: Path) -> int:
    """Accuracy per declared density: one group of bars per tier, one bar per entry that has
    several tiers (sd bars), centred on the tier's tick."""
    tiered = [(e, e.tiers()) for e in entries if e.tiers()]
    tiers = sorted({t for _, mine in tiered for t in mine}, key=float)
    if not tiers:
        return 0
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    width = 0.8 / len(tiered)
    for k, (e, mine) in enumerate(tiered):
        offset = (k - (len(tiered) - 1) / 2) * width
        shown = [i for i, t in enumerate(tiers) if t in mine]
        est = [mine[tiers[i]] for i in shown]
        ax.bar([i + offset for i in shown], [x.mean for x in est], width,
               yerr=[_bar(x.sd) or 0.0 for x in est], capsize=2, label=e.name)
    ax.set_xticks(range(len(tiers)), [f"density {t}" for t in tiers])
    ax.set_ylabel("mean client accuracy of the tier's clients (test)")
    ax.legend(fontsize=7)
    _save(fig, path)
    return len(tiered)


def draw_figures(results: SuiteResults, folder: Path) -> list[Path]:
    entries = results.entries
    drawn = []
    for name, draw in (("accuracy_vs_flops.png",
                        lambda p: accuracy_vs_cost(entries, "total_flops", "total FLOPs", p)),
                       ("accuracy_vs_upload.png",
                        lambda p: accuracy_vs_cost(entries, "upload", "upload", p)),
                       ("curves.png", lambda p: curves(entries, p)),
                       ("tiers.png", lambda p: tier_bars(entries, p))):
        if draw(folder / name):
            drawn.append(folder / name)
        else:
            (folder / name).unlink(missing_ok=True)
    return drawn
