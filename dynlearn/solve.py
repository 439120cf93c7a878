"""Forward simulation: a thin layer over ``scipy.integrate.solve_ivp``.

Every ``solve_ivp`` method is available by name (``RK45``, ``RK23``, ``DOP853``, ``Radau``,
``BDF``, ``LSODA``) and the implicit ones receive the model's exact Jacobian. Solver
statistics (``nfev``, ``njev``, ``nlu``), ``status`` and ``message`` are kept on the result.

Choosing a method
-----------------
* ``RK45`` (default): non-stiff problems at moderate accuracy; supports the fastest gradient
  (the discrete adjoint through its recorded steps).
* ``DOP853``: non-stiff problems at tight tolerances (``rtol <= 1e-8``).
* ``Radau``, ``BDF``: stiff problems (widely separated time scales, e.g. chemical kinetics);
  they use the exact Jacobian. Radau is more accurate per step, BDF cheaper at loose
  tolerances.
* ``LSODA``: switches automatically between non-stiff and stiff; a good default when you do
  not know, and often the fastest on mildly stiff problems.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.integrate import solve_ivp

from dynlearn.core.vectorfield import VectorField
from dynlearn.errors import DataError, OptionError, SolveError

__all__ = ["simulate", "Solution", "METHODS", "STIFF_METHODS", "EXPLICIT_METHODS"]

EXPLICIT_METHODS = ("RK45", "RK23", "DOP853")
STIFF_METHODS = ("Radau", "BDF", "LSODA")
METHODS = EXPLICIT_METHODS + STIFF_METHODS

# options solve_ivp's solvers understand besides the ones dynlearn sets itself
SOLVER_OPTIONS = {"first_step", "max_step", "min_step", "lband", "uband", "vectorized"}


def check_method(method: str) -> str:
    if method not in METHODS:
        raise OptionError(f"method={method!r} is not a solve_ivp method; "
                          f"use one of {list(METHODS)}")
    return method


def check_options(options: dict, where: str = "simulate") -> dict:
    unknown = sorted(set(options) - SOLVER_OPTIONS)
    if unknown:
        raise OptionError(f"{where}() got unknown keyword argument(s) {unknown}; solver options "
                          f"accepted are {sorted(SOLVER_OPTIONS)}")
    return options


def check_times(t, what: str = "t", where: str = "") -> np.ndarray:
    """A 1-D, finite, strictly increasing float array, or a DataError saying what is wrong."""
    try:
        t = np.asarray(t, dtype=float)
    except (TypeError, ValueError) as exc:
        raise DataError(f"`{what}`{where} must be numeric: {exc}") from None
    if t.ndim != 1 or t.size < 1:
        raise DataError(f"`{what}`{where} must be a non-empty 1-D array of times, "
                        f"got shape {t.shape}")
    bad = np.flatnonzero(~np.isfinite(t))
    if bad.size:
        raise DataError(f"`{what}`{where} must be finite; {what}[{bad[0]}]={t[bad[0]]}")
    d = np.diff(t)
    if np.any(d <= 0):
        i = int(np.flatnonzero(d <= 0)[0]) + 1
        raise DataError(f"`{what}`{where} must be strictly increasing; {what}[{i}]={t[i]} <= "
                        f"{what}[{i - 1}]={t[i - 1]}. Sort the times and remove duplicates.")
    return t


def check_y0(y0, n: int, names=None, where: str = "") -> np.ndarray:
    try:
        y0 = np.asarray(y0, dtype=float)
    except (TypeError, ValueError) as exc:
        raise DataError(f"`y0`{where} must be numeric: {exc}") from None
    if y0.shape != (n,):
        raise DataError(f"`y0`{where} must have shape ({n},), one value per state "
                        f"{list(names) if names else ''}; got shape {y0.shape}")
    bad = np.flatnonzero(~np.isfinite(y0))
    if bad.size:
        label = f" ({names[bad[0]]})" if names else ""
        raise DataError(f"`y0`{where} must be finite; y0[{bad[0]}]{label} = {y0[bad[0]]}")
    return y0


def solver_kwargs(vf: VectorField, method: str, rtol, atol, options: dict) -> dict:
    kw = dict(method=method, rtol=rtol, atol=atol, **options)
    if method in STIFF_METHODS:
        kw["jac"] = vf.jac
    return kw


class PiecewiseSolution:
    """Dense output made of consecutive ``OdeSolution`` segments (restarts at breakpoints)."""

    def __init__(self, sols):
        self.sols = sols
        self.ts = np.concatenate([sols[0].ts] + [s.ts[1:] for s in sols[1:]])
        self._ends = np.array([s.t_max for s in sols])

    def __call__(self, t):
        k = min(int(np.searchsorted(self._ends, t, side="left")), len(self.sols) - 1)
        return self.sols[k](t)


def integrate(fun, t_span, y0, t_eval, breaks=(), dense: bool = False, **kw):
    """``solve_ivp`` restarted at each breakpoint (a discontinuity of the right-hand side).

    Stepping across a jump (a zero-order-hold input) makes the error control reject steps
    until it straddles the jump with tiny ones, and loses accuracy there; restarting costs
    one initial-step selection per segment. Returns a ``solve_ivp``-like result whose ``y``
    holds the values at ``t_eval`` and whose ``sol`` (if ``dense``) covers all segments.
    """
    from scipy.optimize import OptimizeResult
    t0, t1 = t_span
    breaks = np.asarray(breaks, dtype=float)
    if breaks.size == 0:
        return solve_ivp(fun, t_span, y0, t_eval=t_eval, dense_output=dense, **kw)
    bounds = np.concatenate([[t0], breaks, [t1]])
    t_eval = np.asarray(t_eval, dtype=float)
    Ys, Ts, sols = [], [], []
    stats = dict(nfev=0, njev=0, nlu=0)
    y = np.asarray(y0, dtype=float)
    res = None
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        inside = t_eval[((t_eval >= a) if k == 0 else (t_eval > a)) & (t_eval <= b)]
        te = np.union1d(inside, [b])
        res = solve_ivp(fun, (a, b), y, t_eval=te, dense_output=dense, **kw)
        for key in stats:
            stats[key] += getattr(res, key, 0)
        keep = np.isin(res.t, inside)
        Ts.append(res.t[keep])
        Ys.append(res.y[:, keep])
        if dense and res.sol is not None:
            sols.append(res.sol)
        if res.status != 0:
            break
        y = res.y[:, -1]
    return OptimizeResult(t=np.concatenate(Ts), y=np.concatenate(Ys, axis=1), status=res.status,
                          message=res.message, success=res.status == 0,
                          sol=PiecewiseSolution(sols) if dense and sols else None, **stats)


def solve_observed(vf: VectorField, t0: float, t_obs: np.ndarray, y0: np.ndarray, method: str,
                   rtol, atol, options: dict, dense: bool = False, where: str = ""):
    """Integrate from ``t0`` and return ``(Y at t_obs, scipy result)``; raise SolveError."""
    t_end = t_obs[-1]
    if t_end == t0:
        return np.tile(y0, (t_obs.size, 1)), None
    res = integrate(vf.fun, (t0, t_end), y0, t_obs, vf.breakpoints(t0, t_end), dense,
                    **solver_kwargs(vf, method, rtol, atol, options))
    if res.status != 0:
        t_fail = res.t[-1] if res.t.size else t0
        raise SolveError(f"the {method} solver failed{where} at t={t_fail}: "
                         f"{res.message} Try a stiff method (Radau, BDF, LSODA), looser "
                         "tolerances, or check the parameters for blow-up.",
                         status=res.status, t=float(res.t[-1]) if res.t.size else t0,
                         solver_message=res.message)
    return res.y.T, res


@dataclass
class Solution:
    """The result of :func:`simulate`.

    Attributes
    ----------
    t : ndarray, shape (n_times,)
    y : ndarray, shape (n_times, n_states)
    observables : ndarray, shape (n_times, n_observables)
    state_names, observable_names : list of str
    success : bool
    status : int
        scipy's status: 0 success, -1 step failure.
    message : str
    nfev, njev, nlu : int
        Right-hand side and Jacobian evaluations, LU decompositions.
    """

    t: np.ndarray
    y: np.ndarray
    observables: np.ndarray
    state_names: list
    observable_names: list
    success: bool = True
    status: int = 0
    message: str = ""
    nfev: int = 0
    njev: int = 0
    nlu: int = 0
    time_name: str = "t"
    extra: dict = field(default_factory=dict)

    def to_frame(self):
        """A DataFrame: the time column, then one column per state, then observables whose
        names differ from the states'."""
        import pandas as pd
        cols = {self.time_name: self.t}
        for i, s in enumerate(self.state_names):
            cols[s] = self.y[:, i]
        for i, o in enumerate(self.observable_names):
            if o not in cols:
                cols[o] = self.observables[:, i]
        return pd.DataFrame(cols)


