"""What every optimizer shares: the :class:`Optimizer` interface, the :class:`Status`
enumeration of why a run stopped, the :class:`OptimizeOutcome` it returns, and the helpers
that decide how trial points are evaluated.

Every optimizer works on the fit's objective in the optimizer's coordinates ``x`` (log for
log-transformed parameters, see :class:`~dynlearn.core.parameters.ParameterSpace`) and
respects its box bounds. A trial point where the model cannot be solved (the solver fails,
the state blows up, a log-loss prediction is not positive) raises
:class:`~dynlearn.objective.objective.Rejected`; each optimizer rejects such a point and
backs off (a larger damping, a shorter step) instead of stopping.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from dynlearn.errors import OptionError
from dynlearn.objective.objective import Rejected

__all__ = ["STALL_ADVICE", "OptimizeOutcome", "Optimizer", "Status", "TrialPolicy",
           "check_entries", "check_positive_int", "small_step", "start_system", "xtol_outcome"]


class Status(enum.Enum):
    """Why an optimizer run, or a whole fit, stopped: one enumeration for every optimizer.

    Only the ``CONVERGED_*`` members are convergence (:attr:`converged`, and so
    ``success``); every other member says the fit stopped short of it. Each member has a
    fixed one-line :attr:`message`; the optimizer's own words for the particular run are in
    :attr:`OptimizeOutcome.message` and :attr:`OptimizeOutcome.detail`.

    The values are short lower-case codes, as written to a saved result's JSON file.
    """

    #: the (scaled) gradient is below ``gtol``
    CONVERGED_GTOL = "converged_gtol"
    #: the cost stopped falling: relative reduction below ``ftol`` in a step, or below
    #: ``ptol`` over ``patience`` iterations
    CONVERGED_FTOL = "converged_ftol"
    #: the step is below ``xtol`` relative to the point
    CONVERGED_XTOL = "converged_xtol"
    #: no step lowers the cost although the convergence criteria do not hold
    STALLED = "stalled"
    #: the iteration (or evaluation) budget ran out
    MAX_ITER = "max_iter"
    #: the wall-time limit of the fit (``max_time``) was reached
    MAX_TIME = "max_time"
    #: the user's callback asked to stop
    CALLBACK = "callback"
    #: interrupted (Ctrl-C)
    INTERRUPTED = "interrupted"
    #: the model cannot be solved at any point tried (or the optimizer reported an error)
    FAILED = "failed"

    @property
    def converged(self) -> bool:
        """True for the members that are genuine convergence."""
        return self in _CONVERGED

    @property
    def message(self) -> str:
        """The member's fixed one-line description."""
        return _MESSAGES[self]

    @classmethod
    def coerce(cls, value, success: bool = False, message: str = "") -> Status:
        """A :class:`Status` from a member, its value or name, or the integer status of a
        result saved before this enumeration existed.

        Parameters
        ----------
        value : Status, str or int
            The integer codes were 0 (ended by the optimizer, converged or not), 1 failed,
            2 stopped (time limit or callback), 3 interrupted.
        success, message : bool, str
            The saved ``success`` and ``message``, which tell the integer code 0 and 2
            apart into members.
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls(value)
            except ValueError:
                try:
                    return cls[value.upper()]
                except KeyError:
                    raise OptionError(f"unknown fit status {value!r}: use one of "
                                      f"{[m.value for m in cls]}") from None
        code, text = int(value), message.lower()
        if code == 1:
            return cls.FAILED
        if code == 2:
            return cls.MAX_TIME if "max_time" in text else cls.CALLBACK
        if code == 3:
            return cls.INTERRUPTED
        if not success:
            return cls.MAX_ITER if "maximum number of iterations" in text else cls.STALLED
        if "gradient" in text or "gtol" in text:
            return cls.CONVERGED_GTOL
        if "step" in text or "xtol" in text:
            return cls.CONVERGED_XTOL
        return cls.CONVERGED_FTOL


_CONVERGED = frozenset({Status.CONVERGED_GTOL, Status.CONVERGED_FTOL, Status.CONVERGED_XTOL})

_MESSAGES = {
    Status.CONVERGED_GTOL: "converged: the gradient is below its tolerance (gtol)",
    Status.CONVERGED_FTOL: "converged: the cost stopped falling (relative reduction below "
                           "ftol, or below ptol over `patience` iterations)",
    Status.CONVERGED_XTOL: "converged: the step is below its tolerance (xtol)",
    Status.STALLED: "stalled: no step lowers the cost, but the convergence criteria do not "
                    "hold",
    Status.MAX_ITER: "not converged: the iteration limit was reached",
    Status.MAX_TIME: "not converged: the time limit was reached",
    Status.CALLBACK: "not converged: the callback asked to stop",
    Status.INTERRUPTED: "not converged: interrupted",
    Status.FAILED: "failed: the model cannot be solved at the points tried",
}

#: what to try after a stall ("try " + this ends the optimizers' stall messages)
STALL_ADVICE = ("tighter solver tolerances (rtol, atol) if the cost is noisy, a check of the "
                "gradient (dynlearn check-gradients), or another start (n_starts)")


@dataclass
class OptimizeOutcome:
    """What one optimizer run returns: the final point and why it stopped.

    Attributes
    ----------
    x : ndarray
        The final point (the best one the run found).
    cost : float
        Its cost (inf when the model could not be solved there).
    status : Status
        Why the run stopped.
    message : str
        The run's own one-line account (the criterion met, what to try after a stall);
        defaults to ``status.message``.
    nit : int
        Iterations.
    detail : str
        The underlying optimizer's own text where there is one (scipy's L-BFGS-B message,
        the inner Levenberg-Marquardt run of multiple shooting).
    extra : dict
    """

    x: np.ndarray
    cost: float
    status: Status
    message: str = ""
    nit: int = 0
    detail: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.message:
            self.message = self.status.message

    @property
    def success(self) -> bool:
        """True only for genuine convergence (:attr:`Status.converged`)."""
        return self.status.converged


class Optimizer:
    """Base class. Subclasses implement :meth:`run`."""

    #: needs the residual Jacobian (least-squares structure)
    least_squares = False
    #: the constructor keyword of the iteration budget
    #: (see :func:`~dynlearn.optimizers.optimizer_from_name`)
    budget_option = "max_iter"

    def run(self, obj, x0: np.ndarray, state: dict | None = None) -> OptimizeOutcome:
        """Minimise ``obj`` from ``x0``.

        Parameters
        ----------
        obj : objective
        x0 : ndarray
        state : dict, optional
            The run's resumable internals. The optimizer keeps this dict up to date at the
            end of every iteration, before it reports the iteration to ``obj`` (so a
            checkpoint written then holds a state it can continue from): its iterate
            (``"x"``) and whatever else it needs to take the same next step as an
            uninterrupted run (damping, moments, counts, the stop once decided). Given such
            a dict, read back from a checkpoint, the run continues from it instead of
            starting at ``x0``. Values are numbers, strings, lists, dicts and float arrays
            (see :func:`dynlearn.fitting.checkpoint.encode`).
        """
        raise NotImplementedError  # pragma: no cover

    #: the entries of a resumed run's ``state`` and their kinds (see :func:`check_entries`)
    state_entries: dict = {}

    def check_state(self, state: dict, size: int) -> None:
        """Check a ``state`` read back from a checkpoint (see :meth:`run`) before a run
        continues from it, for a problem of ``size`` unknowns; raises ``ValueError`` saying
        what is wrong. An empty state (the run had not ended an iteration) is always
        fine."""
        if not isinstance(state, dict):
            raise ValueError("the optimizer state is not a table")
        if state:
            check_entries(state, self.state_entries, size)

    def stages(self) -> list[Optimizer]:
        """The optimizers a fit runs in turn (this one alone, unless it is staged)."""
        return [self]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"

    def to_dict(self) -> dict:
        """The optimizer's type and scalar settings (written with a saved result)."""
        return {"type": type(self).__name__,
                **{k: v for k, v in vars(self).items()
                   if not k.startswith("_") and isinstance(v, (int, float, str, bool, type(None)))}}


