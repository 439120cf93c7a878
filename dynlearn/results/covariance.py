"""Uncertainty of fitted parameters and predictions, from the residual Jacobian.

How it works
------------
Near the optimum the residuals are linear in the optimizer's coordinates ``x``:
``r(x) ~ r + J (x - x*)``. With residuals scaled by their noise levels, ``J^T J`` is the
Fisher information and its inverse the asymptotic covariance of ``x``. Where no noise level
is known (plain least squares, log residuals), the covariance is scaled by the residual
variance ``s^2 = SSR / (n - p)``, as least-squares practice does, and intervals use
Student's t with ``n - p`` degrees of freedom.

The Jacobian at the optimum is the one the optimizer left when it left one (free); else it
is computed once, by the fit's own Jacobian method (the one place choosing it,
:mod:`dynlearn.sensitivity.choice`: the discrete tangent for RK45/RK23, forward
sensitivities otherwise), within a time budget (:func:`optimum_jacobian`): a stiff model's
sensitivities at a multi-start optimum can take far longer than anything the fit did, and
a fit never hangs for its standard errors. Past the budget the result comes without them
and says why.

Intervals are computed in the optimizer's coordinates and mapped to physical units, so a
log-transformed parameter gets an asymmetric interval ``exp(z +- q se_z)`` that never
crosses zero, and its standard error in physical units is ``value * se_z`` (the delta
method). Intervals are clipped to the parameter's bounds; a parameter at a bound is flagged
(``at_bound``) and its clipped interval is one-sided and conservative (see
:mod:`dynlearn.results.diagnostics`). Predictions get pointwise bands from the observables'
sensitivities ``G``: ``var = diag(G C G^T)``.

References
----------
.. [1] G. A. F. Seber, C. J. Wild, "Nonlinear Regression", Wiley (1989), ch. 5.
"""

from __future__ import annotations

import time

import numpy as np

from dynlearn.core.parameters import ParameterSpace
from dynlearn.errors import TimeLimitError
from dynlearn.objective.losses import Rejected
from dynlearn.results.diagnostics import bound_flags
from dynlearn.solve import current_deadline, deadline

__all__ = ["COVARIANCE_JACOBIANS", "COVARIANCE_MIN_SECONDS", "correlation_from_covariance",
           "covariance_budget", "covariance_frames", "fisher_covariance", "interval",
           "optimum_jacobian", "parameter_covariance", "params_table", "quantile"]

#: The Jacobian for the standard errors may take this many times the fit's own mean cost of
#: one derivative evaluation (a Jacobian or a gradient) ...
COVARIANCE_JACOBIANS = 20
#: ... and at least this many seconds (the timings of a quick fit are too noisy to scale).
COVARIANCE_MIN_SECONDS = 10.0


def covariance_budget(elapsed: float, outcomes) -> float:
    """Seconds the Jacobian at the optimum may take: :data:`COVARIANCE_JACOBIANS` times
    the fit's mean time per derivative evaluation, at least :data:`COVARIANCE_MIN_SECONDS`.

    Parameters
    ----------
    elapsed : float
        Wall time of the fit (all starts).
    outcomes : list
        The starts, with their counts ``njev`` and ``ngev`` (``nfev`` when the optimizer
        evaluated no derivative).

    Returns
    -------
    float
    """
    n = sum(int(o.njev) + int(o.ngev) for o in outcomes)
    if n == 0:
        n = sum(int(o.nfev) for o in outcomes)
    per = float(elapsed) / max(n, 1)
    return max(COVARIANCE_MIN_SECONDS, COVARIANCE_JACOBIANS * per)


def optimum_jacobian(obj, x, final=None, budget: float | None = None):
    """Residuals and Jacobian at a fit's optimum, within a time budget.

    Parameters
    ----------
    obj : FitObjective
    x : ndarray
        The optimum.
    final : tuple, optional
        ``(r, J)`` the optimizer left at ``x``: used as is (nothing is computed).
    budget : float, optional
        Seconds the computation may take. A deadline already in force (a fit's
        ``max_time``) is kept instead: the user's own limit.

    Returns
    -------
    r, J : ndarray or None
        ``None`` when they could not be had.
    why : str
        Why not, when they were cut off by the time limit (``""`` otherwise; a failed solve
        at ``x`` is left for :func:`~dynlearn.results.diagnostics.diagnose` to describe).
    """
    if final is not None:
        return final[0], final[1], ""
    limit = current_deadline()
    own = limit is None and budget is not None
    at = time.time() + budget if own else limit
    try:
        with deadline(at):
            r, J = obj.jacobian(x)
    except Rejected:
        return None, None, ""
    except TimeLimitError:
        if own:
            why = (f"the residual Jacobian at the optimum was not computed within its time "
                   f"budget of {budget:.3g} s ({COVARIANCE_JACOBIANS} times the fit's mean time "
                   f"per derivative evaluation, at least {COVARIANCE_MIN_SECONDS:g} s); with "
                   "max_time= a fit gives it the time left until that limit instead")
        else:
            why = ("the residual Jacobian at the optimum was not computed: the fit's time "
                   "limit (max_time) ran out during it")
        return None, None, why
    return r, J, ""


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
    """The correlation matrix of a covariance matrix."""
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


