"""LSODA from one output time to the next inside the compiled solver.

``solve_ivp(method="LSODA")`` returns to Python after every step (ODEPACK's ``itask=5``),
then interpolates the outputs in Python. On the small stiff models of systems biology a
step costs a few tens of microseconds of solver work, and that per-step round trip adds
about as much again. :func:`lsoda_at` asks ODEPACK for the outputs themselves
(``itask=4``: step internally until an output time is passed, interpolate there with its
own Nordsieck history, never step past the end of the span). Only the right-hand side and
the Jacobian are Python calls.

The steps are those of ``solve_ivp``: the first one is taken as ``solve_ivp`` takes it (a
single step towards the end of the span), because LSODA sizes its first step from the
distance to the first requested time; from a near-steady start, a first output time close
to the start made it start with a tiny step and creep on in its non-stiff mode for hundreds
of thousands of steps (measured on a collection problem), where ``solve_ivp`` switched to
its stiff mode within 30 steps. From then on both drivers take identical steps, so the
values agree to rounding (the interpolating polynomial is the same).

It drives scipy's ``ode("lsoda")`` integrator through the same attributes that
``scipy.integrate.LSODA`` sets (``rwork[0]`` as the critical time, ``call_args[2]`` as
``itask``). :func:`lsoda_at` answers None where it does not apply (see
:func:`lsoda_applies`), and the caller then uses ``solve_ivp``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.integrate import ode
from scipy.optimize import OptimizeResult

__all__ = ["lsoda_applies", "lsoda_at"]

# the solve_ivp options this driver takes (others go to solve_ivp)
_OPTIONS = {"rtol", "atol", "jac", "lband", "uband", "min_step", "max_step", "first_step"}
# LSODA's per-call step limit (its mxstep): the caller's guard bounds the work instead
_MAX_STEPS = 2 ** 31 - 1
# solve_ivp's floor on rtol (below it warns and raises rtol)
_RTOL_FLOOR = 100 * np.finfo(float).eps


def lsoda_applies(t_span, t_eval, kw: dict) -> bool:
    """Whether :func:`lsoda_at` can stand in for ``solve_ivp(method="LSODA", **kw)``:
    a forward span, sorted output times inside it, only the options it takes, tolerances
    ``solve_ivp`` would not change, a callable Jacobian."""
    if t_eval is None or not set(kw) <= _OPTIONS:
        return False
    t0, t1 = float(t_span[0]), float(t_span[1])
    te = np.asarray(t_eval, dtype=float)
    if not (t1 > t0) or te.ndim != 1 or te.size == 0:
        return False
    if te[0] < t0 or te[-1] > t1 or np.any(np.diff(te) <= 0):
        return False
    if np.any(np.asarray(kw.get("rtol", 1e-3)) < _RTOL_FLOOR):
        return False
    if np.any(np.asarray(kw.get("atol", 1e-6)) < 0):
        return False
    if kw.get("max_step", np.inf) <= 0 or kw.get("min_step", 0.0) < 0:
        return False
    h0 = kw.get("first_step")
    if h0 is not None and not 0 < h0 <= t1 - t0:
        return False
    jac = kw.get("jac")
    return jac is None or callable(jac)


def lsoda_at(fun: Callable, t_span, y0, t_eval, **options) -> OptimizeResult | None:
    """Solve ``y' = fun(t, y)`` over ``t_span`` with LSODA and return the values at
    ``t_eval``, as ``solve_ivp(fun, t_span, y0, method="LSODA", t_eval=t_eval, ...)``
    would; None where :func:`lsoda_applies` says no.

    Parameters
    ----------
    fun, t_span, y0, t_eval
        As for ``solve_ivp``; ``t_eval`` sorted, inside ``t_span``, ``t_span`` forward.
    **options
        ``solve_ivp``'s LSODA options: ``rtol``, ``atol``, ``jac``, ``lband``, ``uband``,
        ``min_step``, ``max_step``, ``first_step`` (any other: None).

    Returns
    -------
    OptimizeResult or None
        ``t``, ``y`` (shape ``(n, m)``: the outputs reached), ``status`` (0, or -1 when
        LSODA failed; ``message`` says how), ``success``, ``nfev``, ``njev``, ``nlu``,
        ``sol`` (None), ``t_events``/``y_events`` (None).

    References
    ----------
    .. [1] L. Petzold, "Automatic selection of methods for solving stiff and nonstiff
           systems of ordinary differential equations", SIAM J. Sci. Stat. Comput. 4
           (1983), pp. 136-148.
    .. [2] A. C. Hindmarsh, "ODEPACK, a systematized collection of ODE solvers", in
           Scientific Computing, North-Holland (1983), pp. 55-64.
    """
    if not lsoda_applies(t_span, t_eval, options):
        return None
    rtol, atol = options.get("rtol", 1e-3), options.get("atol", 1e-6)
    jac = options.get("jac")
    max_step = options.get("max_step", np.inf)
    t0, t1 = float(t_span[0]), float(t_span[1])
    y0 = np.asarray(y0, dtype=float)
    te = np.asarray(t_eval, dtype=float)
    r = ode(fun, jac)
    r.set_integrator("lsoda", rtol=rtol, atol=atol, lband=options.get("lband"),
                     uband=options.get("uband"), min_step=options.get("min_step", 0.0),
                     max_step=0.0 if max_step == np.inf else max_step,
                     first_step=options.get("first_step") or 0.0, nsteps=_MAX_STEPS)
    r.set_initial_value(y0, t0)
    integ = r._integrator
    integ.rwork[0] = t1                 # the critical time: no step past the span's end
    integ.call_args[4] = integ.rwork
    ts, ys = [], []
    status, message = 0, "The solver successfully reached the end of the integration interval."
    at_start = te == t0
    ts.extend(te[at_start])
    ys.extend(y0.copy() for _ in range(int(at_start.sum())))
    if not at_start.all():
        # the first step as solve_ivp takes it (see the module notes)
        integ.call_args[2] = 5
        # (the arguments ode.integrate passes to the integrator)
        r._y, r.t = integ.run(r.f, r.jac or (lambda: None), r._y, r.t, t1, r.f_params,
                              r.jac_params)
        integ.call_args[2] = 4
        if not r.successful():
            status = -1
            ts, ys = [], []         # (solve_ivp writes no output when its first step fails)
    for tout in te[~at_start] if status == 0 else ():
        y = r.integrate(tout)
        if not r.successful():
            status = -1
            break
        ts.append(tout)
        ys.append(np.array(y, dtype=float))
    if status:
        code = r.get_return_code()
        message = f"LSODA failed (istate {code}): {integ.messages.get(code, 'unknown')}"
    iw = integ.iwork
    y = np.array(ys).T if ys else np.zeros((y0.size, 0))
    return OptimizeResult(t=np.array(ts, dtype=float), y=y, status=status, message=message,
                          success=status == 0, sol=None, t_events=None, y_events=None,
                          nfev=int(iw[11]), njev=int(iw[12]), nlu=int(iw[12]))
