"""Choosing the recovered structure through the ODE: candidates refitted to the data.

The sparse regression reads the network, which carries its own errors: an over-fitted
network hands over spurious terms, a poorly trained one misses or distorts true ones, and
which support the regression's own criterion prefers depends on those errors. The data
decide better. :func:`select_structure` (run by :func:`~dynlearn.discovery.recover` by
default, and by :meth:`Recovery.select <dynlearn.discovery.Recovery.select>`) therefore

1. collects candidate structures: every support the regression meets along its whole
   sparsity path (the same threshold for every network output), on all samples and on the
   trajectory samples alone, for every network fit given (several fits or ensemble
   members: :func:`~dynlearn.discovery.recover` of a list of fit results or of a
   :class:`~dynlearn.analysis.ensemble.Ensemble`);
2. refits each through the ODE solver to the data (:class:`~dynlearn.discovery.refit.
   TermFitter`: the known physics plus the candidate's terms, a few coefficients, the
   initial states as in the original fit), from the regression's coefficients;
3. scores each refit by an information criterion of its fit to the data, BIC (default)
   or AICc, and improves the best one by coordinate moves (one output's support replaced
   by another support of its path), backward elimination (one term dropped; from every
   candidate within :data:`PLAUSIBLE` of the best criterion, at most :data:`BEAM`, since
   the data do not choose between those) and exchanges (one term replaced by another), as
   long as the criterion improves;
4. keeps the best, and reports every candidate (:attr:`Recovery.candidates
   <dynlearn.discovery.Recovery.candidates>`) and how strongly the data and the network
   fits support each term (:attr:`Recovery.inclusion
   <dynlearn.discovery.Recovery.inclusion>`).

For a fit by least squares with no known noise level (the default), with ``n`` data
values, ``k`` fitted values (coefficients, estimated initial states and the profiled noise
variance) and ``SSR`` the sum of squared residuals,

.. math:: \\mathrm{AICc} = n\\log(\\mathrm{SSR}/n) + 2k + \\frac{2k(k+1)}{n-k-1},\\qquad
          \\mathrm{BIC} = n\\log(\\mathrm{SSR}/n) + k\\log n

(plus constants common to every candidate); with known noise levels ``SSR`` is the
weighted sum of squares itself (:attr:`FitResult.aic <dynlearn.results.FitResult>`).

References
----------
.. [1] N. M. Mangan et al., "Model selection for dynamical systems via sparse regression and
   information criteria", Proc. R. Soc. A 473, 20170009 (2017).
.. [2] K. P. Burnham, D. R. Anderson, "Model Selection and Multimodel Inference", 2nd ed.,
   Springer (2002): AICc, and Akaike weights as inclusion probabilities.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.integrate import solve_ivp

from dynlearn.core.vectorfield import VectorField
from dynlearn.data import as_dataset
from dynlearn.discovery.diagnostics import DiscoveryWarning, score_table
from dynlearn.discovery.refit import TermFitter, failure
from dynlearn.errors import DataError, DynlearnError, OptionError
from dynlearn.objective.binding import bind_data
from dynlearn.optimizers import LevenbergMarquardt, MultipleShooting
from dynlearn.solve import solver_kwargs

if TYPE_CHECKING:   # recovery.py imports this module: annotations only
    from dynlearn.discovery.recovery import Recovery

__all__ = ["BEAM", "CRITERIA", "EVALUATION_BUDGET", "PLAUSIBLE", "RUNAWAY", "Screen",
           "information_criterion", "path_options", "select_structure", "support_coefficients"]

#: The values of ``recover(criterion=...)``.
CRITERIA = ("aicc", "bic")
#: Candidate refits stop when their loss falls by less than 5 % in this many iterations.
PATIENCE = 10
#: Backward elimination starts from every candidate whose criterion is within this of the
#: best: a difference of 2 or less is "substantial support" for both (Burnham and Anderson
#: [2]_, section 2.6), so the data do not choose between them.
PLAUSIBLE = 2.0
#: At most this many candidates (the best first) start backward elimination per round.
BEAM = 5
#: A candidate refit's time limit in seconds: (the least limit, the multiple of the median
#: time of the converged refits so far, the first refit's limit). A refit can wander into
#: stiff or exploding dynamics where every solve crawls; the refits that matter converge
#: in a few iterations.
TIME_LIMIT = (2.0, 5.0, 300.0)


def information_criterion(result, criterion: str = "aicc") -> float:
    """AICc or BIC of a fit result's fit to the data.

    Parameters
    ----------
    result : FitResult
    criterion : {"aicc", "bic"}

    Returns
    -------
    float
        ``inf`` when the fit has no finite loss, or (AICc) when it has fewer than
        ``k + 2`` data values for ``k`` fitted values.
    """
    if criterion not in CRITERIA:
        raise OptionError(f"criterion must be one of {list(CRITERIA)}, got {criterion!r}")
    if result is None or not np.isfinite(result.loss):
        return math.inf
    if criterion == "bic":
        return float(result.bic)
    # the profiled noise variance is one more fitted value (as in result.aic)
    k = result.n_params + int(result.objective().profiled_variance)
    n = result.n_data
    if n - k - 1 <= 0:
        return math.inf
    return float(result.aic) + 2.0 * k * (k + 1) / (n - k - 1)


def path_options(rec: Recovery) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Per network output, every support the regression meets along its sparsity path.

    The regression (its optimizer, at every threshold of ``rec.path``, over all outputs)
    is recomputed on all of the recovery's samples and, when some samples lie off the
    trajectories, on the trajectory samples alone.

    Parameters
    ----------
    rec : Recovery
        A regression (``rec.arrays`` and ``rec.optimizer`` set).

    Returns
    -------
    list (one per output) of lists of (support, coefficients)
        The distinct supports (bool arrays over ``rec.terms``, the empty one included),
        in path order, and the regression's coefficients on them. Empty lists when the
        recovery carries no samples.
    """
    q = len(rec.outputs)
    if rec.arrays is None or rec.optimizer is None or rec.path is None:
        return [[] for _ in range(q)]
    Theta, Z, on_traj = rec.arrays
    grid = np.unique(rec.path["threshold"].to_numpy(float))
    grid = np.append(grid, np.inf)      # nothing kept: the known physics alone
    sets = [np.ones(Theta.shape[0], bool)]
    if not on_traj.all() and on_traj.sum() > Theta.shape[1]:
        sets.append(on_traj)
    out = []
    for j in range(q):
        seen, options = set(), []
        for rows in sets:
            for sup, coef in rec.optimizer.supports(Theta[rows], Z[rows, j], grid):
                key = sup.tobytes()
                if key not in seen:
                    seen.add(key)
                    options.append((sup, coef))
        out.append(options)
    return out


