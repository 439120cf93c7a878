"""Sparse regression: sequentially thresholded least squares (STLSQ) and threshold choice.

The regression for one target ``z`` (a network output or a derivative) is

.. math:: z(X) \\approx \\Theta(X)\\,\\xi,

with ``Theta`` the library evaluated at the sample points ``X`` (one column per candidate
term). Columns and target are scaled to unit root-mean-square, so a coefficient of the
scaled problem, :math:`\\tilde\\xi_j = \\xi_j\\,\\mathrm{rms}(\\theta_j)/\\mathrm{rms}(z)`, is
the share of the target that term ``j`` carries: a threshold of 0.05 drops terms that
contribute less than 5 % of the term's size, whatever the units of the states. STLSQ then
alternates a ridge least-squares fit with zeroing every scaled coefficient below the
threshold, until the set of kept terms stops changing; the kept terms are finally refitted
without the ridge penalty (debiasing).

:func:`stlsq` runs it at one threshold; :class:`STLSQ` also chooses the threshold, by an
information criterion (Mangan et al. 2017) or by cross-validation.

References
----------
.. [1] S. L. Brunton, J. L. Proctor, J. N. Kutz, "Discovering governing equations from data
   by sparse identification of nonlinear dynamical systems", PNAS 113, 3932 (2016).
.. [2] N. M. Mangan et al., "Model selection for dynamical systems via sparse regression and
   information criteria", Proc. R. Soc. A 473, 20170009 (2017).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from dynlearn.errors import DiscoveryError, OptionError

__all__ = ["STLSQ", "stlsq", "as_optimizer"]


def _ridge(A: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    """argmin |A x - b|^2 / m + alpha |x|^2 for scaled A (m, k), b (m,)."""
    m, k = A.shape
    if k == 0:
        return np.zeros(0)
    if alpha > 0:
        A = np.vstack([A / math.sqrt(m), math.sqrt(alpha) * np.eye(k)])
        b = np.concatenate([b / math.sqrt(m), np.zeros(k)])
    return np.linalg.lstsq(A, b, rcond=None)[0]


def _stlsq_scaled(A, b, threshold, alpha, max_iter, unbias, active=None):
    """STLSQ on a scaled problem; returns (coefficients (k,), support (k,) bool)."""
    k = A.shape[1]
    support = np.ones(k, bool) if active is None else active.copy()
    xi = np.zeros(k)
    xi[support] = _ridge(A[:, support], b, alpha)
    for _ in range(max_iter):
        keep = support & (np.abs(xi) >= threshold)
        if np.array_equal(keep, support):
            break
        support = keep
        xi = np.zeros(k)
        xi[support] = _ridge(A[:, support], b, alpha)
    if unbias and alpha > 0 and support.any():
        xi = np.zeros(k)
        xi[support] = _ridge(A[:, support], b, 0.0)
    return xi, support


def _scales(Theta: np.ndarray, z: np.ndarray, normalize: bool):
    """(column scales (k,), target scale, active columns (k,) bool) of one target."""
    m = Theta.shape[0]
    if normalize:
        s = np.sqrt(np.einsum("ij,ij->j", Theta, Theta) / m)
        zs = float(np.sqrt(z @ z / m))
    else:
        s, zs = np.ones(Theta.shape[1]), 1.0
    active = s > 0
    s = np.where(active, s, 1.0)
    return s, (zs if zs > 0 else 1.0), active


def _check_threshold(threshold):
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)) \
            or not math.isfinite(threshold) or threshold < 0:
        raise OptionError(f"threshold must be a finite number >= 0 or 'auto', got {threshold!r}")


def stlsq(Theta, z, threshold: float, alpha: float = 1e-6, normalize: bool = True,
          max_iter: int = 20, unbias: bool = True) -> np.ndarray:
    """Sequentially thresholded least squares for ``z ~ Theta @ xi``.

    Parameters
    ----------
    Theta : array_like, shape (m, k)
        Library evaluated at ``m`` samples.
    z : array_like, shape (m,) or (m, q)
        Target(s).
    threshold : float
        With ``normalize`` (default), the smallest relative contribution
        :math:`|\\xi_j|\\,\\mathrm{rms}(\\theta_j)/\\mathrm{rms}(z)` of a kept term; otherwise
        the smallest absolute coefficient (PySINDy's convention).
    alpha : float
        Ridge penalty on the scaled coefficients, relative to the mean squared target
        (``alpha = 1e-6`` only stabilises nearly collinear columns).
    normalize : bool
        Scale columns and target to unit root-mean-square before thresholding.
    max_iter : int
    unbias : bool
        Refit the kept terms without the ridge penalty.

    Returns
    -------
    xi : ndarray, shape (k,) or (k, q)
        Coefficients in the units of ``Theta`` and ``z``; zero for dropped terms.

    Notes
    -----
    Each iteration solves
    :math:`\\min_\\xi \\|A_S \\xi - b\\|^2/m + \\alpha\\|\\xi\\|^2` on the current support ``S``
    (``A``, ``b`` the scaled library and target) and removes the terms with
    :math:`|\\xi_j| <` ``threshold``. It stops when the support no longer changes. Columns
    that vanish at every sample are never selected.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.linspace(-1, 1, 50)
    >>> Theta = np.column_stack([np.ones_like(x), x, x**2])
    >>> np.round(stlsq(Theta, 2 * x**2, threshold=0.05), 12)
    array([0., 0., 2.])
    """
    Theta = np.asarray(Theta, dtype=float)
    z = np.asarray(z, dtype=float)
    if Theta.ndim != 2:
        raise DiscoveryError(f"Theta must be 2-D (samples, terms), got shape {Theta.shape}")
    single = z.ndim == 1
    Z = z[:, None] if single else z
    if Z.ndim != 2 or Z.shape[0] != Theta.shape[0]:
        raise DiscoveryError(f"z must have {Theta.shape[0]} rows like Theta; got shape {z.shape}")
    _check_threshold(threshold)
    if not (np.all(np.isfinite(Theta)) and np.all(np.isfinite(Z))):
        raise DiscoveryError("Theta and z must be finite")
    out = np.zeros((Theta.shape[1], Z.shape[1]))
    for j in range(Z.shape[1]):
        s, zs, active = _scales(Theta, Z[:, j], normalize)
        xi, _ = _stlsq_scaled(Theta / s, Z[:, j] / zs, threshold, alpha, max_iter, unbias,
                              active)
        out[:, j] = xi * zs / s
    return out[:, 0] if single else out


_CRITERIA = ("aic", "aicc", "bic", "cv")


@dataclass(frozen=True)
class STLSQ:
    """Sequentially thresholded least squares, with a fixed or an automatic threshold.

    Parameters
    ----------
    threshold : float, "auto" or sequence of float
        A float: the smallest relative contribution of a kept term (see :func:`stlsq`).
        ``"auto"``: scan a path of thresholds and keep the one ``criterion`` prefers. A
        sequence: scan those thresholds.
    criterion : {"bic", "aic", "aicc", "cv"}
        How ``"auto"`` chooses. For the information criteria, with ``n`` the effective sample
        size, ``k`` the number of kept terms and ``MSE`` the mean squared residual,

        .. math:: \\mathrm{AIC} = n \\log \\mathrm{MSE} + 2k,\\quad
                  \\mathrm{AICc} = \\mathrm{AIC} + \\frac{2k(k+1)}{n-k-1},\\quad
                  \\mathrm{BIC} = n \\log \\mathrm{MSE} + k \\log n.

        ``"cv"``: ``n_folds``-fold cross-validation over contiguous blocks of samples, with the
        one-standard-error rule (the sparsest model whose mean validation error is within
        one standard error of the best).
    alpha : float
        Ridge penalty on the scaled coefficients.
    normalize : bool
        Threshold relative contributions (default) rather than raw coefficients.
    max_iter : int
    unbias : bool
        Refit the kept terms without the penalty.
    n_path : int
        Number of thresholds on the automatic path (log-spaced from ``min_threshold``).
    n_folds : int
        Folds for ``criterion="cv"``.
    min_threshold : float
        Lower end of the automatic path: terms carrying less than this share of the target
        (1 % by default) are never kept by ``"auto"``. Lower it only for targets known to
        sub-percent accuracy.

    Examples
    --------
    >>> import dynlearn as dl
    >>> opt = dl.STLSQ(threshold="auto", criterion="cv", n_folds=4)
    >>> opt.threshold, opt.criterion, opt.alpha
    ('auto', 'cv', 1e-06)
    """

    threshold: float | str | Sequence[float] = "auto"
    criterion: str = "bic"
    alpha: float = 1e-6
    normalize: bool = True
    max_iter: int = 20
    unbias: bool = True
    n_path: int = 60
    n_folds: int = 5
    min_threshold: float = 0.01

    def __post_init__(self):
        t = self.threshold
        if isinstance(t, str):
            if t != "auto":
                raise OptionError(f"STLSQ: threshold must be a number, a list of numbers or "
                                  f"'auto', got {t!r}")
        elif isinstance(t, Iterable):
            ts = tuple(float(v) for v in t)
            if not ts:
                raise OptionError("STLSQ: the list of thresholds is empty")
            for v in ts:
                _check_threshold(v)
            object.__setattr__(self, "threshold", ts)
        else:
            _check_threshold(t)
        if self.criterion not in _CRITERIA:
            raise OptionError(f"STLSQ: criterion must be one of {list(_CRITERIA)}, got "
                              f"{self.criterion!r}")
        if not (isinstance(self.alpha, (int, float)) and self.alpha >= 0):
            raise OptionError(f"STLSQ: alpha must be a number >= 0, got {self.alpha!r}")
        for name, lo in (("max_iter", 1), ("n_path", 2), ("n_folds", 2)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise OptionError(f"STLSQ: {name} must be an integer >= {lo}, got {v!r}")
        if not (isinstance(self.min_threshold, (int, float)) and self.min_threshold > 0):
            raise OptionError(f"STLSQ: min_threshold must be > 0, got {self.min_threshold!r}")

    # --- the path -------------------------------------------------------------------------
    def _grid(self, A, b, active) -> np.ndarray:
        if not isinstance(self.threshold, str):
            return np.array(sorted(np.atleast_1d(self.threshold)), dtype=float)
        xi = np.zeros(A.shape[1])
        xi[active] = _ridge(A[:, active], b, self.alpha)
        top = float(np.max(np.abs(xi), initial=0.0))
        if top <= self.min_threshold:
            return np.array([self.min_threshold])
        # log-spaced up to just above the largest contribution (no term left). It starts
        # at min_threshold, not 0: learned terms are never exact, and with dense samples an
        # information criterion rewards tiny terms that fit the network's own error.
        return np.geomspace(self.min_threshold, 1.01 * top, self.n_path)

    def _fit_one(self, A, b, n_eff: float) -> dict:
        m, k = A.shape
        active = np.einsum("ij,ij->j", A, A) > 0
        grid = self._grid(A, b, active)
        if isinstance(self.threshold, (int, float)):
            xi, sup = _stlsq_scaled(A, b, float(self.threshold), self.alpha, self.max_iter,
                                    self.unbias, active)
            mse = float(np.mean((A @ xi - b) ** 2))
            return dict(xi=xi, threshold=float(self.threshold), path=[
                dict(threshold=float(self.threshold), n_terms=int(sup.sum()), mse=mse,
                     score=np.nan, selected=True)])
        fits = [_stlsq_scaled(A, b, lam, self.alpha, self.max_iter, self.unbias, active)
                for lam in grid]
        mses = np.array([np.mean((A @ xi - b) ** 2) for xi, _ in fits])
        ks = np.array([sup.sum() for _, sup in fits])
        if self.criterion == "cv":
            score, se = self._cv_scores(A, b, grid, active)
            ok = np.flatnonzero(score <= score[np.argmin(score)] + se[np.argmin(score)])
            best = int(ok[np.argmax(grid[ok])])         # sparsest within one SE
        else:
            score = _information(mses, ks, n_eff, self.criterion)
            best_score = np.min(score)
            # ties (within rounding) go to the larger threshold, i.e. the sparser model
            best = int(np.flatnonzero(score <= best_score + 1e-9 * max(1.0, abs(best_score)))[-1])
        # report the middle of the run of thresholds giving the chosen support
        sup = fits[best][1]
        same = [i for i in range(len(grid)) if np.array_equal(fits[i][1], sup)]
        lo, hi = grid[min(same)], grid[max(same)]
        lam = float(math.sqrt(lo * hi) if lo > 0 else hi / 2 if hi > 0 else 0.0)
        path = [dict(threshold=float(g), n_terms=int(kk), mse=float(ms), score=float(sc),
                     selected=bool(i == best))
                for i, (g, kk, ms, sc) in enumerate(zip(grid, ks, mses, score))]
        return dict(xi=fits[best][0], threshold=lam, path=path)

    def _cv_scores(self, A, b, grid, active):
        m = A.shape[0]
        folds = np.array_split(np.arange(m), self.n_folds)
        err = np.zeros((self.n_folds, grid.size))
        for f, test in enumerate(folds):
            train = np.ones(m, bool)
            train[test] = False
            for i, lam in enumerate(grid):
                xi, _ = _stlsq_scaled(A[train], b[train], lam, self.alpha, self.max_iter,
                                      self.unbias, active)
                err[f, i] = np.mean((A[test] @ xi - b[test]) ** 2)
        return err.mean(0), err.std(0, ddof=1) / math.sqrt(self.n_folds)

    def fit(self, Theta, Z, n_effective: float | None = None) -> dict:
        """Fit every column of ``Z``; returns coefficients and the threshold path.

        Parameters
        ----------
        Theta : ndarray, shape (m, k)
        Z : ndarray, shape (m, q)
        n_effective : float, optional
            Sample size used by the information criteria (default ``m``). Dense samples of
            a smooth learned term carry far less information than their number suggests;
            :func:`recover` passes the number of measured time points.

        Returns
        -------
        dict
            ``coef`` (k, q) in original units, ``thresholds`` (q,), ``path`` (list of lists
            of dicts, one per output).
        """
        Theta = np.asarray(Theta, float)
        Z = np.asarray(Z, float)
        m = Theta.shape[0]
        n_eff = float(m if n_effective is None else n_effective)
        coef = np.zeros((Theta.shape[1], Z.shape[1]))
        thresholds, paths = [], []
        for j in range(Z.shape[1]):
            s, zs, _ = _scales(Theta, Z[:, j], self.normalize)
            r = self._fit_one(Theta / s, Z[:, j] / zs, n_eff)
            coef[:, j] = r["xi"] * zs / s
            thresholds.append(r["threshold"])
            paths.append(r["path"])
        return dict(coef=coef, thresholds=np.array(thresholds), path=paths)

    def supports(self, Theta, z, thresholds: Iterable[float]
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
        """The terms STLSQ keeps for one target at each of the given thresholds.

        Uses this optimizer's ``alpha``, ``normalize``, ``max_iter`` and ``unbias``, as
        :meth:`fit` does at a fixed threshold.

        Parameters
        ----------
        Theta : ndarray, shape (m, k)
        z : ndarray, shape (m,)
        thresholds : iterable of float

        Returns
        -------
        list of (support, coef)
            Per threshold, in order: the kept terms (bool, shape (k,)) and the coefficients
            in the units of ``Theta`` and ``z`` (zero off the support).
        """
        Theta = np.asarray(Theta, float)
        z = np.asarray(z, float)
        s, zs, active = _scales(Theta, z, self.normalize)
        A, b = Theta / s, z / zs
        out = []
        for lam in thresholds:
            xi, sup = _stlsq_scaled(A, b, float(lam), self.alpha, self.max_iter, self.unbias,
                                    active)
            out.append((sup, xi * zs / s))
        return out


def _information(mse: np.ndarray, k: np.ndarray, n: float, criterion: str) -> np.ndarray:
    # floor the MSE so that exact fits (noise-free samples) tie and the penalty decides
    mse = np.maximum(mse, 1e-14)
    base = n * np.log(mse)
    if criterion == "bic":
        return base + k * math.log(max(n, 2.0))
    aic = base + 2 * k
    if criterion == "aic":
        return aic
    denom = n - k - 1
    return np.where(denom > 0, aic + 2 * k * (k + 1) / np.where(denom > 0, denom, 1), np.inf)


def as_optimizer(optimizer) -> STLSQ:
    """The :class:`STLSQ` a user's ``optimizer=`` argument stands for.

    Parameters
    ----------
    optimizer : STLSQ, float or None
        None means ``STLSQ()`` (automatic threshold by BIC); a number is a fixed threshold.

    Returns
    -------
    STLSQ

    Raises
    ------
    OptionError
        For anything else.
    """
    if optimizer is None:
        return STLSQ()
    if isinstance(optimizer, STLSQ):
        return optimizer
    if isinstance(optimizer, (int, float)) and not isinstance(optimizer, bool):
        return STLSQ(threshold=float(optimizer))
    raise OptionError(f"optimizer must be dl.STLSQ(...) (or a threshold), got {optimizer!r}")
