from collections import Counter

from fedsparse.faults import injected_fault


def test_fault_choice_is_seeded_and_near_the_rate():
    picks = [injected_fault(0, r, p, 0.3) for r in range(1, 51) for p in range(40)]
    assert picks == [injected_fault(0, r, p, 0.3) for r in range(1, 51) for p in range(40)]
    counts = Counter(picks)
    assert 0.25 < (counts["crash"] + counts["hang"]) / len(picks) < 0.35
    assert counts["crash"] > 0 and counts["hang"] > 0
    assert injected_fault(0, 1, 1, 0.0) is None
    assert {injected_fault(1, r, 0, 1.0, ["crash"]) for r in range(20)} == {"crash"}
