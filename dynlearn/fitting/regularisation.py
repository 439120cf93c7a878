"""The L2 strength of a network model chosen from the data: ``dl.fit``'s default
``l2="gcv"`` (generalised cross-validation) and ``l2="auto"`` (the discrepancy principle).

Why
---
An over-parameterised network can fit the noise: the diagnostics warn when a network model
ends well below the noise level (:mod:`dynlearn.results.diagnostics`). A fixed strength
cannot be right for every problem: the penalty ``l2 |w|^2`` is measured in the residuals'
units (data units for ``loss="ls"`` without ``sigma``, chi-square units with it), and the
right balance depends on the noise, the data and the network.

The discrepancy principle, within the noise level's uncertainty (``l2="auto"``)
------------------------------------------------------------------------------
The fit with no penalty runs first, exactly as ``l2=0`` runs. Its fit-to-noise ratio
``F = chi^2 / (n - k)`` and ``z``, ``log F`` in its standard deviations, are those of the
below-noise warning (:func:`fit_to_noise`; the chi-square against the known noise levels,
else against levels estimated from the data alone; ``k`` the fitted values other than
network weights). The fit is *below the noise level* exactly when the warning would say so:
``F < BELOW_NOISE`` and ``z`` below the warning's significance level, with residuals that
look like noise (smooth residuals mean noise-free data). Only then is a penalty chosen:

* the first strength is where the fit linearised about the unpenalised optimum reaches a
  little above the warning's edge (:func:`first_strength`; no extra model evaluations);
* a bracket search in ``log l2`` follows, every fit warm-started from the strongest penalty
  known to leave the fit below the noise level, with a short Levenberg-Marquardt run
  (:func:`path_optimizer`): up by :data:`PATH_FACTOR` while below the noise level, down
  while past it (``F > 1`` and ``z > OVER``), then halving the bracket; at most
  :data:`MAX_PATH` penalised fits;
* the smallest strength whose fit is neither below nor past the noise level is chosen
  (else the path's fit with the smallest ``|z|``): the least penalty consistent with the
  noise, since a network that is also early-stopped (the default optimizer's polish) is
  honestly somewhat below ``F = 1``.

Pure-physics models are never touched. When no noise level is known and none can be
estimated from the data, the rule cannot apply: ``l2 = 0``, and the report says why.

Measured (``benchmarks/bench_regularisation.py``; figures in ``docs/fitting.md``): where a
network visibly follows the noise (a network of time beside a decay, known noise level), the
rule cuts the error against the noise-free truth 2.5-4.6 times for 10-20 % more evaluations.
On the LV-UDE the unpenalised fit is below the noise level yet already close to the truth
(the network's effective degrees of freedom make that honest), and the penalty makes the
error 4-24 % larger; with the noise level estimated from its coarsely sampled data (1.2-1.6
times too high) up to 3 times larger. That is why it is not the default.

Generalised cross-validation (``l2="gcv"``, the default)
--------------------------------------------------------
``n - k`` does not count the network's own degrees of freedom, which is why a network fit
well below ``F = 1`` can be honest. :class:`PenaltyPath` counts them: about a fitted point,
the penalised problem linearised in the residual Jacobian the fit already has gives, for
every strength at once (one SVD), the effective degrees of freedom ``df(l2)`` (the trace of
the hat matrix) and the data cost ``rss(l2)``. :func:`choose_l2_gcv` minimises
``n rss / (n - df)^2``, which needs no noise level (so no estimate that comes out 1.2-1.6
times too high on coarse data), refitting and re-linearising until the strength settles.
Where GCV's minimum is a fit through the data points (``n - df <`` :data:`INTERPOLATING`:
``rss`` and ``n - df`` vanish together, and the limit at ``l2 -> 0`` can undercut every
honest strength) it cannot choose, and the discrepancy principle does.
:meth:`PenaltyPath.discrepancy` solves ``rss / (n - df) = sigma^2`` for a known level.
Measured on six systems and three noise seeds each (``benchmarks/bench_regularisation.py``,
``docs/fitting.md``), GCV cuts the error 2-4.6x where the network follows the noise (a
network of time, the pendulum's extrapolation) and changes little on the LV-UDE; it makes
one oscillator seed twice as wrong (still a quarter of the noise level) and one epidemic
seed's extrapolation 7x worse (from 0.1 % to 0.6 % of the signal). Better on the whole,
never losing an exact recovery in the discovery battery, and needing no noise level, it
is the default. It can leave a network fit below the noise level where the network's
effective degrees of freedom explain it (the LV-UDE's); the below-noise warning of a
penalised fit counts them (``chi^2 / (n - df)``, ``df`` the ``"dof"`` recorded for the
chosen strength, :func:`penalised_dof` for a strength given or chosen otherwise), so it
does not warn about that. Taking the larger of the two rules' strengths as the default
was measured too, and lost on the Lotka-Volterra problems (``docs/fitting.md``).

The choice is reported in ``result.config["regularisation"]`` (saved with the result):
``{"l2": chosen, "rule": "gcv", "discrepancy" or "none", "path": [...], "reason": ...}``
and, from GCV, ``"dof"``: the effective degrees of freedom at the chosen strength (the
path's entries: ``{"l2", "gcv", "dof", "cost", "evaluations"}`` for GCV,
``{"l2", "fit_to_noise", "z", "cost", "evaluations"}`` for the discrepancy principle), and
in one line of ``result.summary()``; ``result.config["l2"]`` is the strength chosen, which
refits (profiles) use. An explicit ``l2=`` (a number, 0 included) gives exactly the fit it
always gave.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special

from dynlearn.errors import OptionError
from dynlearn.fitting.starts import StartOutcome, StartSpec, run_start
from dynlearn.objective.objective import L2_AUTO, L2_GCV, FitObjective, Rejected
from dynlearn.optimizers import LBFGSB, LevenbergMarquardt, Optimizer, Status
from dynlearn.results.diagnostics import BELOW_NOISE, BELOW_NOISE_LEVEL, ROUGHNESS, diagnose

__all__ = ["AUTO", "BRACKET", "GCV", "GCV_SETTLED", "INTERPOLATING",
           "LINEARISED_MAX", "MAX_GCV_FITS", "MAX_PATH", "OVER", "PATH_FACTOR",
           "PATH_ITERATIONS", "PenaltyPath",
           "check_l2", "choose_l2", "choose_l2_gcv",
           "effective_dof", "first_strength", "fit_to_noise", "path_optimizer",
           "penalised_dof"]

#: the value of ``l2=`` that asks for the discrepancy principle (:func:`choose_l2`)
AUTO = L2_AUTO
#: a fit is past the noise level (too penalised) when ``log F`` is more than this many of
#: its standard deviations above 0 (and ``F > 1``)
OVER = 1.0
#: the path stops when the bracket around the noise level is narrower than this ratio
BRACKET = 1.5
#: ratio of successive strengths along the path
PATH_FACTOR = 4.0
#: the most penalised fits along the path
MAX_PATH = 8
#: the most fitted values for which the path's first strength comes from the linearised fit
LINEARISED_MAX = 400
#: Levenberg-Marquardt iterations per warm-started fit along the path (at most)
PATH_ITERATIONS = 100


def check_l2(l2) -> float | str:
    """``l2`` as :func:`dynlearn.fit` takes it: ``"gcv"`` (generalised cross-validation, the
    default: :func:`choose_l2_gcv`), ``"auto"`` (or ``None``, the same; the discrepancy
    principle, :func:`choose_l2`) or a number ``>= 0``.

    Raises
    ------
    OptionError
        Anything else.
    """
    if l2 is None:
        return AUTO
    if isinstance(l2, str) and l2 in (AUTO, GCV):
        return l2
    if isinstance(l2, bool) or not isinstance(l2, (int, float, np.integer, np.floating)):
        raise OptionError(f"l2 must be a number >= 0, 'auto' or 'gcv', got {l2!r}")
    if not math.isfinite(float(l2)) or l2 < 0:
        raise OptionError(f"l2 must be a finite number >= 0, 'auto' or 'gcv', got {l2!r}")
    return float(l2)


def fit_to_noise(obj: FitObjective, x) -> tuple[float, float, bool]:
    """The fit-to-noise ratio at ``x`` with ``n - k`` as its denominator: as the below-noise
    warning sees a fit with no penalty (a penalised fit's warning counts the network's
    effective degrees of freedom too, :func:`penalised_dof`), and as the discrepancy rule
    judges every fit along its path.

    Parameters
    ----------
    obj : FitObjective
    x : ndarray
        A point in the optimizer's coordinates.

    Returns
    -------
    ratio : float
        ``F = chi^2 / (n - k)``; NaN when no noise level is known or can be estimated from
        the data, or when the model cannot be solved at ``x``.
    z : float
        ``log F`` in standard deviations (its spread from the number of data and from the
        uncertainty of noise levels estimated from the data).
    noisy : bool
        Whether the residuals look like noise (rough, not smooth); smooth residuals mean
        noise-free data, where a small ``F`` is no sign of fitting the noise.
    """
    try:
        r = obj.residuals(np.asarray(x, dtype=float))
    except Rejected:
        return math.nan, math.nan, False
    d = diagnose(obj, x, r, None, None, pd.DataFrame())
    rough = [(o.chi2 / d.chi2, o.roughness) for o in d.observables
             if np.isfinite(o.roughness) and np.isfinite(o.chi2)] \
        if np.isfinite(d.chi2) and d.chi2 > 0 else []
    total = sum(w for w, _ in rough)
    noisy = bool(rough) and total > 0 and math.sqrt(
        sum(w * q * q for w, q in rough) / total) >= ROUGHNESS
    return float(d.fit_to_noise), float(d.fit_to_noise_z), noisy


def path_optimizer(n_theta: int) -> Optimizer:
    """The optimizer of each warm-started fit along the path: a short Levenberg-Marquardt
    run (it stops early once the cost falls by less than 5 % in 5 iterations), or for
    networks too large for a residual Jacobian (as :func:`~dynlearn.default_optimizer`
    decides) a short L-BFGS-B run."""
    if n_theta > 2000:
        return LBFGSB(100)
    return LevenbergMarquardt(max_iter=PATH_ITERATIONS, patience=5, ptol=0.05)


def first_strength(obj: FitObjective, first: StartOutcome, ratio: float) -> float:
    """The first strength of the path: where the cost of the fit linearised about the
    unpenalised optimum rises ``ratio``-fold (the penalised step ``d = -l2 (J^T J + l2 P)^-1
    P x`` raises it by ``d^T J^T J d``; ``P`` selects the network weights), on a grid of
    strengths around the scale of ``J^T J``'s weight block. Without the Jacobian at hand,
    or for more than :data:`LINEARISED_MAX` fitted values, the strength that makes the
    penalty as large as the cost still missing.
    """
    x = np.asarray(first.x, dtype=float)
    P = obj.space.is_weight
    w = x[P]
    gap = first.cost * (ratio - 1.0)
    guess = gap / float(w @ w) if float(w @ w) > 0 and gap > 0 else 1e-8
    if first.final is None or x.size > LINEARISED_MAX:
        return guess
    A = np.asarray(first.final[1], dtype=float)
    if A.ndim != 2 or A.shape[1] != x.size:
        return guess
    M = A.T @ A
    scale = float(np.trace(M[np.ix_(P, P)])) / max(1, int(P.sum()))
    if not np.isfinite(scale) or scale <= 0:
        return guess
    jitter = 1e-12 * scale * np.eye(x.size)
    Px = np.where(P, x, 0.0)
    for l2 in scale * np.logspace(-12, 2, 57):
        try:
            d = -l2 * np.linalg.solve(M + l2 * np.diag(P.astype(float)) + jitter, Px)
        except np.linalg.LinAlgError:
            continue
        if first.cost + float(d @ M @ d) >= ratio * first.cost:
            return float(l2)
    return float(scale * 1e2)


def choose_l2(settings: Mapping[str, Any], first: StartOutcome, *,
              optimizer: Optimizer | None = None, deadline: float | None = None,
              max_time: float | None = None, callback: Callable | None = None,
              factor: float = PATH_FACTOR,
              max_path: int = MAX_PATH) -> tuple[float, StartOutcome, dict]:
    """Choose the L2 strength by the discrepancy principle (see the module notes).

    Parameters
    ----------
    settings : dict
        The keyword arguments of :class:`~dynlearn.objective.objective.FitObjective` of the
        fit (``l2`` is replaced along the path).
    first : StartOutcome
        The fit with no penalty (``l2 = 0``).
    optimizer : Optimizer, optional
        Of each warm-started fit along the path (default :func:`path_optimizer`).
    deadline, max_time, callback
        As in :func:`dynlearn.fit`: the path stops with its best point so far.
    factor, max_path
        See :data:`PATH_FACTOR`, :data:`MAX_PATH`.

    Returns
    -------
    l2 : float
        The chosen strength.
    outcome : StartOutcome
        The fit at that strength, its counters and time those of the first fit and the
        whole path together.
    report : dict
        ``{"l2", "rule", "path", "reason"}`` (see the module notes).
    """
    model = settings["model"]
    obj0 = FitObjective(**{**settings, "l2": 0.0})
    if np.size(first.sigma_hat) == len(obj0.sigma_hat):
        obj0.set_sigma(first.sigma_hat, first.x if np.isfinite(first.cost) else None)
    f0, z0, noisy = fit_to_noise(obj0, first.x) if np.isfinite(first.cost) else \
        (math.nan, math.nan, False)
    path = [_point(0.0, f0, z0, first)]
    report = {"l2": 0.0, "rule": "discrepancy", "path": path, "reason": ""}
    why_not = _no_penalty(obj0, first)
    if why_not:
        report.update(rule="none", reason=why_not)
        return 0.0, first, report
    if not (np.isfinite(f0) and np.isfinite(z0)):
        report.update(rule="none", reason=(
            "no noise level is known and none could be estimated from the data (or the fit "
            "failed), so the rule cannot apply: no penalty (pass sigma= or l2=)"))
        return 0.0, first, report
    z_low = float(special.ndtri(BELOW_NOISE_LEVEL))

    def below(f, z):
        """Whether the fit is below the noise level, as the warning judges it."""
        return f < BELOW_NOISE and z < z_low

    def over(f, z):
        return f > 1.0 and z > OVER

    if not below(f0, z0):
        report["reason"] = (f"the fit with no penalty is not below the noise level "
                            f"(chi2/(n-k) = {f0:.3g})")
        return 0.0, first, report
    if not noisy:
        report["reason"] = (f"chi2/(n-k) = {f0:.3g} with no penalty, but the residuals are "
                            "smooth (noise-free data): no penalty")
        return 0.0, first, report
    opt = optimizer if optimizer is not None else path_optimizer(model.n_theta)
    ran = [first]
    done = [(0.0, f0, z0, first)]           # (l2, F, z, outcome) of the fits that solved

    def run(l2, x0):
        obj = FitObjective(**{**settings, "l2": l2})
        spec = StartSpec(start=0, x0=np.asarray(x0, dtype=float), optimizer=opt,
                         progress=False, callback=callback, max_time=max_time,
                         deadline=deadline)
        out = run_start(spec, obj)
        ran.append(out)
        f, z, _ = fit_to_noise(obj, out.x) if np.isfinite(out.cost) else \
            (math.nan, math.nan, False)
        path.append(_point(l2, f, z, out))
        if np.isfinite(f) and np.isfinite(z):
            done.append((l2, f, z, out))
            return z, out.status in (Status.MAX_TIME, Status.CALLBACK)
        return math.nan, True

    # aim a little inside the band: F at the warning's edge, times 1.25, at most 1
    sd = math.log(f0) / z0                  # the standard deviation of log F
    aim = min(1.0, 1.25 * max(BELOW_NOISE, math.exp(z_low * sd)))
    l2 = first_strength(obj0, first, aim / f0)
    # a bracket search in log l2, each fit warm-started from the strongest penalty known to
    # leave the fit below the noise level: up by ``factor`` while below, down while past the
    # noise level, then halving the bracket
    lo, hi = (0.0, first.x), math.inf
    for _ in range(max_path):
        _, stop = run(l2, lo[1])
        if stop:
            break
        _, f, z, out = done[-1]
        if below(f, z):
            lo = (l2, out.x)
        elif over(f, z):
            hi = l2
        else:
            break
        if math.isfinite(hi) and lo[0] > 0 and hi / lo[0] < BRACKET:
            break
        l2 = (l2 * factor if not math.isfinite(hi) else
              hi / factor if lo[0] == 0 else math.sqrt(lo[0] * hi))
    inside = [d for d in done if not below(d[1], d[2]) and not over(d[1], d[2])]
    pick = min(inside, key=lambda d: d[0]) if inside else min(done, key=lambda d: abs(d[2]))
    chosen_l2, chosen_f, _, chosen = pick
    report["l2"] = float(chosen_l2)
    if chosen_l2 == 0.0:
        report["reason"] = "no strength on the path came nearer the noise level"
    else:
        report["reason"] = (f"chi2/(n-k) = {chosen_f:.3g} (with no penalty {f0:.3g}), "
                            + ("the smallest strength on the path not below the noise level"
                               if inside else "the nearest to the noise level on the path"))
    # the counters cover the whole path; the loss history and the stages are the first
    # fit's (the path's fits, each with its own penalty, are in the report)
    trace = {f: getattr(first, f) for f in ("history", "stage_marks", "stage_history")
             if hasattr(first, f)}
    total = replace(
        chosen, nfev=sum(o.nfev for o in ran), njev=sum(o.njev for o in ran),
        ngev=sum(o.ngev for o in ran), nit=sum(o.nit for o in ran),
        elapsed=sum(o.elapsed for o in ran), rejected=sum(o.rejected for o in ran),
        x0=first.x0, **trace, **_account(first, chosen, chosen_l2))
    return float(chosen_l2), total, report


def _no_penalty(obj0: FitObjective, first: StartOutcome) -> str:
    """Why no penalty is chosen after the unpenalised fit ``first`` (both rules), or ``""``
    when one can be."""
    if not obj0.space.is_weight.any():
        return "no network weights are fitted"
    if first.status in (Status.MAX_TIME, Status.CALLBACK, Status.INTERRUPTED) or \
            not np.isfinite(first.cost):
        return "the fit was stopped or failed before a penalty could be chosen"
    if not first.status.converged:
        return (f"the fit with no penalty did not converge ({first.status.value}), so no "
                "penalty is chosen: a penalised refit would hide that")
    return ""


def _account(first: StartOutcome, chosen: StartOutcome, l2: float) -> dict:
    """The status and message of a fit whose penalty was chosen along a path: the first
    (unpenalised) fit's account of itself (its training, its restarts), then the refit at
    the chosen strength; a refit that did not converge gives its own status."""
    if chosen is first:
        return {}
    refit = f"refitted with the L2 penalty chosen from the data (l2 = {l2:.3g}): "
    if chosen.status.converged:
        return {"message": f"{first.message}; then {refit}{chosen.message}"}
    return {"message": f"{refit}{chosen.message} (with no penalty: {first.message})"}


def _point(l2: float, f: float, z: float, out: StartOutcome) -> dict:
    return {"l2": float(l2), "fit_to_noise": float(f), "z": float(z), "cost": float(out.cost),
            "evaluations": int(out.nfev + out.njev + out.ngev)}


# =====================================================================================
# Generalised cross-validation over the network's effective degrees of freedom
# =====================================================================================
#: the value of ``l2=`` that asks for the strength minimising generalised cross-validation
GCV = L2_GCV
#: GCV's minimum with fewer residual degrees of freedom than this (``n - df``) is a fit
#: through the data points: GCV cannot choose there, and the discrepancy principle does
INTERPOLATING = 1.0
#: the most penalised fits of the GCV rule (each re-linearises about its own optimum)
MAX_GCV_FITS = 4
#: the GCV rule stops when the next strength is within this ratio of one already fitted
GCV_SETTLED = 1.5


class PenaltyPath:
    """The penalised least-squares problem linearised about a point, for every L2 strength
    at once.

    About a point with data residuals ``r``, their Jacobian ``J`` and penalised values
    ``w`` (the network weights), a step ``d`` of the linearised problem minimises
    ``|r + J d|^2 + l2 |w + d_w|^2``; only the columns of ``J`` marked ``penalised`` carry
    the penalty. The unpenalised columns ``J_u`` (physical parameters, initial states) are
    profiled out: with ``Q`` the projector onto the complement of their span and ``B = Q
    J_w = U S V^T`` (thin SVD, the numerically non-zero singular values ``s_i``), ``z = B w
    - Q r`` and ``c = U^T z``,

    * the effective degrees of freedom, the trace of the hat matrix
      ``J (J^T J + l2 P)^+ J^T``, are ``df(l2) = rank(J_u) + sum_i s_i^2 / (s_i^2 + l2)``:
      ``rank(J)`` at ``l2 = 0``, falling monotonically to ``rank(J_u)``;
    * the data cost of the penalised step is ``rss(l2) = sum_i (l2 c_i / (s_i^2 + l2))^2 +
      |z - U c|^2``;
    * generalised cross-validation [1]_ is ``gcv(l2) = n rss(l2) / (n - df(l2))^2``, an
      estimate of the prediction error that needs no noise level.

    Parameters
    ----------
    J : ndarray, shape (n, p)
        Jacobian of the data residuals (no penalty rows).
    r : ndarray, shape (n,)
        The data residuals.
    x : ndarray, shape (p,)
        The point (only its penalised entries are used).
    penalised : ndarray of bool, shape (p,)
        Which columns carry the penalty.

    References
    ----------
    .. [1] G. H. Golub, M. Heath, G. Wahba, "Generalized cross-validation as a method for
       choosing a good ridge parameter", Technometrics 21, 215-223 (1979).
    """

    def __init__(self, J, r, x, penalised):
        J = np.asarray(J, dtype=float)
        r = np.asarray(r, dtype=float)
        P = np.asarray(penalised, dtype=bool)
        n = J.shape[0]
        self.n = n
        Ju, Jw = J[:, ~P], J[:, P]
        # the span of the unpenalised columns, scaled to unit norm first so that a
        # parameter's units do not decide its rank
        self.rank_free = 0
        Q = np.eye(n)
        if Ju.shape[1]:
            norms = np.linalg.norm(Ju, axis=0)
            Ju = Ju[:, norms > 0] / norms[norms > 0]
            if Ju.shape[1]:
                U, s, _ = np.linalg.svd(Ju, full_matrices=False)
                keep = s > s[0] * max(Ju.shape) * np.finfo(float).eps
                U = U[:, keep]
                self.rank_free = int(keep.sum())
                Q = Q - U @ U.T
        B = Q @ Jw
        z = B @ np.asarray(x, dtype=float)[P] - Q @ r
        if B.shape[1]:
            U, s, _ = np.linalg.svd(B, full_matrices=False)
            keep = s > (s[0] if s.size else 0.0) * max(B.shape) * np.finfo(float).eps
            U, s = U[:, keep], s[keep]
        else:
            U, s = np.zeros((n, 0)), np.zeros(0)
        self.s = s
        self.c = U.T @ z
        self.rest = float(max(z @ z - self.c @ self.c, 0.0))

    def dof(self, l2):
        """Effective degrees of freedom ``df(l2)``, the trace of the hat matrix (array in,
        array out)."""
        lam = np.asarray(l2, dtype=float)[..., None]
        s2 = self.s ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            part = np.where(lam > 0, s2 / (s2 + lam), 1.0)
        return self.rank_free + part.sum(axis=-1)

    def rss(self, l2):
        """The data cost of the linearised penalised step, ``rss(l2)``."""
        lam = np.asarray(l2, dtype=float)[..., None]
        s2 = self.s ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            shrink = np.where(lam > 0, lam / (s2 + lam), 0.0)
        return self.rest + ((shrink * self.c) ** 2).sum(axis=-1)

    def gcv(self, l2):
        """``n rss(l2) / (n - df(l2))^2``; infinite where ``df(l2) >= n``."""
        left = self.n - self.dof(l2)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(left > 0, self.n * self.rss(l2) / np.maximum(left, 1e-300) ** 2,
                            np.inf)

    def grid(self, count: int = 141) -> np.ndarray:
        """Strengths spanning the squared singular values (14 decades below the largest
        up to 100 times it)."""
        top = float(self.s[0] ** 2) if self.s.size else 1.0
        return top * np.logspace(-12, 2, count)

    def gcv_minimum(self) -> float:
        """The strength minimising :meth:`gcv` (0 when no penalty does better): a grid over
        :meth:`grid`, refined in ``log l2`` between the grid's neighbours."""
        if not self.s.size:
            return 0.0
        lams = self.grid()
        values = self.gcv(lams)
        i = int(np.argmin(values))
        if not np.isfinite(values[i]) or values[i] >= float(self.gcv(0.0)):
            return 0.0
        lo, hi = np.log(lams[max(i - 1, 0)]), np.log(lams[min(i + 1, lams.size - 1)])
        found = optimize.minimize_scalar(lambda u: float(self.gcv(math.exp(u))),
                                         bounds=(lo, hi), method="bounded",
                                         options={"xatol": 1e-3})
        best = math.exp(found.x) if found.fun < values[i] else float(lams[i])
        return float(best)

    def discrepancy(self, variance: float) -> float:
        """The strength at which ``rss(l2) / (n - df(l2))`` equals ``variance`` (the
        discrepancy principle with the effective degrees of freedom): 0 when the
        unpenalised fit is already at or above it, NaN when no strength on :meth:`grid`
        reaches it."""
        lams = np.concatenate([[0.0], self.grid()])
        left = self.n - self.dof(lams)
        ratio = np.where(left > 0, self.rss(lams) / np.maximum(left, 1e-300), np.inf)
        ratio[0] = ratio[0] if left[0] > 0 else 0.0     # an interpolating fit is below it
        above = np.flatnonzero(ratio >= variance)
        if not above.size or above[0] == 0:
            return math.nan if not above.size else 0.0
        i = int(above[0])
        if i == 1:
            return float(lams[1])

        def gap(u):
            lam = math.exp(u)
            return float(self.rss(lam)) / max(self.n - float(self.dof(lam)), 1e-300) \
                - variance
        return float(math.exp(optimize.brentq(gap, math.log(lams[i - 1]), math.log(lams[i]),
                                              xtol=1e-6)))


