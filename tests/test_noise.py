"""The one noise-from-data estimate (dynlearn.data.noise), used by the restarts of network
training (second differences, median) and the fit diagnostics (third differences, trimmed)."""

import numpy as np
import pytest

from dynlearn.data.noise import (
    SPREAD,
    differences,
    noise_level,
    replicate_contrasts,
    replicate_differences,
)
from dynlearn.errors import OptionError


def test_differences_cancel_polynomials_below_their_order_on_uneven_times():
    t = np.cumsum(np.random.default_rng(0).uniform(0.05, 0.5, 40))
    for order in (1, 2, 3):
        poly = np.polyval(np.arange(1.0, order + 1), t)      # degree order - 1
        assert np.max(np.abs(differences(t, poly, order))) < 1e-8 * np.max(np.abs(poly))
        assert np.max(np.abs(differences(t, t ** order, order))) > 1e-3
    assert differences(t, t, 2).shape == (38,)


def test_second_differences_are_the_interpolation_pseudo_residuals():
    rng = np.random.default_rng(1)
    t = np.cumsum(rng.uniform(0.05, 0.5, 30))
    y = np.sin(t) + 0.1 * rng.standard_normal(t.size)
    a = (t[2:] - t[1:-1]) / (t[2:] - t[:-2])
    b = (t[1:-1] - t[:-2]) / (t[2:] - t[:-2])
    e = (a * y[:-2] + b * y[2:] - y[1:-1]) / np.sqrt(a * a + b * b + 1.0)
    assert np.abs(differences(t, y, 2)) == pytest.approx(np.abs(e), rel=1e-12)


@pytest.mark.parametrize("statistic", ["trimmed", "mad"])
@pytest.mark.parametrize("order", [2, 3])
def test_white_noise_keeps_its_level(statistic, order):
    rng = np.random.default_rng(2)
    t = np.sort(rng.uniform(0.0, 50.0, 4000))
    sigma, n = noise_level([(t, 0.3 * rng.standard_normal(t.size))], order=order,
                           statistic=statistic)
    assert n == t.size - order
    assert sigma == pytest.approx(0.3, rel=0.06)