def _joint_path(rec: Recovery) -> list[np.ndarray]:
    """The candidates met along the path with one threshold for every output: start
    coefficient matrices (k, q)."""
    if rec.arrays is None or rec.optimizer is None or rec.path is None:
        return []
    Theta, Z, on_traj = rec.arrays
    grid = np.unique(rec.path["threshold"].to_numpy(float))
    sets = [np.ones(Theta.shape[0], bool)]
    if not on_traj.all() and on_traj.sum() > Theta.shape[1]:
        sets.append(on_traj)
    out = []
    for rows in sets:
        per_output = [rec.optimizer.supports(Theta[rows], Z[rows, j], grid)
                      for j in range(len(rec.outputs))]
        for i in range(grid.size):
            out.append(np.column_stack([per_output[j][i][1] for j in range(len(rec.outputs))]))
    return out


def _support_text(rec: Recovery, coef: np.ndarray) -> str:
    return "; ".join(f"{o}: " + (" + ".join(str(t) for t, c in zip(rec.terms, coef[:, j])
                                            if c != 0) or "0")
                     for j, o in enumerate(rec.outputs))


def support_coefficients(rec: Recovery, support: np.ndarray) -> np.ndarray:
    """Least-squares coefficients of the network on a given support (no threshold).

    Parameters
    ----------
    rec : Recovery
        A regression (``rec.arrays`` set).
    support : ndarray of bool, shape (k, q)

    Returns
    -------
    ndarray, shape (k, q)
        Zero off the support.
    """
    Theta, Z, _ = rec.arrays
    out = np.zeros(support.shape)
    for j in range(support.shape[1]):
        if support[:, j].any():
            out[support[:, j], j] = np.linalg.lstsq(Theta[:, support[:, j]], Z[:, j],
                                                    rcond=None)[0]
    return out


