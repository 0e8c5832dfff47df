import math

import pytest

from fedsparse.bench.stats import estimate, incomplete_beta, paired, t_cdf, t_quantile

#: Student-t 0.975 quantiles from published tables (R's qt(0.975, df))
T_975 = {1: 12.706204736174707, 2: 4.302652729911275, 4: 2.7764451051977934,
         9: 2.2621571627409915, 30: 2.0422724563012373}


@pytest.mark.parametrize(("df", "expected"), sorted(T_975.items()))
def test_t_quantile_matches_published_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, rel=1e-8)


def test_t_cdf_is_symmetric_and_tends_to_the_normal():
    assert t_cdf(0.0, 3) == pytest.approx(0.5)
    assert t_cdf(-1.3, 5) == pytest.approx(1 - t_cdf(1.3, 5))
    assert t_quantile(0.975, 1e6) == pytest.approx(1.959964, rel=1e-5)


def test_incomplete_beta_known_values():
    assert incomplete_beta(1, 1, 0.3) == pytest.approx(0.3)  # uniform
    assert incomplete_beta(2, 1, 0.5) == pytest.approx(0.25)  # x^2


def test_estimate_of_three_seeds():
    e = estimate([0.80, 0.82, 0.84])
    assert e.mean == pytest.approx(0.82)
    assert e.sd == pytest.approx(0.02)
    half = 4.302652729911275 * 0.02 / math.sqrt(3)
    assert (e.low, e.high) == (pytest.approx(0.82 - half), pytest.approx(0.82 + half))
    assert e.n == 3


def test_estimate_of_one_or_no_value_has_no_interval():
    one = estimate([0.5])
    assert one.mean == 0.5 and math.isnan(one.sd) and math.isnan(one.low)
    assert estimate([]).n == 0


def test_paired_difference_uses_only_shared_seeds_and_cancels_the_seed_effect():
    # the seed moves both entries by the same amount: the paired interval is exact
    base = {0: 0.70, 1: 0.80, 2: 0.90, 3: 0.5}
    other = {0: 0.72, 1: 0.82, 2: 0.92}
    diff = paired(other, base)
    assert diff.n == 3
    assert diff.mean == pytest.approx(0.02)
    assert diff.sd == pytest.approx(0.0, abs=1e-12)
    # unpaired, the same seeds give an interval wider than the difference itself
    assert estimate(list(other.values())).half_width > 0.1
