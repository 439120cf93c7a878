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
* ``"auto"`` (the default of ``dl.fit``; accepted by :func:`simulate`, ``dl.loss``,
  ``dl.loss_and_grad``, ``dl.Objective``): a cheap probe decides (:func:`choose_method`):
  RK45 for a non-stiff problem (the fast path: the exact discrete adjoint), LSODA for a
  stiff or borderline one. The choice and its reason are reported
  (:class:`MethodChoice`).

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

from dynlearn.core.bandwidth import lsoda_layout
from dynlearn.core.lsoda import lsoda_at
from dynlearn.core.vectorfield import VectorField
from dynlearn.data.checks import check_times, check_y0
from dynlearn.data.signals import as_input_signal
from dynlearn.errors import DataError, OptionError, OptionTypeError, SolveError, TimeLimitError

__all__ = ["simulate", "Solution", "METHODS", "STIFF_METHODS", "EXPLICIT_METHODS",
           "AUTO_METHOD", "METHOD_NAMES", "MethodChoice", "StiffnessProbe", "choose_method",
           "stiffness_probe", "BUDGET_EXHAUSTED",
           "MAX_BUFFER_BYTES", "MAX_NFEV", "SOLVER_CLASSES", "SolveGuard", "check_method",
           "check_options", "current_deadline", "deadline", "failure_point", "integrate",
           "integrate_field", "reset_deadline", "set_deadline", "solve_observed", "split_options"]

EXPLICIT_METHODS = ("RK45", "RK23", "DOP853")
STIFF_METHODS = ("Radau", "BDF", "LSODA")
METHODS = EXPLICIT_METHODS + STIFF_METHODS
#: the method name that asks dynlearn to choose (see :func:`choose_method`)
AUTO_METHOD = "auto"
#: every accepted ``method``: ``"auto"`` and the ``solve_ivp`` methods
METHOD_NAMES = (AUTO_METHOD,) + METHODS
#: method name -> scipy's solver class (for stepping a solver by hand, as the continuous
#: adjoint's backward pass does)
SOLVER_CLASSES = {"RK45": RK45, "RK23": RK23, "DOP853": DOP853, "Radau": Radau, "BDF": BDF,
                  "LSODA": LSODA}

# options solve_ivp's solvers understand besides the ones dynlearn sets itself
SCIPY_OPTIONS = {"first_step", "max_step", "min_step", "lband", "uband", "vectorized"}
# ... and dynlearn's own (see SolveGuard), taken out before scipy sees the options
SOLVER_OPTIONS = SCIPY_OPTIONS | {"max_nfev"}

