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

With noise formulas (``sigma={"x": "a + b*x"}``, :mod:`dynlearn.objective.noise`) the
levels depend on the parameters, so the Fisher information gains ``2 (d sigma)(d sigma)^T /
sigma^2`` per value, in the model's coordinates (through the predictions the formula reads)
and in the noise parameters: :func:`noise_fisher_factor` builds a factor ``A`` of it, the
covariance of both together is the inverse of ``A^T A`` (:func:`optimum_system` computes
it within the same budget), and :func:`add_noise_params` gives the noise parameters their
rows of the parameter table. Closed-form noise groups (constant levels) do not depend on
the parameters, so their information is orthogonal to them and the model's block is
unchanged by them.

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
from types import SimpleNamespace

import numpy as np

from dynlearn.core.parameters import ParameterSpace
from dynlearn.errors import TimeLimitError
from dynlearn.objective.losses import Rejected
from dynlearn.objective.objective import SOLVE_FAILURES
from dynlearn.results.diagnostics import bound_flags
from dynlearn.sensitivity.choice import observable_jacobian
from dynlearn.solve import current_deadline, deadline

__all__ = ["COVARIANCE_JACOBIANS", "COVARIANCE_MIN_SECONDS", "add_noise_params",
           "correlation_from_covariance", "covariance_budget", "covariance_frames",
           "fisher_covariance", "interval", "noise_fisher_factor", "noise_param_notes",
           "optimum_jacobian",
           "optimum_system", "parameter_covariance", "params_table", "quantile",
           "split_noise_covariance"]

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


def _within_budget(compute, budget: float | None):
    """``(compute(), "")`` within the time budget of :func:`optimum_jacobian`, or ``(None,
    why)`` when it ran out (a deadline already in force is kept instead); ``Rejected``
    (a failed solve) gives ``(None, "")``."""
    limit = current_deadline()
    own = limit is None and budget is not None
    at = time.time() + budget if own else limit
    try:
        with deadline(at):
            return compute(), ""
    except Rejected:
        return None, ""
    except TimeLimitError:
        if own:
            why = (f"the residual Jacobian at the optimum was not computed within its time "
                   f"budget of {budget:.3g} s ({COVARIANCE_JACOBIANS} times the fit's mean time "
                   f"per derivative evaluation, at least {COVARIANCE_MIN_SECONDS:g} s); with "
                   "max_time= a fit gives it the time left until that limit instead")
        else:
            why = ("the residual Jacobian at the optimum was not computed: the fit's time "
                   "limit (max_time) ran out during it")
        return None, why


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
    out, why = _within_budget(lambda: obj.jacobian(x), budget)
    if out is None:
        return None, None, why
    return out[0], out[1], ""


def noise_fisher_factor(obj, x):
    """Residuals, residual Jacobian and a factor of the Fisher information of a fit with
    noise formulas, in the model's coordinates ``x`` and the noise parameters ``p``.

    Each value ``y`` with a formula level is Gaussian on its observable's residual scale,
    mean ``mu = g(h(x))`` and standard deviation ``sigma(h(x), p) / sqrt(w)`` (``g``: the
    transform, ``w``: its weight); its Fisher information is
    ``w (d mu)(d mu)^T / sigma^2 + 2 (d sigma)(d sigma)^T / sigma^2`` in ``eta = (x, p)``,
    with ``d sigma / d x = sum_j d sigma / d h_j * d h_j / d x`` over the predictions the
    formula reads. The first term is a row of the residual Jacobian ``J`` (levels held at
    their values at ``x``), the second a row ``sqrt(2) d sigma / sigma``; the values of
    the other observables (known levels, closed-form noise groups, whose levels do not
    depend on ``eta``) give their rows of ``J`` only. So the information is ``A^T A`` with

    ``A = [[J, 0], [sqrt(2) d sigma / d x / sigma, sqrt(2) d sigma / d p / sigma]]``

    (``J`` with its L2 rows, as the fit's). Values of weight 0 carry no information.
    Everything comes from one solve with the predictions' sensitivities per experiment,
    by the fit's sensitivity method.

    Parameters
    ----------
    obj : FitObjective
        The fit's objective, with noise formulas and the levels set at ``x``.
    x : ndarray
        The point (the optimum), in the optimizer's coordinates.

    Returns
    -------
    r : ndarray, shape (n_residuals,)
        The residuals at ``x``.
    J : ndarray, shape (n_residuals, size)
        Their Jacobian in ``x`` (as :meth:`FitObjective.jacobian` gives it).
    A : ndarray, shape (n_residuals + n_formula_values, size + n_noise_params)
        The factor of the Fisher information of ``(x, p)``.

    Raises
    ------
    Rejected
        When the predictions or their sensitivities cannot be computed at ``x``.
    """
    nf = obj.noise_formulas
    sp_ = obj.space
    x = np.asarray(x, dtype=float)
    theta, y0s = sp_.unpack(x)
    dphys = sp_.dphysical(x)
    n_theta, size, q = sp_.n_theta, sp_.size, nf.n_params
    p = np.asarray(obj.sigma_hat[obj.n_groups:], dtype=float)
    informative = np.asarray(obj.weights) > 0
    rs, Js, Bs = [], [], []
    for i, (y0, idx) in enumerate(zip(y0s, sp_.y0_index)):
        b = obj.bound[i]
        try:
            prob = obj.experiment_problem(i, theta, y0)
            with np.errstate(all="ignore"):
                H, dH = observable_jacobian(prob, obj.sensitivity, wrt_y0=bool(idx))
        except SOLVE_FAILURES as exc:
            raise Rejected(str(exc)) from None
        if not (np.all(np.isfinite(H[b.mask])) and np.all(np.isfinite(dH[b.mask]))):
            raise Rejected("non-finite prediction or sensitivity")
        # d h / d x: theta's columns, then this experiment's estimated initial states
        D = np.zeros(H.shape + (size,))
        D[..., :n_theta] = dH[..., :n_theta]
        for s, k in idx:
            D[..., k] = dH[..., n_theta + s]
        D *= dphys[None, None, :]
        rs.append(obj.data_residuals(i, H))
        Js.append(obj.data_residual_jacobian(i, H, D))
        free = b.mask & np.isnan(obj.known[i]) & nf.columns[None, :] & informative[None, :]
        sig = nf.sigma(H, b.t, p)
        dsig_dh = nf.sigma_jacobian(H, b.t, p)
        dsig_dp = nf.sigma_param_jacobian(H, b.t, p)
        for k, Dh in dsig_dh.items():
            rows = free[:, k]
            if not rows.any():
                continue
            gx = np.zeros((int(rows.sum()), size))
            for j in range(H.shape[1]):
                c = Dh[rows, j]
                if np.any(c != 0):      # only the predictions the formula reads
                    gx += c[:, None] * D[rows, j, :]
            Bs.append(np.sqrt(2.0) / sig[rows, k][:, None] * np.hstack([gx, dsig_dp[k][rows]]))
    rs.append(obj.regularization(x))
    Js.append(obj.regularization_jacobian(x))
    r, J = np.concatenate(rs), np.vstack(Js)
    B = np.vstack(Bs) if Bs else np.zeros((0, size + q))
    if not np.all(np.isfinite(B)):
        raise Rejected("non-finite noise level or derivative at the optimum")
    A = np.vstack([np.hstack([J, np.zeros((J.shape[0], q))]), B])
    return r, J, A