#: A candidate whose simulation from its starting values leaves the states' range, widened
#: by this many times its width on each side, is not refitted: its dynamics are not those
#: the network learned (and solvers can crawl for minutes through such runaways).
RUNAWAY = 10.0
RUNS_AWAY = "its simulation from its starting values runs away from the data"
#: Nor is one whose simulation needs more than this many times the right-hand-side
#: evaluations of the hybrid model's (at least 20000 per experiment): stiff dynamics far
#: faster than anything the network learned.
EVALUATION_BUDGET = 20.0


class _OverBudget(Exception):
    """Raised inside the screening solve to stop it."""


class Screen:
    """Which candidates are worth refitting: a cheap simulation of each from its start.

    Every experiment is simulated once with the candidate's starting coefficients (the
    fit's solver and tolerances, from the initial states of the recovery's trajectories).
    A candidate is not refitted when that simulation fails, leaves the range of the states
    along the trajectories widened by :data:`RUNAWAY` times its width on each side, or
    needs more than :data:`EVALUATION_BUDGET` times the right-hand-side evaluations of the
    hybrid model.

    Parameters
    ----------
    rec : Recovery
        The regression (its model, samples and trajectories' initial states).
    data : Dataset or DataFrame
    method : str
    rtol, atol : float
    """

    def __init__(self, rec: Recovery, data, method: str = "RK45", rtol: float = 1e-6,
                 atol: float = 1e-8):
        self.rec, self.data = rec, data
        self.method, self.rtol, self.atol = method, rtol, atol
        states = [s.name for s in rec.model.states]
        ref = rec.samples.loc[rec.samples["source"] == "trajectory", states].to_numpy(float)
        lo, hi = ref.min(axis=0), ref.max(axis=0)
        width = np.maximum(hi - lo, 1e-6 * np.maximum(np.abs(hi), 1.0))
        self.lower, self.upper = lo - RUNAWAY * width, hi + RUNAWAY * width
        y0 = rec.trajectory_y0
        if not (isinstance(y0, Mapping) or y0 is None or np.ndim(y0) == 1):
            y0 = {e.name: np.asarray(r, float) for e, r in zip(as_dataset(data), y0)}
        self.y0 = y0
        counts = self._evaluations(rec.model, math.inf)
        self.budget = [max(20000.0, EVALUATION_BUDGET * c) for c in counts] \
            if isinstance(counts, list) else None

    def _evaluations(self, model, budget) -> list[int] | str:
        """Right-hand-side evaluations per experiment, or why the simulation was stopped."""
        bound = bind_data(model, self.data, self.y0)
        counts = []
        for k, b in enumerate(bound):
            vf = VectorField(model, model.theta0, b.inputs)
            limit = budget if np.isscalar(budget) else budget[k]
            calls = [0]

            def fun(t, y, vf=vf, calls=calls, limit=limit):
                calls[0] += 1
                if calls[0] > limit:
                    raise _OverBudget
                return vf.fun(t, y)

            def leaves(t, y):
                return min(np.min(y - self.lower), np.min(self.upper - y))
            leaves.terminal = True
            try:
                with np.errstate(all="ignore"):
                    res = solve_ivp(fun, (b.t0, b.t[-1]), b.y0, events=leaves,
                                    **solver_kwargs(vf, self.method, self.rtol, self.atol, {}))
            except _OverBudget:
                return "its simulation needs far more steps than the hybrid model's (stiff)"
            except (ArithmeticError, ValueError, DynlearnError):
                return "its simulation fails"
            if res.status == 1 or (res.y.size and not np.all(np.isfinite(res.y))):
                return RUNS_AWAY
            if res.status != 0:
                return "its simulation fails"
            counts.append(calls[0])
        return counts

    def __call__(self, coef: np.ndarray) -> str | None:
        """Why the candidate with these starting coefficients is not worth a refit, or
        None."""
        if self.budget is None:
            return None
        model = dataclasses.replace(self.rec, coef=coef).to_model()
        got = self._evaluations(model, self.budget)
        return got if isinstance(got, str) else None


