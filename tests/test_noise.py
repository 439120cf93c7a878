"""The one noise-from-data estimate (dynlearn.data.noise), used by the restarts of network
training (second differences, median) and the fit diagnostics (third differences, trimmed)."""

import numpy as np
import pytest

from dynlearn.data.noise import differences, noise_level
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
    sigma, n = noise_level([(t, y)], order=2)
    assert n == 1 and sigma == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(noise_level([(t, y)], order=2, min_count=2)[0])
    assert noise_level([], order=3) == (pytest.approx(np.nan, nan_ok=True), 0)
    with pytest.raises(OptionError, match="statistic"):
        noise_level([(t, y)], statistic="mean")