def test_repeated_times_nonfinite_values_and_short_series():
    t = np.array([0.0, 1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    y = np.array([0.0, 1.0, 2.0, 3.0, np.nan, 5.0, 6.0, 7.0])
    # windows with the repeated time 1.0 are left out, then the ones touching the NaN
    assert differences(t, y, 2).size == 8 - 2 - 2
    # the estimate uses the replicates: two second differences of the means over the
    # distinct times (0, 1.5, 3 and 5, 6, 7: both zero) and the contrast (1 - 2) / sqrt(2)
    sigma, n = noise_level([(t, y)], order=2, statistic="mad")
    assert n == 3 and sigma == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(noise_level([(t, y)], order=2, min_count=4)[0])
    assert noise_level([], order=3) == (pytest.approx(np.nan, nan_ok=True), 0)
    with pytest.raises(OptionError, match="statistic"):
        noise_level([(t, y)], statistic="mean")


def old_noise_level(series, order, statistic, min_count=1):
    """The estimate before replicates were used: the pooled divided differences alone (the
    statistics written out from the module notes), the reference for series without a
    repeated time."""
    from scipy import special
    d = np.concatenate([differences(t, v, order) for t, v in series] or [np.zeros(0)])
    d = d[np.isfinite(d)]
    if d.size < max(1, min_count):
        return np.nan, int(d.size)
    if statistic == "mad":
        return 1.4826 * float(np.median(np.abs(d))), int(d.size)
    d2 = np.sort(d * d)
    keep = max(1, int(np.ceil(0.75 * d2.size)))
    q = float(special.ndtri(0.5 + 0.75 / 2.0)) ** 2
    share = float(special.gammainc(1.5, q / 2.0)) / 0.75
    return np.sqrt(float(d2[:keep].mean()) / share), int(d.size)


@pytest.mark.parametrize("seed", range(6))
def test_without_a_repeated_time_the_estimate_is_unchanged_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    series = []
    for _ in range(rng.integers(1, 4)):
        t = np.cumsum(rng.uniform(0.01, 1.0, rng.integers(3, 60)))
        y = np.sin(rng.uniform(0.1, 3.0) * t) + rng.uniform(0.01, 1.0) * rng.standard_normal(t.size)
        y[rng.random(t.size) < 0.05] = np.nan                    # a few missing values
        series.append((t, y))
    for order in (1, 2, 3):
        for statistic in ("trimmed", "mad"):
            for min_count in (1, 8):
                new = noise_level(series, order=order, statistic=statistic, min_count=min_count)
                old = old_noise_level(series, order, statistic, min_count)
                assert new[1] == old[1]
                assert new[0] == old[0] or (np.isnan(new[0]) and np.isnan(old[0]))


def linear_map(f, t):
    """The matrix of the linear map ``values -> f(t, values)``, column by column."""
    eye = np.eye(t.size)
    return np.column_stack([f(t, eye[k]) for k in range(t.size)])


def test_replicate_contrasts_are_orthonormal_and_cancel_each_group():
    t = np.array([0.0, 0.5, 0.5, 1.0, 1.5, 1.5, 1.5, 1.5, 2.0, 3.0, 3.0, 3.0])
    C = linear_map(replicate_contrasts, t)
    assert C.shape == (1 + 3 + 2, t.size)                        # m - 1 per group
    np.testing.assert_allclose(C @ C.T, np.eye(C.shape[0]), atol=1e-14)
    for ti in np.unique(t):
        np.testing.assert_allclose(C @ (t == ti), 0.0, atol=1e-14)
    assert replicate_contrasts(t[[0, 1, 3]], [1.0, 2.0, 3.0]).size == 0
    # a missing value leaves its group, which keeps the others' contrasts
    y = np.arange(t.size, dtype=float)
    y[1] = np.nan
    assert replicate_contrasts(t, y).size == 5


def test_differences_of_replicate_means_keep_the_noise_variance_and_cancel_polynomials():
    t = np.repeat(np.cumsum(np.random.default_rng(3).uniform(0.1, 0.5, 12)),
                  [1, 2, 3, 1, 1, 4, 2, 1, 1, 3, 1, 2])
    for order in (2, 3):
        A = linear_map(lambda s, v, k=order: replicate_differences(s, v, k), t)
        assert A.shape == (12 - order, t.size)
        np.testing.assert_allclose(np.sum(A * A, axis=1), 1.0, rtol=1e-12)  # variance sigma^2
        poly = np.polyval(np.arange(1.0, order + 1), t)                      # degree order - 1
        assert np.max(np.abs(A @ poly)) < 1e-8 * np.max(np.abs(poly))
        np.testing.assert_allclose(A @ C_orthogonal(t), 0.0, atol=1e-12)


def C_orthogonal(t):
    """Within-group deviations (a value minus its group's mean): what the differences of the
    means must not see, so that they are independent of the contrasts."""
    z = np.random.default_rng(4).standard_normal(t.size)
    _, idx = np.unique(t, return_inverse=True)
    return z - (np.bincount(idx, z) / np.bincount(idx))[idx]


def chi_square_band(n, spread, p=1e-3):
    """Bounds on sigma_hat / sigma for an estimate from n independent N(0, sigma^2) values:
    ``nu sigma_hat^2 / sigma^2`` is taken as chi-square with ``nu = 2 n / spread`` degrees of
    freedom, ``spread = n var(log sigma_hat^2)`` of the statistic (2 for the plain mean of
    squares; measured 3.3 for the trimmed mean and 5.5 for the median absolute value, which
    give up efficiency for robustness), two-sided at level ``p``."""
    from scipy import stats
    nu = 2.0 * n / spread
    return tuple(np.sqrt(stats.chi2.ppf([p / 2, 1 - p / 2], nu) / nu))


@pytest.mark.parametrize("statistic,spread", [("trimmed", 3.3), ("mad", 5.5)])
@pytest.mark.parametrize("m", [2, 3])
def test_replicates_at_every_time_give_the_noise_of_a_fast_signal(statistic, spread, m):
    """sin(3 t) sampled every 0.4 (5 points per period): differences alone overestimate the
    noise; with m replicates at every time the old estimate had no window at all (NaN)."""
    rng = np.random.default_rng(5)
    times = np.arange(0.0, 40.0, 0.4)
    t = np.repeat(times, m)
    y = np.sin(3.0 * t) + 0.1 * rng.standard_normal(t.size)
    assert np.isnan(old_noise_level([(t, y)], 3, statistic)[0])
    single = noise_level([(times, y[::m])], order=3, statistic=statistic)[0]
    assert single > 1.5 * 0.1                                    # the signal is fast
    sigma, n = noise_level([(t, y)], order=3, statistic=statistic)
    assert n == times.size * (m - 1)              # the differences disagree: contrasts only
    lo, hi = chi_square_band(n, spread)
    assert lo * 0.1 < sigma < hi * 0.1


@pytest.mark.parametrize("statistic", ["trimmed", "mad"])
def test_some_times_replicated_pool_differences_and_contrasts(statistic):
    """Every third time measured three times. Densely sampled, the differences of the means
    agree with the contrasts and both are pooled; sampled coarsely, only the contrasts
    count."""
    rng = np.random.default_rng(6)
    counts = np.where(np.arange(300) % 3 == 0, 3, 1)
    for dt, pooled in ((0.05, True), (0.4, False)):
        times = np.arange(300) * dt
        t = np.repeat(times, counts)
        y = np.sin(3.0 * t) + 0.1 * rng.standard_normal(t.size)
        sigma, n = noise_level([(t, y)], order=3, statistic=statistic)
        contrasts = 100 * 2
        assert n == (contrasts + 300 - 3 if pooled else contrasts)
        # the pooled differences are correlated (overlapping windows): SPREAD bounds them
        lo, hi = chi_square_band(n, SPREAD[statistic])
        assert lo * 0.1 < sigma < hi * 0.1
    # two experiments pool their values, replicated or not
    a, b = (np.arange(0.0, 15.0, 0.05), np.repeat(np.arange(0.0, 15.0, 0.05), 2))
    ya, yb = (np.sin(x) + 0.1 * rng.standard_normal(x.size) for x in (a, b))
    _, n = noise_level([(a, ya), (b, yb)], order=3, statistic=statistic)
    assert n == (a.size - 3) + (a.size - 3) + a.size