def select_structure(recovery: Recovery, data=None, *, criterion: str = "bic",
                     members: Sequence[Recovery] = (), max_refits: int = 200,
                     parsimony: float = 0.0, **fit_kwargs) -> Recovery:
    """Choose the recovered structure by refitting candidates to the data.

    The implementation of :meth:`Recovery.select <dynlearn.discovery.Recovery.select>`
    (see there and the module docstring for the method); its warnings point at the caller
    of ``Recovery.select``.

    Parameters
    ----------
    recovery : Recovery
        A regression, or a refit of one (its :attr:`~Recovery.regression` is used).
    data : Dataset or DataFrame, optional
        Default: the data of the fit the recovery came from.
    criterion : {"bic", "aicc"}
    members : sequence of Recovery
        The regressions of further network fits of the same data (ensemble members): their
        paths add candidates, and their selected terms count in ``inclusion.members``.
    max_refits : int
        At most this many candidate refits.
    parsimony : float
        Keep the sparsest candidate whose criterion is within this of the lowest.
    **fit_kwargs
        Passed to :func:`dynlearn.fitting.fit` (defaults: the original fit's settings).

    Returns
    -------
    Recovery
    """
    regression = recovery.regression if recovery.regression is not None else recovery
    data = regression.data if data is None else data
    if data is None:
        raise DataError("select() needs data=: this recovery did not come from a fit result")
    if criterion not in CRITERIA:
        raise OptionError(f"criterion must be one of {list(CRITERIA)}, got {criterion!r}")
    if isinstance(max_refits, bool) or not isinstance(max_refits, (int, np.integer)) \
            or max_refits < 1:
        raise OptionError(f"max_refits must be an integer >= 1, got {max_refits!r}")
    sources = [regression, *members]
    settings = {**regression.fit_settings, **fit_kwargs}
    # a hopeless candidate (a needed term missing) can crawl for hundreds of iterations:
    # stop refits whose loss falls by less than 5 % in 10 iterations. A candidate that
    # matters converges in a few Levenberg-Marquardt steps.
    fitter = TermFitter(data, settings, cold=lambda: MultipleShooting(
        segments=4, max_iter=50, patience=PATIENCE,
        polish=LevenbergMarquardt(max_iter=100, patience=PATIENCE)),
        warm=lambda: LevenbergMarquardt(max_iter=100, patience=PATIENCE))
    screen = Screen(regression, data, settings.get("method", "RK45"),
                    settings.get("rtol", 1e-6), settings.get("atol", 1e-8))
    k, q = regression.coef.shape
    evaluated: dict[bytes, dict] = {}      # support -> record (refit, criterion, ...)
    times: list[float] = []                # wall times of the converged refits

    def evaluate(coef: np.ndarray, source: str, cold: bool, restart=None) -> dict | None:
        key = (coef != 0).tobytes()
        if key in evaluated:
            return evaluated[key]
        if len(evaluated) >= max_refits:
            return None
        why = screen(coef)
        if why is not None and not cold:
            # from a refit (warm), try the network's own coefficients on this support
            coef, cold = support_coefficients(regression, coef != 0), True
            why = screen(coef)
        if why is not None:
            evaluated[key] = rec = dict(support=np.frombuffer(key, bool).reshape(k, q),
                                        refit=None, criterion=math.inf, source=source,
                                        why=why, status="not refitted")
            return rec
        trial = dataclasses.replace(regression, coef=coef, stderr=None, fit=None)
        # a time limit far above what the refits so far took (see TIME_LIMIT)
        if "max_time" not in fit_kwargs:
            fitter.kwargs["max_time"] = max(TIME_LIMIT[0], TIME_LIMIT[1] * float(
                np.median(times))) if times else TIME_LIMIT[2]
        began = time.perf_counter()
        refit, result = fitter(trial, cold=cold, restart=restart)
        if refit is not None and refit.fit.status.converged:
            times.append(time.perf_counter() - began)
        value = information_criterion(refit.fit, criterion) if refit is not None else math.inf
        evaluated[key] = rec = dict(support=coef != 0, refit=refit, criterion=value,
                                    source=source, status=None,
                                    why=None if refit is not None else failure(result))
        return rec

    def best() -> dict | None:
        done = [r for r in evaluated.values() if np.isfinite(r["criterion"])]
        return min(done, key=lambda r: (r["criterion"], int(r["support"].sum()))) \
            if done else None

    # 1. the joint sparsity paths of every network fit (and of its trajectory samples)
    for m, src in enumerate(sources):
        label = "path" if m == 0 else f"path of fit {m}"
        for start in _joint_path(src):
            evaluate(start, label, cold=True)
    # 2. coordinate moves: one output's support replaced by another of its paths
    options = [path_options(src) for src in sources]
    for _ in range(10):
        current = best()
        if current is None or q < 2:
            break
        for j in range(q):
            for per_source in options:
                for sup, xi in per_source[j]:
                    if np.array_equal(sup, current["support"][:, j]):
                        continue
                    start = current["refit"].coef.copy()
                    start[:, j] = xi
                    evaluate(start, "swap", cold=True)
        if best() is current:
            break
    # 3. backward elimination (one term dropped) and exchanges (one term replaced by
    # another of its output's library), warm-started from refits, while the criterion
    # improves. An exchange keeps the number of coefficients, so it wins on the fit alone:
    # it finds a true term that the network distorted into a look-alike (on one stretch of
    # trajectory y and x*y can stand in for each other), which no path holds. Exchanges
    # start from the best refit; elimination from every candidate the data barely tell
    # apart from it (_plausible): where few data leave several supports about equally
    # good, the best can hold a spurious term in place of a true one while another holds
    # the true term beside a spurious one, and only dropping from that one reaches the
    # true structure.
    Theta = regression.arrays[0] if regression.arrays is not None else None
    expanded: set[bytes] = set()           # supports eliminated from
    exchanged: set[bytes] = set()          # supports exchanged from
    while True:
        current = best()
        if current is None:
            break
        for rec in _plausible(evaluated, current["criterion"]):
            key = rec["support"].tobytes()
            if key in expanded:
                continue
            expanded.add(key)
            for i, j in np.argwhere(rec["support"]):
                start = rec["refit"].coef.copy()
                start[i, j] = 0.0
                evaluate(start, "backward", cold=False,
                         restart=support_coefficients(regression, start != 0))
        if best() is not current:
            continue
        if Theta is None or current["support"].tobytes() in exchanged:
            if all(r["support"].tobytes() in expanded
                   for r in _plausible(evaluated, current["criterion"])):
                break
            continue
        exchanged.add(current["support"].tobytes())
        kept = np.argwhere(current["support"])
        for i, j in kept:
            for i2 in np.flatnonzero(~current["support"][:, j]):
                support = current["support"].copy()
                support[i, j], support[i2, j] = False, True
                # the current equation, as closely as the new terms can write it
                start = current["refit"].coef.copy()
                start[:, j] = 0.0
                start[support[:, j], j] = np.linalg.lstsq(
                    Theta[:, support[:, j]], Theta @ current["refit"].coef[:, j],
                    rcond=None)[0]
                if np.count_nonzero(start) != support.sum():
                    continue
                evaluate(start, "exchange", cold=False,
                         restart=support_coefficients(regression, support))

    chosen = best()
    if chosen is not None and parsimony > 0:
        # the sparsest candidate within `parsimony` of the best criterion
        near = [r for r in evaluated.values() if r["criterion"] <= chosen["criterion"] + parsimony]
        chosen = min(near, key=lambda r: (int(r["support"].sum()), r["criterion"]))
    if chosen is None:
        why = next((r["why"] for r in evaluated.values() if r["why"]), "no refit converged")
        warnings.warn(f"no candidate structure could be refitted to the data ({why}); "
                      "returning the network's regression. Check that the hybrid fit "
                      "reached the noise level, or try another library (Python: "
                      "library=...; command line: --library)", DiscoveryWarning,
                      stacklevel=3)
        return regression
    table = _candidates_table(regression, evaluated, chosen, criterion)
    inclusion = _inclusion_table(regression, sources, evaluated, chosen)
    final = chosen["refit"]
    dropped = [dict(output=regression.outputs[j], term=str(regression.terms[i]),
                    value=float(regression.coef[i, j]), stderr=math.nan, reason=criterion)
               for i, j in np.argwhere((regression.coef != 0) & ~chosen["support"])]
    ref = regression.hybrid_loss
    if ref is not None and np.isfinite(ref) and final.fit.loss > 10 * max(ref, 1e-12):
        warnings.warn(f"the best recovered equations fit the data far worse than the hybrid "
                      f"model (loss {final.fit.loss:.4g} against {ref:.4g}): the library "
                      "lacks terms the network learned. Try a larger library (Python: "
                      "library=dl.polynomial_library(3); command line: --library poly3)",
                      DiscoveryWarning, stacklevel=3)
    final = dataclasses.replace(final, regression=regression, dropped=dropped,
                                candidates=table, inclusion=inclusion)
    if final.arrays is not None:
        Theta, Z, on_traj = final.arrays
        final = dataclasses.replace(final, score=score_table(
            Theta, Z, final.coef, on_traj, final.outputs, final.thresholds,
            final.score["stable"].to_numpy()))
    return final


