"""slice_trl.utils.stats: t quantiles against closed forms, the paired interval by hand, and the minimum
detectable difference against a simulation of the paired t-test itself."""

import math

import numpy as np
import pytest

from slice_trl.utils.stats import min_detectable_difference, paired_summary, paired_t_power, t_cdf, t_quantile


@pytest.mark.parametrize("p", [0.6, 0.8, 0.975, 0.995])
def test_t_quantiles_match_the_closed_forms_of_one_and_two_df(p):
    # df = 1 is Cauchy: tan(pi (p - 1/2)); df = 2: F(t) = 1/2 + t / (2 sqrt(2 + t^2)) -> t = (2p - 1) / sqrt(2p(1 - p))
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)
    assert t_cdf(-t_quantile(p, 5), 5) == pytest.approx(1 - p, rel=1e-9)


def test_paired_interval_of_three_seeds_by_hand():
    # diffs a * (-1, -1, +1): mean -a/3, sd a * sqrt(4/3), half-width t_{0.975,2} * sd / sqrt(3) = t * 2a/3
    a = 0.78125  # one example of 32 on one task of four: 100 / 128
    out = paired_summary([-a, -a, a])
    t2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # 4.3027, the df = 2 closed form
    assert out["n"] == 3 and out["mean"] == pytest.approx(-a / 3)
    assert out["sd"] == pytest.approx(a * math.sqrt(4 / 3))
    assert out["ci"] == pytest.approx([-a / 3 - t2 * 2 * a / 3, -a / 3 + t2 * 2 * a / 3])
    assert out["ci"] == pytest.approx([-2.501, 1.981], abs=1e-3)  # the README's primary endpoint
    assert paired_summary([1.0]) == {"n": 1, "mean": 1.0, "sd": None, "ci": None, "mdd": None}
    assert paired_summary([])["mean"] is None


def test_minimum_detectable_difference_has_80_percent_power_in_simulation():
    """At the returned difference, the paired t-test (n = 3, alpha 0.05) rejects 80% of the time:
    simulated directly (200 000 draws, standard error 0.0009)."""
    n, sd = 3, 1.0
    delta = min_detectable_difference(sd, n)
    rng = np.random.default_rng(0)
    d = rng.normal(delta, sd, size=(200_000, n))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    power = float(np.mean(np.abs(t) > t_quantile(0.975, n - 1)))
    assert power == pytest.approx(0.80, abs=0.004)
    # the (t_{0.975} + t_{0.8}) sd / sqrt(n) shortcut understates it at n = 3 ...
    assert (t_quantile(0.975, 2) + t_quantile(0.8, 2)) / math.sqrt(3) < 0.96 * delta
    # ... and at large n both tend to (z_{0.975} + z_{0.8}) sd / sqrt(n)
    assert min_detectable_difference(1.0, 400) == pytest.approx((1.959964 + 0.841621) / 20, rel=3e-3)
    assert min_detectable_difference(2.0, 3) == pytest.approx(2 * delta)  # linear in sd
    assert min_detectable_difference(1.0, 1) is None
    assert paired_t_power(0.0, 2) == pytest.approx(0.05, abs=1e-6)  # no difference: the test's level


def test_agrees_with_scipy_where_installed():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 4, 9):
        assert t_quantile(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-9)
        c = stats.t.ppf(0.975, df)
        for ncp in (0.5, 2.0, 5.0):
            exact = stats.nct.sf(c, df, ncp) + stats.nct.cdf(-c, df, ncp)
            assert paired_t_power(ncp, df) == pytest.approx(exact, abs=1e-6)