def simulate(model, t, y0, theta=None, method: str = "RK45", rtol: float = 1e-6,
             atol: float = 1e-8, inputs=None, t0: float | None = None, throw: bool = True,
             **options) -> Solution:
    """Integrate a model and return states and observables at times ``t``.

    Parameters
    ----------
    model : HybridModel
    t : array_like, shape (n_times,)
        Output times, strictly increasing. Integration starts at ``t0`` (default ``t[0]``).
    y0 : array_like, shape (n_states,)
        Initial state at ``t0``.
    theta : array_like, optional
        Free parameters then network weights (default ``model.theta0``).
    method : str
        Any ``solve_ivp`` method; stiff ones get the exact Jacobian.
    rtol, atol : float
        Solver tolerances (``atol`` may be an array, one value per state).
    inputs : InputSignal or DataFrame, optional
        Values of the model's inputs: a DataFrame whose first column is time, then one
        column per input, or an :class:`~dynlearn.InputSignal`.
    throw : bool
        Raise :class:`SolveError` on solver failure (default), or return a Solution with
        ``success=False`` and the part computed so far.
    **options
        Passed to the solver: ``first_step``, ``max_step``, ``min_step``, ``lband``, ``uband``.

    Returns
    -------
    Solution
    """
    from dynlearn.data.dataset import as_input_signal
    method = check_method(method)
    check_options(options, "simulate")
    t = check_times(t)
    t0 = float(t[0]) if t0 is None else float(t0)
    if t0 > t[0]:
        raise DataError(f"`t0`={t0} is after the first output time t[0]={t[0]}")
    y0 = check_y0(y0, model.n_states, [s.name for s in model.states])
    signal = as_input_signal(inputs, model) if model.inputs else None
    vf = VectorField(model, model.check_theta(theta), signal)
    if t[-1] == t0:
        Y = np.tile(y0, (t.size, 1))
        res = None
    else:
        res = integrate(vf.fun, (t0, t[-1]), y0, t, vf.breakpoints(t0, t[-1]),
                        **solver_kwargs(vf, method, rtol, atol, options))
        if res.status != 0 and throw:
            raise SolveError(f"the {method} solver failed at t={res.t[-1] if res.t.size else t0}: "
                             f"{res.message}", status=res.status,
                             t=float(res.t[-1]) if res.t.size else t0, solver_message=res.message)
        Y = res.y.T
        t = res.t
    H = vf.observe_batch(t, Y) if t.size else np.zeros((0, len(model.observables)))
    return Solution(t=t, y=Y, observables=H, state_names=[s.name for s in model.states],
                    observable_names=list(model.observable_names),
                    success=res is None or res.status == 0,
                    status=0 if res is None else res.status,
                    message="t[-1] == t0: nothing to integrate" if res is None else res.message,
                    nfev=vf.nfev, njev=vf.njev, nlu=0 if res is None else res.nlu,
                    time_name=model.time.name)
