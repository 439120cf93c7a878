"""The one module that relies on scipy's private Runge-Kutta internals.

The discrete adjoint and the discrete residual Jacobian (:mod:`dynlearn.sensitivity.discrete`)
differentiate the steps scipy's ``RK45``/``RK23`` actually take, so they need more than
scipy's public API offers. Everything they rely on is used here and nowhere else:

* the classes' Butcher tableau and dense-output matrix, class attributes ``n_stages``,
  ``A`` (``(n_stages, <= n_stages)``, lower triangular), ``B``, ``C`` (``(n_stages,)``) and
  ``P`` (``(n_stages + 1, order)``, the polynomial coefficients of the dense output);
* ``_step_impl()``, the method ``step()`` calls once per attempted step, returning
  ``(success, message)`` and leaving the accepted step in ``t`` and ``y``;
* the instance attribute ``K``, the ``(n_stages + 1, n)`` stage array (the last row
  ``f(t_new, y_new)``), which scipy overwrites in place at every step;
* the instance attribute ``h_abs``, the step size the solver will try next: a solver
  restarted at a step's end with ``first_step=h_abs`` takes exactly the steps the original
  would have taken (checkpointed adjoints rely on it);
* ``scipy.integrate._ivp.rk.rk_step``, one explicit step (only to replay steps in tests).

``tests/test_scipy_shim.py`` checks each of these, by name and by behaviour (a recorded step
equals scipy's own, a restart retraces the steps, the dense output matches scipy's), so a
scipy release that changes them fails loudly there. :func:`missing_internals` lists what is
absent or shaped unexpectedly, naming each attribute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.integrate import RK23, RK45

__all__ = ["RECORDING_SOLVERS", "RecordingRK23", "RecordingRK45", "Tableau",
           "missing_internals", "next_step_size", "rk_step", "tableau"]


@dataclass(frozen=True)
class Tableau:
    """The coefficients of an explicit Runge-Kutta method with dense output.

    Attributes
    ----------
    n_stages : int
        ``s``, the number of stages (the first-same-as-last stage not included).
    A : ndarray, shape (s, s)
        Stage coefficients, strictly lower triangular (scipy stores ``RK45``'s without its
        last, zero column; it is padded here).
    B : ndarray, shape (s,)
        Weights of the stages in the step.
    C : ndarray, shape (s,)
        Stage times as fractions of the step.
    P : ndarray, shape (s + 1, k)
        Dense output: ``y(t_j + sigma h) = y_j + h K^T P [sigma, sigma^2, ..., sigma^k]``,
        with ``K`` the ``s + 1`` stage values of the step.
    """

    n_stages: int
    A: np.ndarray
    B: np.ndarray
    C: np.ndarray
    P: np.ndarray


def tableau(cls) -> Tableau:
    """The :class:`Tableau` of a scipy explicit Runge-Kutta class (``RK45``, ``RK23`` or a
    subclass), read from its class attributes."""
    s = int(cls.n_stages)
    A = np.zeros((s, s))
    A[:, :cls.A.shape[1]] = cls.A
    return Tableau(s, A, np.asarray(cls.B, dtype=float), np.asarray(cls.C, dtype=float),
                   np.asarray(cls.P, dtype=float))


class _Recording:
    """Mixin recording each accepted step of a scipy explicit Runge-Kutta solver."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rec_t, self.rec_h, self.rec_y, self.rec_K = [], [], [], []

    def _step_impl(self):
        t, y = self.t, self.y
        ok, msg = super()._step_impl()
        if ok:
            self.rec_t.append(t)
            self.rec_h.append(self.t - t)
            self.rec_y.append(y)
            self.rec_K.append(self.K.copy())  # scipy reuses K in place
        return ok, msg

    def clear_record(self) -> None:
        """Forget the steps recorded so far."""
        self.rec_t, self.rec_h, self.rec_y, self.rec_K = [], [], [], []

    def record(self):
        """``(t_j, h_j, y_j, K_j)`` of the steps recorded so far, as arrays."""
        return (np.array(self.rec_t), np.array(self.rec_h), np.array(self.rec_y),
                np.array(self.rec_K))


class RecordingRK45(_Recording, RK45):
    """``scipy.integrate.RK45`` recording its accepted steps (a valid ``solve_ivp`` method).

    After each accepted step, ``rec_t``, ``rec_h``, ``rec_y`` and ``rec_K`` gain the step's
    start, size, start state and stage values (see :meth:`record`).
    """

    method_name = "RK45"


class RecordingRK23(_Recording, RK23):
    """``scipy.integrate.RK23`` recording its accepted steps."""

    method_name = "RK23"


#: method name -> recording solver class
RECORDING_SOLVERS = {"RK45": RecordingRK45, "RK23": RecordingRK23}


def next_step_size(solver) -> float | None:
    """The step size a scipy solver will try next (``None`` when it does not say, e.g.
    LSODA). Restarting a Runge-Kutta solver with ``first_step`` set to it retraces the
    steps the original would have taken."""
    h = getattr(solver, "h_abs", None)
    return None if h is None else abs(float(h))


def rk_step(cls, fun, t: float, y, f, h: float, K):
    """One step of size ``h`` of the method of ``cls`` (``RK45``, ``RK23``), exactly as
    scipy computes it (scipy's private ``rk_step``); replays a recorded step sequence.

    Parameters
    ----------
    cls : type
        A scipy explicit Runge-Kutta class.
    fun : callable
        ``fun(t, y)``.
    t, y, f : float, ndarray, ndarray
        Time, state and ``fun(t, y)`` at the step's start.
    h : float
        The step size.
    K : ndarray, shape (n_stages + 1, n)
        Filled with the stage values.

    Returns
    -------
    y_new, f_new : ndarray
    """
    from scipy.integrate._ivp.rk import rk_step as scipy_rk_step
    return scipy_rk_step(fun, t, y, f, h, cls.A, cls.B, cls.C, K)


def missing_internals() -> list[str]:
    """What of scipy's internals this module relies on is absent or shaped unexpectedly.

    Returns
    -------
    list of str
        One line per problem, naming the attribute (empty when all is as assumed).
    """
    problems = []
    for cls in (RK45, RK23):
        name = f"scipy.integrate.{cls.__name__}"
        s = getattr(cls, "n_stages", None)
        if not isinstance(s, int) or s < 1:
            problems.append(f"{name}.n_stages: expected a positive int, got {s!r}")
            continue
        for attr, rows, cols in (("A", s, s), ("B", s, None), ("C", s, None),
                                 ("P", s + 1, np.inf)):
            # cols: None for a vector, else the most columns allowed
            shape = getattr(getattr(cls, attr, None), "shape", None)
            ok = shape == (rows,) if cols is None else (
                shape is not None and len(shape) == 2 and shape[0] == rows and shape[1] <= cols)
            if not ok:
                problems.append(f"{name}.{attr}: missing or of unexpected shape {shape}")
        if not callable(getattr(cls, "_step_impl", None)):
            problems.append(f"{name}._step_impl: missing")
        solver = cls(lambda t, y: -y, 0.0, np.ones(2), 1.0)
        for attr, shape in (("K", (s + 1, 2)), ("h_abs", ())):
            value = getattr(solver, attr, None)
            if value is None or np.shape(value) != shape:
                problems.append(f"{name}().{attr}: missing or of unexpected shape "
                                f"(expected {shape})")
    try:
        from scipy.integrate._ivp.rk import rk_step as _  # noqa: F401
    except ImportError:
        problems.append("scipy.integrate._ivp.rk.rk_step: missing")
    return problems