def check_entries(state: dict, kinds: dict, size: int) -> None:
    """Raise ``ValueError`` unless every entry ``kinds`` names is in ``state`` and of its
    kind: ``"point"`` (``size`` finite numbers), ``"vector"`` (finite numbers, any length),
    ``"number"``, ``"count"`` (an integer >= 0), ``"numbers"`` (a list of numbers),
    ``"counts"`` (a list of two counts), ``"stop"`` (``None`` or ``[status, message]``),
    ``"flag"`` (a bool), ``"words"`` (a list of strings), ``"status"`` (a status value) or
    ``"table"`` (a dict)."""
    for key, kind in kinds.items():
        if key not in state:
            raise ValueError(f"the optimizer state has no {key!r}")
        v = state[key]
        bad = f"the optimizer state's {key!r} is not {kind}: {v!r:.60}"
        if kind in ("point", "vector"):
            try:
                a = np.asarray(v, dtype=float)
            except (TypeError, ValueError):
                raise ValueError(bad) from None
            if a.ndim != 1 or not np.all(np.isfinite(a)) or (kind == "point" and a.size != size):
                raise ValueError(bad)
        elif kind in ("number", "count"):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                    or np.isnan(v) or kind == "count" and (v < 0 or not float(v).is_integer()):
                raise ValueError(bad)
        elif kind == "numbers":
            if not isinstance(v, list) or not all(
                    isinstance(c, (int, float)) and not isinstance(c, bool) for c in v):
                raise ValueError(bad)
        elif kind == "counts":
            if not isinstance(v, list) or len(v) != 2 or not all(
                    isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in v):
                raise ValueError(bad)
        elif kind == "stop":
            if v is not None:
                if not isinstance(v, list) or len(v) != 2 or not isinstance(v[1], str):
                    raise ValueError(bad)
                check_entries({key: v[0]}, {key: "status"}, size)
        elif kind == "status":
            try:
                Status(v)
            except (ValueError, TypeError):
                raise ValueError(bad) from None
        elif kind == "flag":
            if not isinstance(v, bool):
                raise ValueError(bad)
        elif kind == "words":
            if not isinstance(v, list) or not all(isinstance(w, str) for w in v):
                raise ValueError(bad)
        elif kind == "table" and not isinstance(v, dict):
            raise ValueError(bad)


