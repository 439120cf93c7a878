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

What every solve guarantees
---------------------------
Every solve dynlearn runs (simulations, losses, all sensitivity methods, both passes of the
adjoints) is watched by a :class:`SolveGuard`, so that it never hangs and never returns
silently wrong numbers:

* a right-hand side, Jacobian or state that is not finite where the solver cannot step
  around it (at the start of the solve, in an accepted step, in the Jacobian of a stiff
  method, in the returned states) raises :class:`~dynlearn.SolveError` at once, whatever the
  method (scipy's explicit methods would loop forever on a NaN step size, Radau and BDF
  raise a bare ``ValueError``, LSODA reports success with NaN states). Inside a fit, a
  SolveError is a rejected trial point;
* a solve may evaluate the right-hand side at most ``max_nfev`` times (a solver option
  accepted by :func:`simulate`, ``dl.loss`` and ``dl.fit``; default :data:`MAX_NFEV`), so an
  explicit method on a stiff trial point, or a time span of 1e300, ends with a SolveError
  that says what to try, instead of running for hours;
* inside :func:`deadline` (a fit's ``max_time``), a solve past the deadline raises
  :class:`~dynlearn.errors.TimeLimitError` within a few hundred right-hand-side evaluations;
* buffers that grow with the number of steps (dense output, recorded steps) are bounded by
  :data:`MAX_BUFFER_BYTES`, with an error naming the size and the remedy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np
from scipy.integrate import BDF, DOP853, LSODA, RK23, RK45, Radau, solve_ivp
from scipy.optimize import OptimizeResult

from dynlearn.core.vectorfield import VectorField
from dynlearn.data.checks import check_times, check_y0
from dynlearn.data.signals import as_input_signal
from dynlearn.errors import DataError, OptionError, OptionTypeError, SolveError, TimeLimitError

__all__ = ["simulate", "Solution", "METHODS", "STIFF_METHODS", "EXPLICIT_METHODS",
           "MAX_BUFFER_BYTES", "MAX_NFEV", "SOLVER_CLASSES", "SolveGuard", "check_method",
           "check_options", "current_deadline", "deadline", "failure_point", "integrate",
           "reset_deadline", "set_deadline", "solve_observed", "split_options"]

EXPLICIT_METHODS = ("RK45", "RK23", "DOP853")
STIFF_METHODS = ("Radau", "BDF", "LSODA")
METHODS = EXPLICIT_METHODS + STIFF_METHODS
#: method name -> scipy's solver class (for stepping a solver by hand, as the continuous
#: adjoint's backward pass does)
SOLVER_CLASSES = {"RK45": RK45, "RK23": RK23, "DOP853": DOP853, "Radau": Radau, "BDF": BDF,
                  "LSODA": LSODA}

# options solve_ivp's solvers understand besides the ones dynlearn sets itself
SCIPY_OPTIONS = {"first_step", "max_step", "min_step", "lband", "uband", "vectorized"}
# ... and dynlearn's own (see SolveGuard), taken out before scipy sees the options
SOLVER_OPTIONS = SCIPY_OPTIONS | {"max_nfev"}

#: Default budget of right-hand-side evaluations of one solve (the ``max_nfev`` option):
#: a few seconds of work for small models; far beyond what a non-stiff solve of a
#: well-posed problem needs.
MAX_NFEV = 1_000_000
#: The most memory a buffer that grows with the number of solver steps may take (a dense
#: solution, a record of steps), in bytes.
MAX_BUFFER_BYTES = 2 * 1024 ** 3

_DEADLINE: ContextVar[float | None] = ContextVar("dynlearn_solve_deadline", default=None)


@contextmanager
def deadline(at: float | None) -> Iterator[None]:
    """Within the block, every solve raises :class:`~dynlearn.errors.TimeLimitError` once
    the wall clock (``time.time()``) passes ``at`` (``None``: no deadline).

    A fit's ``max_time`` sets one, so that a single long evaluation cannot overrun it. The
    deadline belongs to the current thread (and context), so concurrent fits each have
    their own.

    Examples
    --------
    >>> import time
    >>> with deadline(time.time() + 5.0):        # doctest: +SKIP
    ...     dl.simulate(model, t, y0)
    """
    token = set_deadline(at)
    try:
        yield
    finally:
        reset_deadline(token)


def current_deadline() -> float | None:
    """The deadline in force (see :func:`deadline`), or None: for work handed to other
    processes (Dask workers), which set it there again."""
    return _DEADLINE.get()


def set_deadline(at: float | None):
    """Set the deadline of :func:`deadline` until :func:`reset_deadline` is called with the
    token returned (for code that cannot use a ``with`` block)."""
    return _DEADLINE.set(None if at is None else float(at))


def reset_deadline(token) -> None:
    """Restore the deadline that was in force before :func:`set_deadline` returned
    ``token``."""
    _DEADLINE.reset(token)


def split_options(options: dict) -> tuple[dict, int | None]:
    """``(scipy's options, max_nfev)``: the solver options with dynlearn's own taken out."""
    if "max_nfev" not in options:
        return options, None
    rest = {k: v for k, v in options.items() if k != "max_nfev"}
    return rest, options["max_nfev"]


def _fmt(v) -> str:
    return f"{float(v):.6g}"


class SolveGuard:
    """Watches one solve: non-finite values, an evaluation budget, a deadline, memory.

    Wrap the right-hand side (:meth:`wrap_fun`) and the Jacobian (:meth:`wrap_jac`) given
    to the solver, and pass the result through :meth:`check_result`. The wrapped
    right-hand side counts its calls and, on the first and then every
    :attr:`CHECK_EVERY`-th, checks:

    * at the first call (the start of the solve), that time, state and derivative are
      finite: a non-finite derivative there cannot be stepped around by any method;
    * that the time the solver asks for is a number (a NaN step size, on which scipy's
      explicit methods would loop forever);
    * the budget: at most ``max_nfev`` calls (:class:`~dynlearn.SolveError`, saying that
      an explicit method on a stiff problem is the usual cause);
    * the deadline of an enclosing :func:`deadline` block
      (:class:`~dynlearn.errors.TimeLimitError`);
    * memory: ``bytes_per_eval`` times the calls (for a solve that keeps something per
      step) at most :data:`MAX_BUFFER_BYTES`;
    * a solution stuck at the edge of the equations' domain: when :attr:`NON_FINITE_CHECKS`
      of the checked calls saw a non-finite derivative. An explicit method rejects such a
      step and retries a smaller one; at the edge (``sqrt(log(x))`` from ``x = 1``) it then
      creeps on in steps too small to change the state, forever, with a third of its
      evaluations NaN. An occasional NaN trial stage is sampled far too rarely to count.

    The cost is one counter increment and one comparison per call.

    Parameters
    ----------
    method : str
        The solver's method (for messages and advice).
    max_nfev : int, optional
        The budget of right-hand-side evaluations (default :data:`MAX_NFEV`).
    where : str
        Appended to messages, e.g. `` in experiment 'run1'``.
    names : sequence of str, optional
        Names of the solved components (states), for messages.
    span : (float, float), optional
        The solve's time span, for messages.
    bytes_per_eval : float, optional
        Memory the solve keeps per right-hand-side evaluation (a dense solution keeps a
        polynomial per step), bounded by :data:`MAX_BUFFER_BYTES`.
    what : str
        What stores that memory, and the remedy, for the message.
    """

    #: right-hand-side evaluations between two checks
    CHECK_EVERY = 256
    #: checks that saw a non-finite derivative before the solve is stopped
    NON_FINITE_CHECKS = 16

    def __init__(self, method: str, max_nfev: int | None = None, where: str = "",
                 names: Sequence[str] | None = None, span: tuple[float, float] | None = None,
                 bytes_per_eval: float | None = None, what: str = ""):
        self.method = method
        self.max_nfev = MAX_NFEV if max_nfev is None else _check_max_nfev(max_nfev)
        self.where = where
        self.names = list(names) if names is not None else None
        self.span = span
        self.deadline = _DEADLINE.get()
        self.nfev = 0
        self.non_finite = 0
        self._first = 1
        self.t_last: float | None = None
        self.max_evals_memory = None
        self.what = what
        if bytes_per_eval:
            self.max_evals_memory = max(1, int(MAX_BUFFER_BYTES / bytes_per_eval))
            self.bytes_per_eval = float(bytes_per_eval)

    def _name(self, i: int) -> str:
        if self.names is not None and i < len(self.names):
            return f"d{self.names[i]}/dt"
        return f"component {i} of the derivative"

    def wrap_fun(self, fun: Callable) -> Callable:
        """``fun(t, y)`` watched by this guard. Functions wrapped one after another (the
        pieces of one solve) share the guard's count and budget; the first call of each is
        checked as the start of a solve."""
        n = self.nfev
        nxt = n + 1
        self._first = nxt
        check = self._check

        def guarded(t, y):
            nonlocal n, nxt
            f = fun(t, y)
            n += 1
            if n >= nxt:
                nxt = check(n, t, y, f)
            return f
        return guarded

    def _check(self, n: int, t, y, f) -> int:
        """The checks of the class notes; returns the call count of the next check."""
        self.nfev = n
        if n == self._first:
            self.not_finite_at_start(t, y, f)
        if t != t:
            raise SolveError(f"the {self.method} solver's step size became NaN{self.where} "
                             f"(after t={self.t_last}): the right-hand side is not finite "
                             "there; check the parameters", status=-1, t=self.t_last,
                             solver_message="step size is NaN")
        self.t_last = float(t)
        if n != self._first and not np.all(np.isfinite(f)):
            self.non_finite += 1
            if self.non_finite >= self.NON_FINITE_CHECKS:
                raise SolveError(self._domain_message(t, y, f), status=-1, t=float(t),
                                 solver_message="right-hand side repeatedly not finite")
        if n > self.max_nfev:
            raise SolveError(self._budget_message(t), status=-1, t=float(t),
                             solver_message="max_nfev reached")
        if self.max_evals_memory is not None and n > self.max_evals_memory:
            gib = n * self.bytes_per_eval / 1024 ** 3
            raise SolveError(f"the {self.method} solve{self.where} would keep more than "
                             f"{gib:.3g} GiB ({self.what}) at t={_fmt(t)}, more than "
                             f"dynlearn.solve.MAX_BUFFER_BYTES = "
                             f"{MAX_BUFFER_BYTES / 1024 ** 3:.3g} GiB", status=-1,
                             t=float(t), solver_message="memory limit")
        if self.deadline is not None and time.time() > self.deadline:
            raise TimeLimitError(f"time limit reached during a {self.method} solve{self.where} "
                                 f"(at t={_fmt(t)})", t=float(t))
        nxt = n + self.CHECK_EVERY
        nxt = min(nxt, self.max_nfev + 1)
        if self.max_evals_memory is not None:
            nxt = min(nxt, self.max_evals_memory + 1)
        return nxt

    def not_finite_at_start(self, t, y, f) -> None:
        """Raise SolveError when time, state or derivative at the start of a solve is not
        finite."""
        y = np.asarray(y, dtype=float)
        f = np.asarray(f, dtype=float)
        if not np.isfinite(t) or not np.all(np.isfinite(y)):
            raise SolveError(f"the state is not finite at the start of the solve{self.where} "
                             f"(t={t})", status=-1, t=float(t), solver_message="non-finite state")
        if not np.all(np.isfinite(f)):
            i = int(np.flatnonzero(~np.isfinite(f))[0])
            raise SolveError(f"the right-hand side is not finite at the start of the "
                             f"solve{self.where} (t={_fmt(t)}): {self._name(i)} = {f[i]}. "
                             "Check the parameters and the initial state (a log or square "
                             "root of a negative number, a division by zero, an overflow)",
                             status=-1, t=float(t), solver_message="non-finite derivative")

    def _domain_message(self, t, y, f) -> str:
        f = np.asarray(f, dtype=float)
        i = int(np.flatnonzero(~np.isfinite(f))[0])
        return (f"the {self.method} solve{self.where} is stuck at t={_fmt(t)}: the right-hand "
                f"side keeps being not finite next to the solution ({self._name(i)} = {f[i]} "
                f"at y = {np.asarray(y, dtype=float).tolist()[:6]}), so the solver creeps on "
                "in steps too small to move the state; the solution leaves the domain of the "
                "equations there (a log or square root of a negative number, a division by "
                "zero). Check the parameters and the equations")

    def _budget_message(self, t) -> str:
        span = (f" of [{_fmt(self.span[0])}, {_fmt(self.span[1])}]" if self.span is not None
                else "")
        head = (f"the {self.method} solve{self.where} stopped after {self.max_nfev} "
                f"right-hand-side evaluations (max_nfev) at t={_fmt(t)}{span}: ")
        if self.method in EXPLICIT_METHODS:
            return head + ("this looks stiff; try method='LSODA' (or 'Radau', 'BDF'), "
                           "check the time span, or raise max_nfev")
        return head + ("the solution may blow up or oscillate very fast; check the "
                       "parameters and the time span, loosen the tolerances, or raise "
                       "max_nfev")

    @contextmanager
    def solver_failures(self) -> Iterator[None]:
        """Within the block, scipy's refusal of a non-finite step matrix (Radau and BDF
        factor ``I/h - J``, which overflows when the step size underflows beside a finite
        but huge Jacobian: a raw ``ValueError``) is a :class:`~dynlearn.SolveError`."""
        try:
            yield
        except ValueError as exc:
            if "infs or NaNs" not in str(exc):
                raise
            after = f" (after t={_fmt(self.t_last)})" if self.t_last is not None else ""
            raise SolveError(f"the {self.method} solver's step matrix is not finite"
                             f"{self.where}{after}: the step size underflowed beside a huge "
                             "Jacobian; the solution probably blows up (check the parameters)",
                             status=-1, t=self.t_last, solver_message="non-finite step matrix"
                             ) from None

    def wrap_jac(self, jac: Callable | None) -> Callable | None:
        """``jac(t, y)`` (dense or sparse) raising SolveError when not finite."""
        if jac is None or not callable(jac):
            return jac
        where = self.where

        def guarded(t, y):
            J = jac(t, y)
            vals = J.data if hasattr(J, "tocsc") else J
            if not np.all(np.isfinite(vals)):
                if hasattr(J, "tocsc"):
                    J = J.toarray()
                i, j = np.argwhere(~np.isfinite(J))[0]
                raise SolveError(f"the Jacobian of the right-hand side is not finite at "
                                 f"t={_fmt(t)}{where}: d({self._name(i)})/dy[{j}] = "
                                 f"{J[i, j]}; a stiff method cannot step on (often the "
                                 "derivative of sqrt, log or a power at zero)", status=-1,
                                 t=float(t), solver_message="non-finite Jacobian")
            return J
        return guarded

    def check_result(self, res, n: int):
        """``res`` (a ``solve_ivp`` result for ``n`` components) with ``t`` and ``y`` as
        arrays, of shapes ``(m,)`` and ``(n, m)``, even when the solver failed before the
        first output time (scipy leaves empty lists); SolveError when a solve that succeeded
        returned non-finite states (LSODA does)."""
        res.t = np.asarray(res.t, dtype=float).reshape(-1)
        y = np.asarray(res.y, dtype=float)
        if y.size == 0:
            y = np.zeros((n, 0))
        res.y = y
        if res.status == 0 and y.size and not np.all(np.isfinite(y)):
            k = int(np.flatnonzero(~np.all(np.isfinite(y), axis=0))[0])
            i = int(np.flatnonzero(~np.isfinite(y[:, k]))[0])
            who = self.names[i] if self.names is not None and i < len(self.names) else \
                f"component {i}"
            raise SolveError(f"the {self.method} solve{self.where} returned a non-finite "
                             f"state at t={_fmt(res.t[k])}: {who} = {y[i, k]}; the "
                             "right-hand side is not finite there (check the parameters)",
                             status=-1, t=float(res.t[k]), solver_message="non-finite state")
        return res


def check_method(method: str) -> str:
    """``method`` if it names a ``solve_ivp`` method (see :data:`METHODS`), else an
    OptionError listing them."""
    if method not in METHODS:
        raise OptionError(f"method={method!r} is not a solve_ivp method; "
                          f"use one of {list(METHODS)}")
    return method


def check_options(options: dict, where: str = "simulate") -> dict:
    """``options`` if every key is a solver option dynlearn passes on (``first_step``,
    ``max_step``, ..., and ``max_nfev``), else an OptionError naming the function
    (``where``) and the keys (or the bad ``max_nfev``)."""
    unknown = sorted(set(options) - SOLVER_OPTIONS)
    if unknown:
        raise OptionTypeError(f"{where}() got unknown keyword argument(s) {unknown}; solver "
                              f"options accepted are {sorted(SOLVER_OPTIONS)}")
    if options.get("max_nfev") is not None:
        _check_max_nfev(options["max_nfev"])
    return options


def _check_max_nfev(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise OptionError(f"max_nfev must be a positive integer, got {value!r}")
    return int(value)


def solver_kwargs(vf: VectorField, method: str, rtol, atol, options: dict) -> dict:
    """Keyword arguments of ``solve_ivp`` for a vector field: the stiff methods get its exact
    Jacobian."""
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


# what a dense solution keeps per step (values per component, for the interpolating
# polynomial) and the fewest right-hand-side evaluations a step takes, per method
_DENSE_PER_STEP = {"RK45": (4, 6), "RK23": (3, 3), "DOP853": (7, 12), "Radau": (3, 3),
                   "BDF": (6, 1), "LSODA": (13, 1)}


def integrate(fun, t_span, y0, t_eval, breaks=(), dense: bool = False, where: str = "",
              names: Sequence[str] | None = None, **kw):
    """``solve_ivp`` restarted at each breakpoint (a discontinuity of the right-hand side),
    watched by a :class:`SolveGuard`.

    Stepping across a jump (a zero-order-hold input) makes the error control reject steps
    until it straddles the jump with tiny ones, and loses accuracy there; restarting costs
    one initial-step selection per segment. Returns a ``solve_ivp``-like result whose ``y``
    holds the values at ``t_eval`` (shape ``(n, m)``, also when the solver failed before the
    first of them) and whose ``sol`` (if ``dense``) covers all segments.

    Parameters
    ----------
    fun, t_span, y0, t_eval
        As for ``solve_ivp``.
    breaks : array_like
        Times in ``t_span`` where the solve restarts.
    dense : bool
        Keep the dense solution (bounded by :data:`MAX_BUFFER_BYTES`).
    where : str
        For messages, e.g. `` in experiment 'run1'``.
    names : sequence of str, optional
        Names of the components, for messages.
    **kw
        ``solve_ivp``'s keyword arguments (``method``, ``rtol``, ``atol``, ``jac``, solver
        options) and ``max_nfev`` (see :class:`SolveGuard`).

    Raises
    ------
    SolveError
        From the guard: a non-finite start, Jacobian or result, or the budget exhausted.
        A solver that fails by itself (a step size below the spacing of numbers) is
        reported in the result's ``status``, as ``solve_ivp`` does.
    TimeLimitError
        Past the deadline of an enclosing :func:`deadline` block.
    """
    kw, max_nfev = split_options(kw)
    y0 = np.asarray(y0, dtype=float)
    method = kw.get("method", "RK45")
    bytes_per_eval = None
    if dense:
        values, evals = _DENSE_PER_STEP.get(method, (13, 1))
        bytes_per_eval = (400 + 8 * y0.size * values) / evals
    guard = SolveGuard(method, max_nfev, where, names, t_span, bytes_per_eval,
                       what="its dense solution, which the continuous adjoint keeps; "
                            "Adjoint(checkpoint_every=K) keeps one segment at a time")
    fun = guard.wrap_fun(fun)
    if "jac" in kw:
        kw["jac"] = guard.wrap_jac(kw["jac"])
    t0, t1 = t_span
    breaks = np.asarray(breaks, dtype=float)
    if breaks.size == 0:
        with guard.solver_failures():
            res = solve_ivp(fun, t_span, y0, t_eval=t_eval, dense_output=dense, **kw)
        return guard.check_result(res, y0.size)
    bounds = np.concatenate([[t0], breaks, [t1]])
    t_eval = np.asarray(t_eval, dtype=float)
    Ys, Ts, sols = [], [], []
    stats = dict(nfev=0, njev=0, nlu=0)
    y = y0
    res = None
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        inside = t_eval[((t_eval >= a) if k == 0 else (t_eval > a)) & (t_eval <= b)]
        te = np.union1d(inside, [b])
        with guard.solver_failures():
            res = solve_ivp(fun, (a, b), y, t_eval=te, dense_output=dense, **kw)
        res = guard.check_result(res, y0.size)
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


def failure_point(res, t0: float) -> str:
    """How far a failed solve got, for messages: ``at t=<its last output time>``, or
    ``before its first output time (from t=<t0>)`` when it wrote none."""
    if res.t.size:
        return f"at t={res.t[-1]}"
    return f"before its first output time (from t={t0})"


def solve_observed(vf: VectorField, t0: float, t_obs: np.ndarray, y0: np.ndarray, method: str,
                   rtol, atol, options: dict, dense: bool = False, where: str = ""):
    """Integrate from ``t0`` and return ``(Y at t_obs, scipy result)``; raise SolveError."""
    t_end = t_obs[-1]
    if t_end == t0:
        return np.tile(y0, (t_obs.size, 1)), None
    res = integrate(vf.fun, (t0, t_end), y0, t_obs, vf.breakpoints(t0, t_end), dense,
                    where=where, names=[s.name for s in vf.model.states],
                    **solver_kwargs(vf, method, rtol, atol, options))
    if res.status != 0:
        raise SolveError(f"the {method} solver failed{where} {failure_point(res, t0)}: "
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
        import pandas as pd  # here only: a simulation itself does not need pandas

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
        ``success=False`` and the part computed so far (nothing, when dynlearn's checks
        stopped the solve: see the module notes).
    **options
        Passed to the solver: ``first_step``, ``max_step``, ``min_step``, ``lband``, ``uband``;
        and ``max_nfev``, the most right-hand-side evaluations the solve may take (default
        :data:`MAX_NFEV`).

    Raises
    ------
    SolveError
        When the solver fails, or the right-hand side, its Jacobian or the solution is not
        finite where the solver cannot step around it, or the solve exceeds ``max_nfev``.

    Returns
    -------
    Solution
    """
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
        try:
            res = integrate(vf.fun, (t0, t[-1]), y0, t, vf.breakpoints(t0, t[-1]),
                            names=[s.name for s in model.states],
                            **solver_kwargs(vf, method, rtol, atol, options))
        except SolveError as exc:
            if throw:
                raise
            # the guard stopped the solve (see SolveGuard): nothing computed is returned
            res = OptimizeResult(t=np.zeros(0), y=np.zeros((model.n_states, 0)),
                                 status=exc.status, message=str(exc), nlu=0)
        if res.status != 0 and throw:
            raise SolveError(f"the {method} solver failed {failure_point(res, t0)}: "
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