def _plausible(evaluated: Mapping[bytes, dict], best: float) -> list[dict]:
    """The refitted candidates within :data:`PLAUSIBLE` of the best criterion, best first
    (at most :data:`BEAM`)."""
    near = [r for r in evaluated.values()
            if np.isfinite(r["criterion"]) and r["criterion"] <= best + PLAUSIBLE]
    near.sort(key=lambda r: (r["criterion"], int(r["support"].sum())))
    return near[:BEAM]


def _candidates_table(rec: Recovery, evaluated: dict, chosen: dict,
                      criterion: str) -> pd.DataFrame:
    rows = []
    finite = [r["criterion"] for r in evaluated.values() if np.isfinite(r["criterion"])]
    low = min(finite) if finite else math.nan
    for r in evaluated.values():
        fit = r["refit"].fit if r["refit"] is not None else None
        rows.append(dict(terms=_support_text(rec, r["support"]),
                         n_coefficients=int(r["support"].sum()),
                         loss=float(fit.loss) if fit is not None else math.inf,
                         criterion=r["criterion"], chosen=r is chosen,
                         delta=r["criterion"] - low,
                         weight=math.exp(-(r["criterion"] - low) / 2)
                         if np.isfinite(r["criterion"]) else 0.0,
                         source=r["source"],
                         status=fit.status.value if fit is not None else
                         r["status"] or "failed", note=r["why"] or ""))
    table = pd.DataFrame(rows)
    total = table["weight"].sum()
    if total > 0:
        table["weight"] = table["weight"] / total
    table = table.sort_values(["criterion", "n_coefficients"], kind="stable")
    table = table.reset_index(drop=True)
    table.index.name = "candidate"
    table.attrs["criterion"] = criterion
    return table


def _inclusion_table(rec: Recovery, sources: Sequence[Recovery], evaluated: dict,
                     chosen: dict) -> pd.DataFrame:
    recs = [r for r in evaluated.values() if np.isfinite(r["criterion"])]
    crit = np.array([r["criterion"] for r in recs])
    w = np.exp(-(crit - crit.min()) / 2)
    w = w / w.sum()
    supports = np.array([r["support"] for r in recs])           # (n, k, q)
    member = np.array([s.coef != 0 for s in sources])          # (m, k, q)
    rows = []
    for j, out in enumerate(rec.outputs):
        for i, term in enumerate(rec.terms):
            seen = supports[:, i, j].any() or member[:, i, j].any()
            if not seen:
                continue
            rows.append(dict(output=out, term=str(term), chosen=bool(chosen["support"][i, j]),
                             weight=float(w[supports[:, i, j]].sum()),
                             refits=float(supports[:, i, j].mean()),
                             members=float(member[:, i, j].mean())))
    return pd.DataFrame(rows, columns=["output", "term", "chosen", "weight", "refits",
                                       "members"])