def small_step(step: np.ndarray, x: np.ndarray, xtol: float) -> bool:
    """The step test of the least-squares optimizers: ``|step| <= xtol (xtol + |x|)``."""
    return bool(np.linalg.norm(step) <= xtol * (xtol + np.linalg.norm(x)))


def xtol_outcome(step: np.ndarray, x: np.ndarray, xtol: float,
                 message: str) -> tuple[Status, str]:
    """How to report a stop by :func:`small_step`: ``(CONVERGED_XTOL, message)`` when the
    step is small in every coordinate too, ``|step_i| <= sqrt(xtol) (1 + |x_i|)``, else
    ``STALLED`` with the reason.

    The norm test alone is fooled when a few coordinates have run away to huge values: on
    the LV-UDE from small initial weights a saturated network unit (its Jacobian column
    vanishing, so its scaled step explodes) sent one weight to 1e130, and the steps of
    the other coordinates, still 10-20% of their size, passed as "relative step below
    xtol". Genuine stops of this kind move every coordinate by about ``xtol`` (1e-12 to
    1e-10 relatively over the fits of the test suite), far inside the second test.
    """
    step, x = np.asarray(step, dtype=float), np.asarray(x, dtype=float)
    worst = np.abs(step) / (1.0 + np.abs(x))
    k = int(np.argmax(worst)) if worst.size else 0
    if not worst.size or worst[k] <= np.sqrt(xtol):
        return Status.CONVERGED_XTOL, message
    big = int(np.argmax(np.abs(x)))
    return Status.STALLED, (
        f"stalled: the step is below xtol only relative to |x| = {np.linalg.norm(x):.3g}, "
        f"dominated by runaway coordinates (x[{big}] = {x[big]:.3g}: a saturated network "
        f"unit?), while x[{k}] still moves by {worst[k]:.2g} x (1 + |x[{k}]|): not converged; "
        f"try l2 > 0 or other initial weights")