def effective_dof(J, penalised, l2):
    """The effective degrees of freedom of the penalised least-squares fit with residual
    Jacobian ``J``: the trace of the hat matrix ``J (J^T J + l2 P)^+ J^T`` (``P`` marks the
    penalised columns), for one strength or an array of them. See :class:`PenaltyPath`."""
    J = np.asarray(J, dtype=float)
    return PenaltyPath(J, np.zeros(J.shape[0]), np.zeros(J.shape[1]), penalised).dof(l2)


def penalised_dof(obj: FitObjective, x, final=None) -> float:
    """The effective degrees of freedom of ``obj``'s fit at ``x`` at its own L2 strength
    ``obj.l2``, counted as generalised cross-validation counts them (:func:`effective_dof`
    of the data rows of the residual Jacobian): the physics' fitted values plus the
    network's share. The below-noise warning divides by ``n - df`` with them
    (:mod:`dynlearn.results.diagnostics`).

    Parameters
    ----------
    obj : FitObjective
    x : ndarray
        A point in the optimizer's coordinates (a fit's optimum).
    final : tuple, optional
        ``(r, A)`` at ``x`` as an optimizer leaves them: ``A`` the Jacobian of all residuals
        (data rows, then the penalty's), or a factor with ``A^T A = J^T J``; computed when
        not given.

    Returns
    -------
    float
        NaN without network weights or penalty (``obj.l2 == 0``), or when the model cannot
        be solved at ``x``.
    """
    x = np.asarray(x, dtype=float)
    P = obj.space.is_weight
    if obj.l2 <= 0 or not P.any():
        return math.nan
    if final is None:
        try:
            _, A = obj.jacobian(x)
        except Rejected:
            return math.nan
    else:
        A = np.asarray(final[1], dtype=float)
    if A.ndim != 2 or A.shape[1] != x.size or not np.all(np.isfinite(A)):
        return math.nan
    if A.shape[0] == obj.n_residuals:
        J = A[:obj.n_data]
    else:
        # a factor of the whole J^T J: take the penalty rows' share out (they are known),
        # and factor what is left, the data rows' J^T J, which is all the count needs
        R = obj.regularization_jacobian(x)
        G = A.T @ A - R.T @ R
        e, V = np.linalg.eigh(0.5 * (G + G.T))
        J = np.sqrt(np.clip(e, 0.0, None))[:, None] * V.T
    return float(effective_dof(J, P, obj.l2))


