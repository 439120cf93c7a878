"""Uncertainty of fitted parameters and predictions, from the residual Jacobian.

How it works
------------
Near the optimum the residuals are linear in the optimizer's coordinates ``x``:
``r(x) ~ r + J (x - x*)``. With residuals scaled by their noise levels, ``J^T J`` is the
Fisher information and its inverse the asymptotic covariance of ``x``. Where no noise level
is known (plain least squares, log residuals), the covariance is scaled by the residual
variance ``s^2 = SSR / (n - p)``, as least-squares practice does, and intervals use
Student's t with ``n - p`` degrees of freedom.

Intervals are computed in the optimizer's coordinates and mapped to physical units, so a
log-transformed parameter gets an asymmetric interval ``exp(z +- q se_z)`` that never
crosses zero, and its standard error in physical units is ``value * se_z`` (the delta
method). Predictions get pointwise bands from the observables' sensitivities ``G``:
``var = diag(G C G^T)``.

References
----------
.. [1] G. A. F. Seber, C. J. Wild, "Nonlinear Regression", Wiley (1989), ch. 5.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fisher_covariance", "interval", "correlation_from_covariance"]


def fisher_covariance(J: np.ndarray, scale: float = 1.0, rcond: float = 1e-12):
    """Covariance ``scale * (J^T J)^+`` and whether ``J`` had full column rank.

    Parameters
    ----------
    J : ndarray, shape (n_residuals, p)
    scale : float
        ``s^2`` (1 when residuals are scaled by known or estimated noise levels).
    rcond : float
        Singular values below ``rcond * s_max`` are treated as zero.

    Returns
    -------
    cov : ndarray, shape (p, p)
        Entries along unidentifiable directions are set to ``inf`` on the diagonal.
    full_rank : bool
    """
    J = np.asarray(J, dtype=float)
    p = J.shape[1]
    if p == 0:
        return np.zeros((0, 0)), True
    # Only V is needed: the thin SVD is O(n p^2) where the full one builds an n x n U (seconds
    # and gigabytes for a few thousand residuals). Fewer rows than columns: the full V holds
    # the null directions the thin one leaves out.
    _, s, Vt = np.linalg.svd(J, full_matrices=J.shape[0] < p)
    r = int(np.sum(s > rcond * s[0])) if s.size and s[0] > 0 else 0
    Vr = Vt[:r].T
    cov = scale * (Vr / s[:r] ** 2) @ Vr.T
    full = r == p
    if not full:
        # a parameter with a component along a null direction is not determined by the data
        undetermined = np.sum(Vt[r:] ** 2, axis=0) > 1e-8
        cov[undetermined, :] = np.nan
        cov[:, undetermined] = np.nan
        cov[undetermined, undetermined] = np.inf
    return cov, full


def correlation_from_covariance(cov: np.ndarray) -> np.ndarray:
    sd = np.sqrt(np.diag(cov))
    with np.errstate(invalid="ignore", divide="ignore"):
        return cov / np.outer(sd, sd)


def interval(z, se, is_log, q):
    """Interval of a coordinate ``z +- q se`` mapped to physical units."""
    z, se = np.asarray(z, dtype=float), np.asarray(se, dtype=float)
    lo, hi = z - q * se, z + q * se
    with np.errstate(over="ignore", invalid="ignore"):
        lo = np.where(is_log, np.exp(lo), lo)
        hi = np.where(is_log, np.exp(hi), hi)
    return lo, hi


def quantile(level: float, dof: int | None) -> float:
    """Two-sided quantile: Student's t with ``dof`` degrees of freedom, or normal."""
    from scipy import special  # scipy.stats costs ~1 s to import; special is enough
    a = 0.5 + level / 2.0
    if dof is None:
        return float(special.ndtri(a))
    if dof <= 0:
        return float("nan")
    return float(special.stdtrit(dof, a))