#: LSODA without a dense solution steps inside the compiled solver between output times
#: (:func:`dynlearn.core.lsoda.lsoda_at`: ``solve_ivp``'s steps without its return to Python
#: after each). False: ``solve_ivp`` itself (for comparisons: benchmarks/lsoda_driver.py).
LSODA_BETWEEN_OUTPUTS = True
#: An LSODA solve that fails before its first output time is tried once more from a first
#: step of this fraction of its span (see :func:`_solve_ivp`)
LSODA_RETRY_FIRST_STEP = 1e-9
#: Default budget of right-hand-side evaluations of one solve (the ``max_nfev`` option):
#: a few seconds of work for small models; far beyond what a non-stiff solve of a
#: well-posed problem needs.
MAX_NFEV = 1_000_000
#: ``SolveError.solver_message`` of a solve stopped by its evaluation budget (``max_nfev``)
BUDGET_EXHAUSTED = "max_nfev reached"
#: ``SolveError.solver_message`` of a solve whose time stopped moving (SolveGuard)
NO_PROGRESS = "no progress in time"
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
      evaluations NaN. An occasional NaN trial stage is sampled far too rarely to count;
    * a solve that does not move: when :attr:`STALL_EVALS` calls advanced time so little
      that the rest of the span would take more than :attr:`STALL_PROJECTION` times the
      budget at that pace (or by at most :attr:`STALL_FRACTION` of the span, of ``|t|``
      when larger, where the span is not known). Such a solve would only end at its budget;
      LSODA's sensitivity solves crept on for a million calls at a point where the Jacobian
      was NaN (random starts of Crauste_CellSystems2017, 17-37 s each, where the plain
      solve failed at once).

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
    #: calls within which time must advance by more than STALL_FRACTION of the span
    STALL_EVALS = 80 * CHECK_EVERY
    STALL_PROJECTION = 1000.0
    STALL_FRACTION = 1e-12

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
        self._stall = (0, None)     # (call count, time) at the start of the current window
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
                             solver_message=BUDGET_EXHAUSTED)
        n0, t0 = self._stall
        if t0 is None or n == self._first:
            self._stall = (n, float(t))
        elif n - n0 >= self.STALL_EVALS:
            scale = max(abs(self.span[1] - self.span[0]) if self.span else 0.0, abs(t0))
            # the least progress that could still end within STALL_PROJECTION budgets
            left = abs(self.span[1] - float(t)) if self.span else 0.0
            least = max(self.STALL_FRACTION * scale,
                        left * (n - n0) / (self.STALL_PROJECTION * self.max_nfev))
            if abs(float(t) - t0) <= least:
                advice = ("this looks stiff; try method='LSODA' (or 'Radau', 'BDF')"
                          if self.method in EXPLICIT_METHODS else
                          "the solution probably meets a point where the equations are not "
                          "defined or blow up; check the parameters")
                raise SolveError(
                    f"the {self.method} solve{self.where} is stuck at t={_fmt(t)}: "
                    f"{n - n0} right-hand-side evaluations moved time by {abs(t - t0):.3g}, "
                    f"so the {left:.6g} left would take over "
                    f"{self.STALL_PROJECTION * self.max_nfev:.3g} (max_nfev "
                    f"{self.max_nfev}); {advice}", status=-1, t=float(t),
                    solver_message=NO_PROGRESS)
            self._stall = (n, float(t))
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


def check_method(method: str, auto: bool = False) -> str:
    """``method`` if it names a ``solve_ivp`` method (see :data:`METHODS`), or ``"auto"``
    where ``auto`` allows it, else an OptionError listing them."""
    names = METHOD_NAMES if auto else METHODS
    if not isinstance(method, str) or method not in names:
        raise OptionError(f"method={method!r} is not a solve_ivp method"
                          + (" nor 'auto'" if auto else "") + f"; use one of {list(names)}")
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
        if np.ndim(t) == 0:
            k = min(int(np.searchsorted(self._ends, t, side="left")), len(self.sols) - 1)
            return self.sols[k](t)
        # many times (the adjoint's quadrature nodes): each segment evaluates its own
        t = np.asarray(t, dtype=float)
        seg = np.minimum(np.searchsorted(self._ends, t, side="left"), len(self.sols) - 1)
        out = None
        for k in np.unique(seg):
            at = seg == k
            v = self.sols[k](t[at])
            if out is None:
                out = np.empty((v.shape[0], t.size))
            out[:, at] = v
        return out


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
        As for ``solve_ivp``, except that a time may repeat in ``t_eval`` (its values
        then repeat too).
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
    if t_eval is not None and np.size(t_eval) > 1 and np.any(np.diff(t_eval) == 0):
        # a repeated output time (replicate measurements): solve at the distinct times and
        # repeat their values (solve_ivp wants strictly increasing t_eval)
        tu, inv = np.unique(np.asarray(t_eval, dtype=float), return_inverse=True)
        res = integrate(fun, t_span, y0, tu, breaks, dense, where, names, **kw)
        rows = inv[inv < res.t.size]      # the outputs written (all, unless it failed)
        res.t, res.y = res.t[rows], res.y[:, rows]
        return res
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
            res = _solve_ivp(fun, t_span, y0, t_eval, dense, kw)
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
            res = _solve_ivp(fun, (a, b), y, te, dense, kw)
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


