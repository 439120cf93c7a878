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

Replicates (a time repeated within one series) carry the best noise estimate there is: the
spread within them, free of the signal. A group of ``m`` finite values at one time gives its
``m - 1`` Helmert contrasts (:func:`replicate_contrasts`), orthonormal combinations that
each have the variance ``sigma^2`` of white noise and cancel the group's common value. The
divided differences are then taken over the distinct times, of the replicate means,
normalised by ``sqrt(sum_i w_i^2 / m_i)`` (the mean of ``m_i`` values has variance
``sigma^2 / m_i``), so that they keep the variance ``sigma^2`` too, for any pattern of
replicates (:func:`replicate_differences`). Both kinds of values are pooled for the
robust statistic. A series without a repeated time gives no contrasts and exactly the
differences of :func:`differences`, so the estimate there is the one without replicates,
bit for bit.

The differences carry the signal's curvature, amplified ``sqrt(m)`` times against the
noise where the means are of ``m`` values; the contrasts never do. Pooled with a large share
of contrasts, a few large differences are no longer the top quarter that the trimmed
statistic drops, and the pool no longer has the chi-square shape both statistics assume
(measured on ``sin(3 t)``, 20 noise seeds, the trimmed pool is 2.1, 1.6, 1.3 times the noise
with 2, 3, 5 replicates every 0.4 time units; the contrasts alone 0.99-1.03). So the
differences are pooled only where they agree with the contrasts: where the statistic of
the differences alone exceeds that of the contrasts alone by more than
:data:`AGREE_Z` standard deviations of the ratio of two independent estimates (on the log
scale, ``n var(log sigma^2)`` taken as :data:`SPREAD`), the differences are signal and
only the contrasts are used. Leaving good differences out wrongly only costs efficiency
(the contrasts are unbiased), so the test is one-sided and not strict; it needs at least
``min_count`` contrasts, else all values are pooled as they come.
"""

from __future__ import annotations

import math

import numpy as np

from dynlearn.errors import OptionError

__all__ = ["AGREE_Z", "NOISE_KEEP", "SPREAD", "differences", "noise_level",
           "replicate_contrasts", "replicate_differences"]

#: share of the squared differences kept by the ``"trimmed"`` statistic (the smallest ones)
NOISE_KEEP = 0.75
#: consistency factor of the median absolute value of a standard normal variable
MAD_NORMAL = 1.4826
#: ``n var(log sigma^2)`` of each statistic over ``n`` third differences of white noise
#: (measured, 2000 seeds of n = 400: 6.7 and 9.2); lower for second differences (5.7, 7.7)
#: and for independent values such as contrasts (3.3, 5.5), so an upper value for both
#: parts of the agreement test between differences and replicate contrasts
SPREAD = {"trimmed": 7.0, "mad": 9.5}
#: the differences are left out when their estimate exceeds the contrasts' by more than this
#: many standard deviations of ``log(sigma_d^2 / sigma_c^2)`` (one-sided, about 2 %)
AGREE_Z = 2.0


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
    ok, w = _weights(t, order)
    if w is None:
        return np.zeros(0)
    vals = np.lib.stride_tricks.sliding_window_view(v, int(order) + 1)[ok]
    return np.einsum("ij,ij->i", w, vals) / np.linalg.norm(w, axis=1)


def _weights(t: np.ndarray, order: int):
    """The windows of ``order + 1`` consecutive times without a repeated time, and their
    divided-difference weights (``(ok, w)``; ``w`` is None when there are no windows)."""
    width = int(order) + 1
    if order < 1 or t.size < width:
        return None, None
    windows = np.lib.stride_tricks.sliding_window_view(t, width)
    gaps = windows[:, :, None] - windows[:, None, :]
    off = ~np.eye(width, dtype=bool)
    ok = np.all(gaps[:, off] != 0, axis=1)     # a repeated time: no difference there
    gaps = gaps[ok] + np.eye(width)
    return ok, 1.0 / np.prod(gaps, axis=2)     # divided-difference weights


def _groups(t, values):
    """The distinct times of a series, the index of each sample's time, and which samples
    are finite (the ones a replicate group is made of)."""
    t, v = np.asarray(t, dtype=float), np.asarray(values, dtype=float)
    times, index = np.unique(t, return_inverse=True)
    return times, index.ravel(), v, np.isfinite(v)


def replicate_contrasts(t, values) -> np.ndarray:
    """The within-replicate deviations of a series: for each time with ``m`` finite values
    ``y_0 .. y_{m-1}`` (in their order in the series), the ``m - 1`` Helmert contrasts
    ``(y_0 + ... + y_{j-1} - j y_j) / sqrt(j (j + 1))``, ``j = 1 .. m - 1``.

    They are orthonormal and orthogonal to the group's mean: for white noise of standard
    deviation ``sigma`` each has variance ``sigma^2``, they are independent, and the value
    common to the group (the signal) cancels.

    Parameters
    ----------
    t : array_like
        Sample times; equal times form a replicate group (they need not be adjacent).
    values : array_like
        The measured values at ``t``; non-finite values are left out of their group.

    Returns
    -------
    numpy.ndarray
        The contrasts, grouped by increasing time; empty when no time has two finite values.
    """
    times, index, v, fin = _groups(t, values)
    index, v = index[fin], v[fin]
    count = np.bincount(index, minlength=times.size)
    if not np.any(count > 1):
        return np.zeros(0)
    mean = np.bincount(index, weights=v, minlength=times.size) / np.maximum(count, 1)
    order = np.argsort(index, kind="stable")
    g, y = index[order], v[order] - mean[index[order]]   # centred: no cancellation of levels
    start = np.cumsum(count) - count
    j = np.arange(g.size) - start[g]                     # position within the group
    before = np.cumsum(y) - y                            # sum of all values before this one
    before -= before[start[g]]                           # ... within its own group
    take = j > 0
    j = j[take]
    return (before[take] - j * y[take]) / np.sqrt(j * (j + 1.0))


def replicate_differences(t, values, order: int = 3) -> np.ndarray:
    """Divided differences over the distinct times of a series, of the means of its
    replicates, each normalised so that white noise keeps its variance.

    Where no time repeats this is :func:`differences`, bit for bit. Otherwise a time with
    ``m_i`` finite values contributes their mean, whose variance is ``sigma^2 / m_i``, so a
    difference with weights ``w`` is divided by ``sqrt(sum_i w_i^2 / m_i)``; a time without
    a finite value is missing (the differences touching it are NaN).

    Parameters
    ----------
    t : array_like
        Sample times, repeated for replicates.
    values : array_like
        The measured values at ``t``.
    order : int
        ``order + 1`` distinct times per difference; it cancels polynomials of degree
        ``order - 1``.

    Returns
    -------
    numpy.ndarray
        One difference per window of ``order + 1`` consecutive distinct times.
    """
    times, index, v, fin = _groups(t, values)
    if times.size == index.size:
        return differences(t, values, order)
    count = np.bincount(index[fin], minlength=times.size)
    total = np.bincount(index[fin], weights=v[fin], minlength=times.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / count, np.nan)
    ok, w = _weights(times, order)
    if w is None:
        return np.zeros(0)
    width = int(order) + 1
    vals = np.lib.stride_tricks.sliding_window_view(mean, width)[ok]
    inv = 1.0 / np.maximum(count, 1).astype(float)
    var = np.lib.stride_tricks.sliding_window_view(inv, width)[ok]
    return np.einsum("ij,ij->i", w, vals) / np.sqrt(np.einsum("ij,ij->i", w * w, var))


def noise_level(series, *, order: int = 3, statistic: str = "trimmed",
                min_count: int = 1) -> tuple[float, int]:
    """The noise level (standard deviation) of one observable from its data alone.

    Parameters
    ----------
    series : iterable of (t, values)
        One non-decreasing time vector and its values per experiment (a repeated time
        holds replicates); the differences and replicate contrasts of all of them are
        pooled (see the module notes).
    order : int
        The order of the differences (see :func:`replicate_differences`).
    statistic : {"trimmed", "mad"}
        The robust scale of the pooled values (see the module notes).
    min_count : int
        Fewest finite values (differences and contrasts) for an estimate.

    Returns
    -------
    sigma : float
        NaN when there are fewer than ``min_count`` finite values.
    n : int
        The number of values used: differences (where they agree with the contrasts) and
        contrasts; without a repeated time, the number of differences.
    """
    if statistic not in ("trimmed", "mad"):
        raise OptionError(f"statistic must be 'trimmed' or 'mad', got {statistic!r}")
    series = [(t, v) for t, v in series]
    d = np.concatenate([replicate_differences(t, v, order) for t, v in series]
                       or [np.zeros(0)])
    d = d[np.isfinite(d)]
    c = np.concatenate([replicate_contrasts(t, v) for t, v in series] or [np.zeros(0)])
    c = c[np.isfinite(c)]
    if c.size >= max(1, int(min_count)) and d.size:
        # the differences only join the contrasts where they agree (see the module notes)
        sc, sd = _scale(c, statistic), _scale(d, statistic)
        band = AGREE_Z * math.sqrt(SPREAD[statistic] * (1.0 / c.size + 1.0 / d.size))
        if sc > 0 and sd * sd > sc * sc * math.exp(band):
            d = np.zeros(0)
    if c.size:
        d = np.concatenate([d, c])
    if d.size < max(1, int(min_count)):
        return math.nan, int(d.size)
    return _scale(d, statistic), int(d.size)


def _scale(d: np.ndarray, statistic: str) -> float:
    """The robust scale ``statistic`` of the finite values ``d`` (at least one)."""
    if statistic == "mad":
        return MAD_NORMAL * float(np.median(np.abs(d)))
    from scipy import special
    d2 = np.sort(d * d)
    keep = max(1, int(math.ceil(NOISE_KEEP * d2.size)))
    q = float(special.ndtri(0.5 + NOISE_KEEP / 2.0)) ** 2       # chi2(1) quantile
    share = float(special.gammainc(1.5, q / 2.0)) / NOISE_KEEP  # E[z^2 | z^2 < q]
    return math.sqrt(float(d2[:keep].mean()) / share)