def optimum_system(obj, x, final=None, budget: float | None = None):
    """:func:`optimum_jacobian`, and the factor of the Fisher information the covariance
    comes from: ``J`` itself, or with noise formulas that of the model's coordinates and
    the noise parameters together (:func:`noise_fisher_factor`; then ``final`` is not
    used, since it lacks the derivatives of the levels), within the same time budget.

    Returns
    -------
    r, J, A : ndarray or None
    why : str
        As :func:`optimum_jacobian`'s.
    """
    if obj.noise_formulas is None:
        r, J, why = optimum_jacobian(obj, x, final, budget)
        return r, J, J, why
    out, why = _within_budget(lambda: noise_fisher_factor(obj, x), budget)
    if out is None:
        return None, None, None, why
    return out[0], out[1], out[2], ""


def split_noise_covariance(obj, cov):
    """``(cov_x, cov_p)``: the covariance of the model's coordinates and that of the noise
    parameters of formulas (``None`` without formulas) from the joint covariance that
    :func:`parameter_covariance` gives with the factor of :func:`optimum_system`."""
    if cov is None:
        return None, None
    size = obj.space.size
    if obj.noise_formulas is None or cov.shape[0] == size:
        return cov, None
    return cov[:size, :size], cov[size:, size:]


def add_noise_params(table, obj, cov_p, level: float):
    """The parameter table ``table`` (:func:`params_table`) with a row for each noise
    parameter of formulas appended (``table`` itself without formulas): value, standard
    error (from ``cov_p``, NaN when it is None or not finite there), the
    ``level`` interval ``value +- z se`` (normal quantile) clipped to the parameter's
    bounds, start, bounds, ``kind = "noise parameter"`` and ``at_bound`` (as
    :func:`~dynlearn.results.diagnostics.bound_flags` judges the model's)."""
    import pandas as pd
    nf = obj.noise_formulas
    if nf is None or not nf.n_params:
        return table
    vals = np.asarray(obj.sigma_hat[obj.n_groups:], dtype=float)
    se = np.full(nf.n_params, np.nan)
    if cov_p is not None:
        d = np.diag(cov_p)
        se = np.where(np.isfinite(d), np.sqrt(np.abs(d)), np.nan)
    q = quantile(level, None)
    lo = np.maximum(vals - q * se, nf.lower)
    hi = np.minimum(vals + q * se, nf.upper)
    lo[np.isnan(se)] = np.nan
    hi[np.isnan(se)] = np.nan
    box = SimpleNamespace(size=nf.n_params, lower=nf.lower, upper=nf.upper, x0=nf.start)
    flags = bound_flags(box, vals)
    rows = {n: dict(value=vals[j], stderr=se[j], ci_lower=lo[j], ci_upper=hi[j],
                    initial=nf.start[j], min=nf.lower[j], max=nf.upper[j], fixed=False,
                    transform="identity", kind="noise parameter", at_bound=flags[j])
            for j, n in enumerate(nf.names)}
    return pd.concat([table, pd.DataFrame.from_dict(rows, orient="index")])


def noise_param_notes(obj, cov_p) -> dict[str, str]:
    """The parameter table's notes for noise parameters of formulas whose standard error
    is n/a although the covariance was computed (``cov_p`` not None): the data do not
    determine them (e.g. two constant terms of one formula). The model's parameters get
    theirs from :func:`~dynlearn.results.diagnostics.diagnose`."""
    if cov_p is None or obj.noise_formulas is None:
        return {}
    return {n: ("not determined by the data: the noise levels do not separate it from the "
                "other fitted values") for n, v in zip(obj.noise_formulas.names, np.diag(cov_p))
            if not np.isfinite(v)}


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
        ``A^T A = J^T J``), or the factor of :func:`optimum_system` (with noise formulas:
        the covariance is then that of the model's coordinates and the noise parameters,
        see :func:`split_noise_covariance`).

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