def parameter_covariance(obj, r: np.ndarray, J: np.ndarray):
    """The covariance of the optimizer's coordinates ``x`` at a fit's optimum.

    Parameters
    ----------
    obj : FitObjective
        The fit's objective (its loss, data count, parameter layout, known noise levels).
    r, J : ndarray
        Residuals and residual Jacobian at the optimum (or any ``A`` with
        ``A^T A = J^T J``).

    Returns
    -------
    cov : ndarray or None
        ``None`` when the residual variance cannot be estimated (no degrees of freedom left).
    dof : int or None
        Degrees of freedom of the Student's t quantile (``None``: normal quantile).
    scaled : bool
        Whether the covariance was scaled by the residual variance ``s^2`` (no noise level
        known or estimated).
    """
    n, p = obj.n_data, obj.space.size
    scaled = obj.profiled_variance
    dof = n - p
    s2 = 1.0
    if scaled:
        if dof <= 0:
            return None, dof, scaled
        rd = r[:n]
        s2 = float(rd @ rd) / dof
    cov, _ = fisher_covariance(J, s2)
    return cov, (dof if scaled else None), scaled


def params_table(model, space: ParameterSpace, x, cov_x, dof, scaled, level):
    """The parameter table of a fit (:attr:`FitResult.params
    <dynlearn.results.result.FitResult.params>`): one row per physical parameter (fixed ones
    included) and per estimated initial state, with value, stderr, the ``level`` interval
    (``ci_lower``, ``ci_upper``, clipped to the bounds), initial value, bounds, ``fixed``,
    ``transform``, ``kind`` and ``at_bound`` (``"lower"``, ``"upper"`` or ``""``; see
    :func:`~dynlearn.results.diagnostics.bound_flags`)."""
    import pandas as pd
    vals = space.physical(x)
    se_x = np.full(space.size, np.nan)
    if cov_x is not None:
        se_x = np.sqrt(np.abs(np.diag(cov_x)))
        se_x[~np.isfinite(np.diag(cov_x))] = np.nan
    q = quantile(level, dof if scaled else None)
    lo, hi = interval(x, se_x, space.is_log, q)
    # an interval never leaves the box: at a bound this makes it one-sided (conservative)
    pmin = np.array([p.min if p is not None else -np.inf for p in space.params])
    pmax = np.array([p.max if p is not None else np.inf for p in space.params])
    lo = np.where(np.isnan(lo), lo, np.maximum(lo, pmin))
    hi = np.where(np.isnan(hi), hi, np.minimum(hi, pmax))
    se_phys = se_x * space.dphysical(x)
    flags = bound_flags(space, x)
    rows = {}
    pos = {name: k for k, name in enumerate(space.names)}
    for s in model.param_symbols:
        p = model.params[s]
        if s.name in pos:
            k = pos[s.name]
            rows[s.name] = dict(value=vals[k], stderr=se_phys[k], ci_lower=lo[k], ci_upper=hi[k],
                                initial=p.value, min=p.min, max=p.max, fixed=False,
                                transform=p.transform, kind="parameter", at_bound=flags[k])
        else:
            rows[s.name] = dict(value=p.value, stderr=np.nan, ci_lower=np.nan, ci_upper=np.nan,
                                initial=p.value, min=p.min, max=p.max, fixed=True,
                                transform=p.transform, kind="parameter", at_bound="")
    for k in range(space.size):
        if space.kinds[k] == "y0":
            p = space.params[k]
            rows[space.names[k]] = dict(value=vals[k], stderr=se_phys[k], ci_lower=lo[k],
                                        ci_upper=hi[k], initial=p.value, min=p.min, max=p.max,
                                        fixed=False, transform=p.transform, kind="initial state",
                                        at_bound=flags[k])
    return pd.DataFrame.from_dict(rows, orient="index")


def covariance_frames(space: ParameterSpace, x, cov_x):
    """Covariance and correlation of the non-network parameters in physical units
    (the optimizer's covariance mapped through the transforms), or ``(None, None)``."""
    import pandas as pd
    keep = [k for k in range(space.size) if space.kinds[k] != "weight"]
    if cov_x is None or not keep:
        return None, None
    D = space.dphysical(x)[keep]
    C = cov_x[np.ix_(keep, keep)] * np.outer(D, D)
    names = [space.names[k] for k in keep]
    return (pd.DataFrame(C, index=names, columns=names),
            pd.DataFrame(correlation_from_covariance(C), index=names, columns=names))