def _solve_ivp(fun, t_span, y0, t_eval, dense: bool, kw: dict):
    """``solve_ivp``, except that LSODA without a dense solution steps inside the compiled
    solver between output times (:func:`dynlearn.core.lsoda.lsoda_at`: the same steps
    without a return to Python after each; half the time of a small model's solve), and
    that an LSODA solve failing before its first output time is tried once more from a
    tiny first step (:data:`LSODA_RETRY_FIRST_STEP` of its span)."""
    res = _solve_once(fun, t_span, y0, t_eval, dense, kw)
    if (kw.get("method") == "LSODA" and res.status != 0 and "first_step" not in kw
            and not np.any((np.asarray(res.t) - t_span[0]) * np.sign(t_span[1] - t_span[0])
                           > 0)):
        # LSODA sizes its first step from the derivative at the start; a drive that decays
        # within a tiny fraction of that step (a stimulus pulse) then fails its corrector
        # ten times before the step is small enough ("repeated convergence failures").
        # From a tiny first step the step size grows ten-fold per step instead (measured:
        # the forward sensitivities of Fiedler_BMCSystBiol2016 at a fit's start, 1,500-1,800
        # evaluations where BDF took 2,364). Dense solves (the adjoint's forward pass) and
        # backward spans get the same second try.
        first = LSODA_RETRY_FIRST_STEP * abs(t_span[1] - t_span[0])
        again = _solve_once(fun, t_span, y0, t_eval, dense, {**kw, "first_step": first})
        if again.status == 0:
            return again
    return res


def _solve_once(fun, t_span, y0, t_eval, dense: bool, kw: dict):
    if kw.get("method") == "LSODA" and not dense and LSODA_BETWEEN_OUTPUTS:
        res = lsoda_at(fun, t_span, y0, t_eval, **{k: v for k, v in kw.items()
                                                     if k != "method"})
        if res is not None:
            return res
    return solve_ivp(fun, t_span, y0, t_eval=t_eval, dense_output=dense, **kw)


def failure_point(res, t0: float) -> str:
    """How far a failed solve got, for messages: ``at t=<its last output time>``, or
    ``before its first output time (from t=<t0>)`` when it wrote none."""
    if res.t.size:
        return f"at t={res.t[-1]}"
    return f"before its first output time (from t={t0})"


def integrate_field(vf: VectorField, t_span, y0, t_eval, method: str, rtol, atol,
                    options: dict, dense: bool = False, where: str = ""):
    """:func:`integrate` of a vector field's state (restarted at its breakpoints) with the
    stiff methods' exact Jacobian.

    LSODA gets it dense or banded as :func:`dynlearn.core.bandwidth.lsoda_layout` rules
    for the model's Jacobian pattern: a large model whose Jacobian has a narrow band
    (possibly after reordering its states) is solved in the reordered states with a banded
    Jacobian, and its outputs and dense solution are mapped back, so the result is in the
    model's state order either way. Options naming ``lband``/``uband`` keep the dense path.

    Returns
    -------
    OptimizeResult
        As :func:`integrate`'s.
    """
    kw = solver_kwargs(vf, method, rtol, atol, options)
    names = [s.name for s in vf.model.states]
    fun, start = vf.fun, np.asarray(y0, dtype=float)
    order = None
    if method == "LSODA" and not {"lband", "uband"} & set(options):
        order = lsoda_layout(vf.c.jacobian_pattern())
    if order is not None:
        fun, start, names = order.prepare(fun, start, kw, vf.jac, names)
    t0, t1 = t_span
    res = integrate(fun, (t0, t1), start, t_eval, vf.breakpoints(t0, t1), dense, where=where,
                    names=names, **kw)
    return order.restore(res) if order is not None else res


