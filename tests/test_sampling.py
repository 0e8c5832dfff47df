"""Seeded client sampling, with and without the simulated clock."""

from fedsparse.clock import ClockSettings, DeviceProfile
from fedsparse.sampling import sample_clients


def test_sampling_is_seeded_sorted_and_bounded():
    picks = [sample_clients(3, r, range(10), 4) for r in range(1, 6)]
    assert picks == [sample_clients(3, r, range(10), 4) for r in range(1, 6)]
    assert all(p == sorted(p) and len(set(p)) == 4 for p in picks)
    assert len({tuple(p) for p in picks}) > 1  # rounds differ
    assert sample_clients(4, 1, range(10), 4) != picks[0] or sample_clients(5, 1, range(10), 4) != picks[0]
    assert sample_clients(3, 1, [2, 7], 5) == [2, 7]  # never more than there are


def test_clock_over_selects_and_skips_offline_clients():
    always = DeviceProfile(flops_per_second=1e9, download_bytes_per_second=1e6,
                           upload_bytes_per_second=1e6, availability=1.0)
    rarely = always.model_copy(update={"availability": 1e-9})  # practically never online
    clock = ClockSettings([always] * 6 + [rarely] * 4, over_select=1.5)
    for r in range(1, 6):
        picked = sample_clients(0, r, range(10), 2, clock)
        assert len(picked) == 3  # ceil(2 * 1.5)
    seen = {p for r in range(1, 30) for p in sample_clients(0, r, range(10), 2, clock)}
    assert (seen and max(seen) < 6) or len(seen & {6, 7, 8, 9}) <= 1  # offline clients are rare