def check_positive_int(v, name: str) -> int:
    """``v`` as an int; :class:`~dynlearn.OptionError` unless it is a positive integer."""
    if not isinstance(v, (int, np.integer)) or v < 1:
        raise OptionError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def start_system(obj, x0):
    """``(x, r, A, b, cost)`` at the clipped starting point of a least-squares optimizer, or
    a failed outcome where the model cannot be solved there.

    ``A, b`` stand for the Jacobian and the residuals in every formula (see
    :meth:`dynlearn.objective.objective.LeastSquaresProblem.system`): ``J`` and ``r``
    themselves in-process, the triangular factor of ``[J r]`` when the experiments run on
    Dask.
    """
    x = np.clip(np.asarray(x0, dtype=float), obj.space.lower, obj.space.upper)
    try:
        r, A, b = obj.system(x)
    except Rejected as exc:
        return OptimizeOutcome(x, np.inf, Status.FAILED, f"the model cannot be solved at the "
                               f"starting point: {exc}")
    cost = float(r @ r)
    obj.report(x, cost)
    return x, r, A, b, cost


def begin_least_squares(setting, obj, x0, state: dict):
    """The start shared by the least-squares optimizers' ``run``.

    Returns an :class:`OptimizeOutcome` where there is nothing to iterate: the run had
    already ended when ``state`` was saved (its outcome, as it was), or the model cannot be
    solved at the start. Otherwise ``(policy, x, r, A, b, cost)`` at the starting point (or
    the saved iterate, with the :class:`TrialPolicy`'s counts restored; see
    :func:`start_system` for ``A, b``).
    """
    if state.get("stop"):
        return OptimizeOutcome(np.asarray(state["x"], dtype=float), float(state["cost"]),
                               Status(state["stop"][0]), state["stop"][1], int(state["it"]))
    policy = TrialPolicy(setting, obj)
    start = start_system(obj, state["x"] if "x" in state else x0)
    if isinstance(start, OptimizeOutcome):
        return start
    if "x" in state:        # resumed at the end of an iteration
        policy.first, policy.first_accepted = (int(v) for v in state["policy"])
    return (policy, *start)


class TrialPolicy:
    """Whether to evaluate the first trial point of an iteration with its Jacobian.

    Evaluated alone, a trial costs a solve ``t_res``, plus a solve with sensitivities
    ``t_jac`` once accepted; evaluated with its Jacobian it costs ``t_jac`` either way. With
    first trials accepted at a rate ``a``, the Jacobian pays when ``a > 1 - t_res / t_jac``.
    The discrete (recorded Runge-Kutta) Jacobians cost 1.1-2 solves (measured on the
    benchmark problems), so for them the rule is ``a > 1/2``, ``a`` counted with a prior of
    one accepted and one rejected trial. Forward sensitivities cost many solves (their
    system grows with the parameters): there it never pays enough to risk.

    The decision uses counts, not timings, so a fit evaluates the same points the same way
    every time it is run (serially or on Dask). It changes what is computed, never the
    iterates: the Jacobian at an accepted point is the same either way, and only its
    residuals enter the damping update.

    Parameters
    ----------
    setting : {"auto", True, False}
        The optimizer's ``jacobian_at_trial``; ``"auto"`` follows the objective's
        ``cheap_jacobian``.
    obj : objective
    """

    def __init__(self, setting, obj):
        self.enabled = bool(getattr(obj, "cheap_jacobian", False)) if setting == "auto" \
            else bool(setting)
        self.first, self.first_accepted = 0, 0

    @property
    def counts(self) -> list[int]:
        """``[first trials, first trials accepted]``: what a saved state keeps."""
        return [self.first, self.first_accepted]

    def choose(self) -> bool:
        """Evaluate the next first trial with its Jacobian?"""
        return self.enabled and (self.first_accepted + 1) / (self.first + 2) > 0.5

    def count(self, accepted: bool) -> None:
        """Record whether a first trial was accepted."""
        self.first += 1
        self.first_accepted += bool(accepted)

    @staticmethod
    def system(obj, x):
        """``obj.system(x)`` at an accepted point (remembered by ``obj`` when the trial came
        with it), or None where the sensitivities cannot be solved."""
        try:
            return obj.system(x)
        except Rejected:
            return None

    @staticmethod
    def trial(obj, x, with_jacobian: bool) -> float:
        """The cost at a trial point; inf where the model cannot be solved."""
        try:
            r = obj.system(x)[0] if with_jacobian else obj.residuals(x)
        except Rejected:
            return np.inf
        return float(r @ r)