def solve_observed(vf: VectorField, t0: float, t_obs: np.ndarray, y0: np.ndarray, method: str,
                   rtol, atol, options: dict, dense: bool = False, where: str = ""):
    """Integrate from ``t0`` and return ``(Y at t_obs, scipy result)``; raise SolveError."""
    t_end = t_obs[-1]
    if t_end == t0:
        return np.tile(y0, (t_obs.size, 1)), None
    res = integrate_field(vf, (t0, t_end), y0, t_obs, method, rtol, atol, options, dense,
                          where=where)
    if res.status != 0:
        raise SolveError(f"the {method} solver failed{where} {failure_point(res, t0)}: "
                         f"{res.message} Try a stiff method (Radau, BDF, LSODA), looser "
                         "tolerances, or check the parameters for blow-up.",
                         status=res.status, t=float(res.t[-1]) if res.t.size else t0,
                         solver_message=res.message)
    return res.y.T, res


# --- method="auto": is the problem stiff? ---------------------------------------------------
#: how far Dormand-Prince (RK45)'s region of absolute stability reaches along the negative
#: real axis: a step ``h`` is stable for eigenvalues of the Jacobian with ``h |lambda|``
#: below about this
EXPLICIT_STABILITY = 3.3
#: a problem is stiff when an explicit method would need at least this many times the
#: steps of the probe (LSODA, which is implicit where it pays) ...
STIFF_RATIO = 10.0
#: ... and non-stiff below this; in between it is borderline, and LSODA (which handles
#: both) is chosen
NONSTIFF_RATIO = 2.0
#: right-hand-side evaluations the probe may take (or the solve's ``max_nfev`` if lower): a
#: probe that needs more (a blow-up, a solve far longer than its time scales) is no verdict,
#: and LSODA is chosen
PROBE_MAX_NFEV = 200_000
# floating-point work allowed for the probe's eigenvalues (points x n^3); beyond it the
# Jacobian's spectrum is sampled at fewer, evenly spread steps
_EIG_BUDGET = 2e7


@dataclass(frozen=True)
class StiffnessProbe:
    """What :func:`stiffness_probe` measured on one solve.

    Attributes
    ----------
    steps : int
        Steps the probe (LSODA) took.
    explicit_steps : float
        Estimated steps an explicit method (RK45) needs to stay stable along the same
        trajectory: the sum over the probe's steps of ``max(1, h rho / 3.3)``, with ``rho``
        the spectral radius of the exact Jacobian at the step.
    max_h_rho : float
        The largest ``h rho`` seen, and ``t_max`` where.
    t_max : float
    nfev : int
        Right-hand-side evaluations of the probe.
    """

    steps: int
    explicit_steps: float
    max_h_rho: float
    t_max: float
    nfev: int

    @property
    def ratio(self) -> float:
        """Explicit steps per probe step (1: no stiffness at all)."""
        return self.explicit_steps / max(self.steps, 1)


@dataclass(frozen=True)
class MethodChoice:
    """The solver chosen for ``method="auto"`` and why (see :func:`choose_method`).

    Attributes
    ----------
    method : str
        The ``solve_ivp`` method used: ``"RK45"`` or ``"LSODA"``.
    stiff : bool or None
        The verdict; ``None`` when borderline or undecided (then LSODA).
    ratio : float
        Estimated explicit steps per step of the probe (NaN when there was no probe).
    reason : str
        One phrase, e.g. ``"stiff: an explicit method needs ~4.1e+03x LSODA's steps"``.
    requested : str
        What the user asked for (``"auto"``).
    """

    method: str
    stiff: bool | None
    ratio: float
    reason: str
    requested: str = AUTO_METHOD

    def describe(self) -> str:
        """``"LSODA (auto: stiff, ...)"``: for summaries and messages."""
        return f"{self.method} ({self.requested}: {self.reason})"

    def to_dict(self) -> dict:
        """A JSON-ready dict (:meth:`from_dict` reads it back)."""
        return dict(method=self.method, stiff=self.stiff,
                    ratio=None if not np.isfinite(self.ratio) else float(self.ratio),
                    reason=self.reason, requested=self.requested)

    @classmethod
    def from_dict(cls, d: dict) -> MethodChoice:
        """The choice :meth:`to_dict` wrote."""
        ratio = d.get("ratio")
        return cls(str(d["method"]), d.get("stiff"), np.nan if ratio is None else float(ratio),
                   str(d.get("reason", "")), str(d.get("requested", AUTO_METHOD)))


