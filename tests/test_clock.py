"""The simulated device clock: round times, deadlines, over-selection, availability."""

import pytest

from fedsparse.clock import (
    BUILTIN_PROFILES,
    build_clock,
    client_seconds,
    is_online,
    sample_size,
    settle_round,
    time_to_accuracy,
)
from fedsparse.config import DeviceProfile

PHONE = DeviceProfile(flops_per_second=2e9, download_bytes_per_second=1e6,
                      upload_bytes_per_second=2.5e5, availability=0.5)


def test_round_time_is_compute_plus_transfers():
    # 4 GFLOP at 2 GFLOP/s + 3 MB down at 1 MB/s + 0.5 MB up at 0.25 MB/s = 2 + 3 + 2 s
    assert client_seconds(4e9, 3e6, 5e5, PHONE) == pytest.approx(7.0)


def test_deadline_drops_exactly_the_late_clients():
    times = {0: 3.0, 1: 9.5, 2: 4.0, 3: 10.5, 4: 10.0}
    timing = settle_round(times, wanted=5, deadline=10.0)
    assert timing.kept == [0, 1, 2, 4] and timing.late == [3] and timing.surplus == []
    assert timing.seconds == 10.0  # the server waited until the deadline
    assert settle_round(times, wanted=5, deadline=None).seconds == 10.5
    assert settle_round({0: 1.0, 1: 2.0}, wanted=2, deadline=5.0).seconds == 2.0


def test_over_selection_keeps_the_first_finishers():
    assert sample_size(10, 1.3, 100) == 13 and sample_size(10, 1.3, 11) == 11
    assert sample_size(10, 1.0, 100) == 10
    times = {p: float(t) for p, t in enumerate([5, 1, 12, 3, 7, 2, 30])}
    timing = settle_round(times, wanted=4, deadline=20.0)
    assert timing.kept == [0, 1, 3, 5] and timing.late == [6] and timing.surplus == [2, 4]
    assert timing.seconds == 5.0  # the fourth arrival
    short = settle_round(times, wanted=7, deadline=20.0)
    assert len(short.kept) == 6 and short.seconds == 20.0


def test_availability_is_seeded_and_near_its_rate():
    draws = [is_online(0, r, p, 0.5) for r in range(20) for p in range(100)]
    assert draws == [is_online(0, r, p, 0.5) for r in range(20) for p in range(100)]
    assert 0.45 < sum(draws) / len(draws) < 0.55
    assert all(is_online(3, r, 1, 1.0) for r in range(50))


def test_profiles_resolve_per_client_and_unknown_names_fail():
    clock = build_clock(["laptop", None, "mine"], "mid-phone", {"mine": PHONE}, 60.0, 1.2, True)
    assert clock.profiles == [BUILTIN_PROFILES["laptop"], BUILTIN_PROFILES["mid-phone"], PHONE]
    assert build_clock([None, None], None, {}, None, 1.0, True) is None
    with pytest.raises(KeyError, match="unknown device profile 'toaster'"):
        build_clock(["toaster"], None, {}, None, 1.0, True)
    with pytest.raises(KeyError, match="need device profiles"):
        build_clock([None], None, {}, 10.0, 1.0, True)


def test_time_to_accuracy_is_the_first_round_reaching_the_target():
    records = [{"round": 1, "sim_seconds": 5.0}, {"round": 2, "sim_seconds": 9.0, "accuracy_mean": 0.5},
               {"round": 3, "sim_seconds": 14.0, "accuracy_mean": 0.8}]
    assert time_to_accuracy(records, 0.7) == 14.0
    assert time_to_accuracy(records, 0.9) is None
