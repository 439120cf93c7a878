"""The noise level of measured series estimated from the data alone, without a model.

Consecutive samples are combined with the weights of a divided difference of order ``k``
(over ``k + 1`` neighbours), which cancel any polynomial of degree ``k - 1`` through them,
normalised to unit length so that white noise keeps its variance (:func:`differences`). On a
signal sampled densely for its dynamics these differences are the noise; where the signal
bends between samples they also carry its curvature, as a few large values near peaks,
which is why the level is taken with a robust statistic (:func:`noise_level`):

* ``"trimmed"``: the mean of the smallest :data:`NOISE_KEEP` share of the squared
  differences, divided by the mean of the same share of a chi-square(1) variable. Efficient
  (``m var(log sigma^2) ~ 7`` for ``m`` third differences of white noise); the fit
  diagnostics use it with ``k = 3`` for the chi-square of a fit
  (:mod:`dynlearn.results.diagnostics`).
* ``"mad"``: ``1.4826`` times the median absolute difference. Less efficient, but nearly
  unmoved by curvature on short series, and high rather than low; the restarts of network
  training use it with ``k = 2`` per series to tell a stalled fit
  (:func:`dynlearn.optimizers.restarts.noise_floor`), where an upper estimate is wanted.

Both overestimate the noise when the data are sampled coarsely for the dynamics (fewer than
about ten points per oscillation or time constant).
"""

from __future__ import annotations

import math

import numpy as np

from dynlearn.errors import OptionError

__all__ = ["NOISE_KEEP", "differences", "noise_level"]

#: share of the squared differences kept by the ``"trimmed"`` statistic (the smallest ones)
NOISE_KEEP = 0.75
#: consistency factor of the median absolute value of a standard normal variable
MAD_NORMAL = 1.4826


def differences(t, values, order: int = 3) -> np.ndarray:
    """Divided differences of ``values`` over ``order + 1`` consecutive samples, each
    normalised to unit length of its weights (white noise keeps its variance).

    Parameters
    ----------
    t : array_like
        Increasing sample times (unevenly spaced is fine).
    values : array_like
        The measured values at ``t``.
    order : int
        ``order + 1`` samples per difference; it cancels polynomials of degree
        ``order - 1``.

    Returns
    -------
    numpy.ndarray
        One difference per window; windows with a repeated time are left out.
    """
    t, v = np.asarray(t, dtype=float), np.asarray(values, dtype=float)
    width = int(order) + 1
    if order < 1 or t.size < width:
        return np.zeros(0)
    windows = np.lib.stride_tricks.sliding_window_view(t, width)
    gaps = windows[:, :, None] - windows[:, None, :]
    off = ~np.eye(width, dtype=bool)
    ok = np.all(gaps[:, off] != 0, axis=1)     # a repeated time: no difference there
    gaps = gaps[ok] + np.eye(width)
    w = 1.0 / np.prod(gaps, axis=2)            # divided-difference weights
    vals = np.lib.stride_tricks.sliding_window_view(v, width)[ok]
    return np.einsum("ij,ij->i", w, vals) / np.linalg.norm(w, axis=1)


def noise_level(series, *, order: int = 3, statistic: str = "trimmed",
                min_count: int = 1) -> tuple[float, int]:
    """The noise level (standard deviation) of one observable from its data alone.

    Parameters
    ----------
    series : iterable of (t, values)
        One increasing time vector and its values per experiment; the differences of all
        of them are pooled.
    order : int
        The order of the differences (see :func:`differences`).
    statistic : {"trimmed", "mad"}
        The robust scale of the differences (see the module notes).
    min_count : int
        Fewest finite differences for an estimate.

    Returns
    -------
    sigma : float
        NaN when there are fewer than ``min_count`` finite differences.
    n : int
        The number of differences used.
    """
    if statistic not in ("trimmed", "mad"):
        raise OptionError(f"statistic must be 'trimmed' or 'mad', got {statistic!r}")
    d = np.concatenate([differences(t, v, order) for t, v in series] or [np.zeros(0)])
    d = d[np.isfinite(d)]
    if d.size < max(1, int(min_count)):
        return math.nan, int(d.size)
    if statistic == "mad":
        return MAD_NORMAL * float(np.median(np.abs(d))), int(d.size)
    from scipy import special
    d2 = np.sort(d * d)
    keep = max(1, int(math.ceil(NOISE_KEEP * d2.size)))
    q = float(special.ndtri(0.5 + NOISE_KEEP / 2.0)) ** 2       # chi2(1) quantile
    share = float(special.gammainc(1.5, q / 2.0)) / NOISE_KEEP  # E[z^2 | z^2 < q]
    return math.sqrt(float(d2[:keep].mean()) / share), int(d.size)
