"""A simulated device clock: what a round would take on the clients' devices (plain Python).

A client's round time is its measured training FLOPs / its device's speed + its measured bytes
down / download bandwidth + its measured bytes up / upload bandwidth. The server waits for the
clients it needs: all of them, or the first ``wanted`` when it over-selects, and never past a
deadline; clients later than the deadline are dropped from aggregation. The clock depends only
on costs and profiles, never on the host, so runs compare across machines.

Built-in profiles are order-of-magnitude assumptions for *sustained fp32 training* on a class
of device, not benchmarks of one model; their bases are given beside each. Declare your own
under ``clock.profiles`` when you know better.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from fedsparse.seeding import rng

MBIT = 1e6 / 8  # bytes per second in one Mbit/s

class DeviceProfile(BaseModel):
    """A device class: training speed, link bandwidths, and the chance it is online in a round."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    flops_per_second: float = Field(gt=0.0)
    download_bytes_per_second: float = Field(gt=0.0)
    upload_bytes_per_second: float = Field(gt=0.0)
    availability: float = Field(1.0, gt=0.0, le=1.0)



BUILTIN_PROFILES: dict[str, DeviceProfile] = {
    # A budget Android phone (4x Cortex-A53-class cores): a few GFLOP/s of fp32 on-device
    # training, after thermal throttling. Mobile network at roughly the lower quartile of
    # Ookla Speedtest Global Index mobile figures: ~10 Mbit/s down, ~3 Mbit/s up.
    "low-end-phone": DeviceProfile(flops_per_second=2e9, download_bytes_per_second=10 * MBIT,
                                   upload_bytes_per_second=3 * MBIT, availability=0.5),
    # A mid-range phone (big.LITTLE with A7x-class cores): ~10 GFLOP/s sustained CPU training;
    # mobile network near the global median (~50 Mbit/s down, ~10 Mbit/s up).
    "mid-phone": DeviceProfile(flops_per_second=1e10, download_bytes_per_second=50 * MBIT,
                               upload_bytes_per_second=10 * MBIT, availability=0.7),
    # A laptop CPU (4-8 cores, AVX2): ~100 GFLOP/s sustained in PyTorch; home broadband near
    # the fixed-line median (~100 Mbit/s down, ~20 Mbit/s up).
    "laptop": DeviceProfile(flops_per_second=1e11, download_bytes_per_second=100 * MBIT,
                            upload_bytes_per_second=20 * MBIT, availability=0.9),
    # An edge server with a data-centre GPU: ~10 TFLOP/s achieved in fp32 training of small
    # models; 1 Gbit/s symmetric link.
    "edge-server": DeviceProfile(flops_per_second=1e13, download_bytes_per_second=1000 * MBIT,
                                 upload_bytes_per_second=1000 * MBIT, availability=1.0),
}


def resolve_profiles(custom: Mapping[str, DeviceProfile]) -> dict[str, DeviceProfile]:
    """Built-in profiles, overridden or extended by the config's own."""
    return {**BUILTIN_PROFILES, **custom}


def client_seconds(train_flops: float, download_bytes: float, upload_bytes: float,
                   profile: DeviceProfile) -> float:
    """One client's simulated round time."""
    return (train_flops / profile.flops_per_second
            + download_bytes / profile.download_bytes_per_second
            + upload_bytes / profile.upload_bytes_per_second)


def is_online(seed: int, server_round: int, partition_id: int, availability: float) -> bool:
    """Whether a client is reachable in a round (seeded, independent per round and client)."""
    if availability >= 1.0:
        return True
    return bool(rng(seed, "availability", server_round, partition_id).random() < availability)


def sample_size(clients_per_round: int, over_select: float, available: int) -> int:
    """Clients to sample: ``ceil(k * over_select)``, at most the available ones."""
    return min(available, math.ceil(clients_per_round * over_select - 1e-9))


@dataclass(frozen=True)
class RoundTiming:
    """Who the server aggregates, who it drops, and how long it waited."""

    kept: list[int]
    late: list[int]
    surplus: list[int]
    seconds: float


def settle_round(times: Mapping[int, float], wanted: int, deadline: float | None) -> RoundTiming:
    """Keep the first ``wanted`` finishers within ``deadline``.

    The server stops waiting when it has ``wanted`` updates (time of the last one kept), or at
    the deadline when fewer made it in time, or when the last client finishes otherwise.
    Clients past the deadline are ``late``; on-time clients beyond ``wanted`` are ``surplus``
    (over-selection). Ties finish in partition order.
    """
    order = sorted(times, key=lambda pid: (times[pid], pid))
    on_time = [p for p in order if deadline is None or times[p] <= deadline]
    late = [p for p in order if deadline is not None and times[p] > deadline]
    kept, surplus = on_time[:wanted], on_time[wanted:]
    if kept and len(kept) == wanted:
        seconds = times[kept[-1]]
    elif deadline is not None and late:
        seconds = deadline
    else:
        seconds = max(times.values(), default=0.0)
    return RoundTiming(sorted(kept), sorted(late), sorted(surplus), float(seconds))


def time_to_accuracy(records: Sequence[Mapping[str, object]], target: float) -> float | None:
    """Simulated seconds at the first evaluated round whose mean accuracy reaches ``target``."""
    for record in records:
        accuracy = record.get("accuracy_mean")
        if isinstance(accuracy, float) and accuracy >= target:
            seconds = record.get("sim_seconds")
            return float(seconds) if isinstance(seconds, (int, float)) else None
    return None


@dataclass(frozen=True)
class ClockSettings:
    """What the server needs to run the clock: each partition's profile and the round rules."""

    profiles: list[DeviceProfile]
    deadline: float | None = None
    over_select: float = 1.0
    availability: bool = True


def build_clock(device_names: Sequence[str | None], default: str | None,
                custom: Mapping[str, DeviceProfile], deadline: float | None, over_select: float,
                availability: bool) -> ClockSettings | None:
    """Resolve every client's profile; None when no client names a device (clock off).

    Raises ``KeyError`` naming an unknown profile.
    """
    if default is None and all(n is None for n in device_names):
        if deadline is not None or over_select > 1.0:
            raise KeyError("clock.deadline and clock.over_select need device profiles: set "
                           "clock.default_device or a device per budget tier")
        return None
    known = resolve_profiles(custom)
    profiles = []
    for name in device_names:
        chosen = name if name is not None else default
        if chosen is None:
            raise KeyError("some clients have no device while others do: set clock.default_device")
        if chosen not in known:
            raise KeyError(f"unknown device profile '{chosen}': use one of {', '.join(sorted(known))} "
                           "or declare it under clock.profiles")
        profiles.append(known[chosen])
    return ClockSettings(profiles, deadline, over_select, availability)