def _linearised(obj: FitObjective, x, out: StartOutcome | None = None) -> PenaltyPath | None:
    """The :class:`PenaltyPath` at ``x`` from the data rows of ``obj``'s Jacobian (the one
    an optimizer left behind when it is the Jacobian itself), or None when the model
    cannot be solved there."""
    x = np.asarray(x, dtype=float)
    n = obj.n_data
    final = getattr(out, "final", None)
    if final is not None and np.shape(final[1]) == (obj.n_residuals, x.size) \
            and np.size(final[0]) == obj.n_residuals:
        r, J = np.asarray(final[0]), np.asarray(final[1])
    else:
        try:
            r, J = obj.jacobian(x)
        except Rejected:
            return None
    if not (np.all(np.isfinite(J[:n])) and np.all(np.isfinite(r[:n]))):
        return None
    return PenaltyPath(J[:n], r[:n], x, obj.space.is_weight)


def choose_l2_gcv(settings: Mapping[str, Any], first: StartOutcome, *,
                  optimizer: Optimizer | None = None, deadline: float | None = None,
                  max_time: float | None = None, callback: Callable | None = None,
                  max_fits: int = MAX_GCV_FITS) -> tuple[float, StartOutcome, dict]:
    """Choose the L2 strength by generalised cross-validation (``l2="gcv"``).

    The unpenalised fit is linearised about its optimum (:class:`PenaltyPath`), and the
    strength minimising ``gcv(l2) = n rss(l2) / (n - df(l2))^2`` is fitted, warm-started,
    with a short Levenberg-Marquardt run (:func:`path_optimizer`). The fit is linearised
    again about that penalised optimum and the minimiser recomputed, until it settles
    (within :data:`GCV_SETTLED` of a strength already fitted) or :data:`max_fits` fits
    have run. Of the fitted points (the unpenalised one included) the one with the
    smallest GCV at its own optimum (its data cost, its degrees of freedom) is kept. No
    noise level is needed.

    Parameters and returns as :func:`choose_l2`; the report's ``path`` entries hold
    ``{"l2", "gcv", "dof", "cost", "evaluations"}``.
    """
    model = settings["model"]
    obj0 = FitObjective(**{**settings, "l2": 0.0})
    if np.size(first.sigma_hat) == len(obj0.sigma_hat):
        obj0.set_sigma(first.sigma_hat, first.x if np.isfinite(first.cost) else None)
    path: list[dict] = []
    report = {"l2": 0.0, "rule": "gcv", "path": path, "reason": ""}
    why_not = _no_penalty(obj0, first)
    if why_not:
        report.update(rule="none", reason=why_not)
        return 0.0, first, report
    n = obj0.n_data
    extra = [0]                     # Jacobians computed here (not by the optimizers)

    def linearised(obj, out):
        before = out.final is not None
        lin = _linearised(obj, out.x, out)
        if not before or lin is None:
            extra[0] += 1
        return lin

    def actual(obj, out, lin, l2):
        """GCV at a fitted point: its own data cost and degrees of freedom."""
        r = obj.residuals(np.asarray(out.x, dtype=float))[:n]
        cost = float(r @ r)
        df = float(lin.dof(l2))
        value = n * cost / (n - df) ** 2 if n - df > 0 else math.inf
        path.append({"l2": float(l2), "gcv": value, "dof": df, "cost": cost,
                     "evaluations": int(out.nfev + out.njev + out.ngev)})
        return value

    lin = linearised(obj0, first)
    if lin is None:
        report.update(rule="none", reason="the residual Jacobian could not be computed at "
                                          "the fit")
        return 0.0, first, report
    target = lin.gcv_minimum()
    if n - float(lin.dof(target)) < INTERPOLATING:
        # GCV's minimum is a fit through the data points: where the network can interpolate
        # the data, n rss / (n - df)^2 is 0/0 at l2 -> 0 and its limit there can undercut
        # every honest strength, so GCV cannot choose; the discrepancy principle (the noise
        # level known or estimated from the data) can
        l2, out, report = choose_l2(settings, first, optimizer=optimizer, deadline=deadline,
                                    max_time=max_time, callback=callback)
        report["reason"] = ("generalised cross-validation cannot choose, its minimum is a fit "
                            f"through the data points (df = {float(lin.dof(target)):.1f} of "
                            f"{n} data), so the discrepancy principle chose: "
                            + report["reason"])
        return l2, out, report
    done = [(0.0, actual(obj0, first, lin, 0.0), first)]
    opt = optimizer if optimizer is not None else path_optimizer(model.n_theta)
    ran = [first]
    for _ in range(max_fits):
        if target <= 0 or any(d[0] > 0 and max(target / d[0], d[0] / target) < GCV_SETTLED
                              for d in done):
            break
        # warm start from the fitted strength nearest in log l2 (the unpenalised fit first)
        near = min(done, key=lambda d: abs(math.log(target / d[0])) if d[0] > 0 else 50.0)
        obj = FitObjective(**{**settings, "l2": target})
        if np.size(first.sigma_hat) == len(obj.sigma_hat):
            obj.set_sigma(first.sigma_hat, first.x if np.isfinite(first.cost) else None)
        spec = StartSpec(start=0, x0=np.asarray(near[2].x, dtype=float), optimizer=opt,
                         progress=False, callback=callback, max_time=max_time,
                         deadline=deadline)
        out = run_start(spec, obj)
        ran.append(out)
        lin = linearised(obj, out) if np.isfinite(out.cost) else None
        if lin is None:
            break
        done.append((target, actual(obj, out, lin, target), out))
        if out.status in (Status.MAX_TIME, Status.CALLBACK, Status.INTERRUPTED):
            break
        target = lin.gcv_minimum()
    chosen_l2, chosen_gcv, chosen = min(done, key=lambda d: (d[1], d[0]))
    chosen_dof = path[done.index(next(d for d in done if d[0] == chosen_l2))]["dof"]
    report["l2"] = float(chosen_l2)
    report["dof"] = float(chosen_dof)       # the below-noise warning counts them
    report["reason"] = (
        f"the smallest generalised cross-validation n*cost/(n - df)^2 = {chosen_gcv:.4g} of "
        f"{len(done)} fitted strengths (with no penalty {done[0][1]:.4g}; effective degrees "
        f"of freedom {chosen_dof:.1f} of {n} data)")
    trace = {f: getattr(first, f) for f in ("history", "stage_marks", "stage_history")
             if hasattr(first, f)}
    total = replace(
        chosen, nfev=sum(o.nfev for o in ran), njev=sum(o.njev for o in ran) + extra[0],
        ngev=sum(o.ngev for o in ran), nit=sum(o.nit for o in ran),
        elapsed=sum(o.elapsed for o in ran), rejected=sum(o.rejected for o in ran),
        x0=first.x0, **trace, **_account(first, chosen, chosen_l2))
    return float(chosen_l2), total, report