def stiffness_probe(vf: VectorField, t0: float, t_end: float, y0, rtol, atol,
                    options: dict | None = None, where: str = "") -> StiffnessProbe:
    """Measure how stiff the solve of ``vf`` from ``(t0, y0)`` to ``t_end`` is.

    One LSODA solve at the given tolerances (compiled stepping, so cheap whether the problem
    is stiff or not) records its steps ``h``; at those steps (all of them, or an even spread
    when the model is large) the spectral radius ``rho`` of the exact Jacobian tells how
    small an explicit step must be to stay stable (``h rho <= 3.3`` for RK45). LSODA's steps
    follow accuracy (it switches to BDF where stability would limit Adams steps), so
    ``sum(max(1, h rho / 3.3))`` over its steps, divided by their number, is how many times
    more steps an explicit method needs than accuracy asks for: about 1 for a non-stiff
    problem, thousands for chemical kinetics. No property of a particular model enters.

    Parameters
    ----------
    vf : VectorField
    t0, t_end : float
    y0 : array_like
    rtol, atol : solver tolerances (the solve's own)
    options : dict, optional
        Solver options (``max_step``, ``max_nfev``, ...); the probe takes at most
        :data:`PROBE_MAX_NFEV` evaluations.
    where : str
        For messages, e.g. `` in experiment 'run1'``.

    Raises
    ------
    SolveError
        LSODA could not solve the problem within the budget.
    """
    opts = {k: v for k, v in dict(options or {}).items() if k != "vectorized"}
    opts["max_nfev"] = min(PROBE_MAX_NFEV, opts.get("max_nfev") or PROBE_MAX_NFEV)
    nfev0 = vf.nfev
    y = np.asarray(y0, dtype=float)
    bounds = np.concatenate([[float(t0)], vf.breakpoints(t0, t_end), [float(t_end)]])
    names = [s.name for s in vf.model.states]
    T, Y, H = [], [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        res = integrate(vf.fun, (a, b), y, None, where=where, names=names,
                        **solver_kwargs(vf, "LSODA", rtol, atol, opts))
        if res.status != 0:
            raise SolveError(f"the LSODA solver failed{where} {failure_point(res, a)}: "
                             f"{res.message}", status=res.status,
                             t=float(res.t[-1]) if res.t.size else a, solver_message=res.message)
        T.append(res.t[1:])
        H.append(np.diff(res.t))
        Y.append(res.y[:, 1:].T)
        y = res.y[:, -1]
    T, H, Y = np.concatenate(T), np.concatenate(H), np.concatenate(Y)
    steps = int(T.size)
    if steps == 0:
        return StiffnessProbe(0, 0.0, 0.0, float(t0), vf.nfev - nfev0)
    n = max(vf.n, 1)
    k = steps if steps * n ** 3 <= _EIG_BUDGET else min(steps, max(8, int(_EIG_BUDGET / n ** 3)))
    idx = np.unique(np.linspace(0, steps - 1, k).round().astype(int))
    rho = np.full(idx.size, np.nan)
    chunk = max(1, int(2 ** 20 // (n * n)))        # at most 8 MB of Jacobians at a time
    with np.errstate(all="ignore"):
        for s in range(0, idx.size, chunk):
            sel = idx[s:s + chunk]
            J = vf.jac_batch(T[sel], Y[sel])[0]
            J = np.asarray(J.toarray() if hasattr(J, "toarray") else J, dtype=float)
            ok = np.all(np.isfinite(J), axis=(1, 2))
            if ok.any():
                lam = np.linalg.eigvals(J[ok])
                rho[s:s + sel.size][ok] = np.max(np.abs(lam), axis=1)
    good = np.isfinite(rho)
    if not good.any():
        return StiffnessProbe(steps, float(steps), np.nan, float(t0), vf.nfev - nfev0)
    hr = H[idx[good]] * rho[good]
    explicit = steps * float(np.mean(np.maximum(1.0, hr / EXPLICIT_STABILITY)))
    j = int(np.argmax(hr))
    return StiffnessProbe(steps, explicit, float(hr[j]), float(T[idx[good][j]]),
                          vf.nfev - nfev0)


def choose_method(solves, rtol, atol, options: dict | None = None) -> MethodChoice:
    """The solver for ``method="auto"``, from :func:`stiffness_probe` of each solve.

    Stiff (an explicit method needs at least :data:`STIFF_RATIO` times LSODA's steps, in
    any solve): LSODA, the fastest stiff solver measured (``docs/solvers.md``). Non-stiff
    (below :data:`NONSTIFF_RATIO` in every solve): RK45, whose exact discrete adjoint is
    dynlearn's fastest gradient. Borderline, or the probe failed: LSODA, which switches
    between stiff and non-stiff methods by itself, so it is the robust choice.

    Parameters
    ----------
    solves : iterable of (VectorField, t0, t_end, y0, where)
        The solves to probe (an experiment each); probing stops at the first stiff one.
    rtol, atol, options : the solves' settings

    Returns
    -------
    MethodChoice
    """
    worst, at = None, ""
    for vf, t0, t_end, y0, where in solves:
        if t_end == t0:
            continue
        try:
            probe = stiffness_probe(vf, t0, t_end, y0, rtol, atol, options, where)
        except SolveError as exc:
            text = str(exc).split(";")[0]
            return MethodChoice("LSODA", None, np.nan,
                                f"the stiffness probe failed ({text}); LSODA handles both "
                                "stiff and non-stiff problems")
        if worst is None or probe.ratio > worst.ratio:
            worst, at = probe, where
        if probe.ratio >= STIFF_RATIO:
            break
    if worst is None:
        return MethodChoice("RK45", False, np.nan, "nothing to integrate")
    r = worst.ratio
    detail = (f"an explicit method needs ~{r:.2g}x LSODA's {worst.steps} steps{at} "
              f"(step x Jacobian spectral radius up to {worst.max_h_rho:.2g})")
    if r >= STIFF_RATIO:
        return MethodChoice("LSODA", True, r, f"stiff: {detail}")
    if r < NONSTIFF_RATIO:
        return MethodChoice("RK45", False, r, f"non-stiff: {detail}")
    return MethodChoice("LSODA", None, r, f"borderline: {detail}; LSODA handles both")


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
        Right-hand side and Jacobian evaluations, LU decompositions (of the solve, not of
        the probe of ``method="auto"``).
    method : str
        The ``solve_ivp`` method that ran.
    method_choice : MethodChoice or None
        With ``method="auto"``: what was chosen and why.
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
    method: str = ""
    method_choice: MethodChoice | None = None

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
        Any ``solve_ivp`` method; stiff ones get the exact Jacobian. ``"auto"``: a probe
        chooses RK45 or LSODA (:func:`choose_method`); ``solution.method_choice`` says
        which and why.
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
    method = check_method(method, auto=True)
    check_options(options, "simulate")
    t = check_times(t)
    t0 = float(t[0]) if t0 is None else float(t0)
    if t0 > t[0]:
        raise DataError(f"`t0`={t0} is after the first output time t[0]={t[0]}")
    y0 = check_y0(y0, model.n_states, [s.name for s in model.states])
    signal = as_input_signal(inputs, model) if model.inputs else None
    theta = model.check_theta(theta)
    choice = None
    if method == AUTO_METHOD:
        # the probe runs on its own vector field, so the solve's counts are its own
        choice = choose_method([(VectorField(model, theta, signal), t0, float(t[-1]), y0, "")],
                               rtol, atol, options)
        method = choice.method
    vf = VectorField(model, theta, signal)
    if t[-1] == t0:
        Y = np.tile(y0, (t.size, 1))
        res = None
    else:
        try:
            res = integrate_field(vf, (t0, t[-1]), y0, t, method, rtol, atol, options)
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
                    time_name=model.time.name, method=method, method_choice=choice)
