"""The one place that chooses how the Jacobian of a solve is computed.

Gauss-Newton-type fits, confidence bands and multiple shooting need the derivatives of the
states (or observables) at the observation times with respect to ``theta`` and ``y0``:

* ``RK45``/``RK23``: the discrete tangent-linear of the recorded steps
  (:func:`~dynlearn.sensitivity.discrete.discrete_state_jacobian`): exact for the computed
  solution, and 1.1-2 forward solves in cost;
* any other method: forward sensitivities, with the user's
  :class:`~dynlearn.ForwardSensitivity` (and its options) when that is the sensitivity
  given, else ``ForwardSensitivity()``.

An adjoint or finite-difference ``sensitivity`` is a gradient method: it does not give a
Jacobian, so it does not change the choice.

The default gradient method (:func:`default_sensitivity`, when none is given) is the
adjoint, except with a stiff method (BDF, Radau, LSODA) and at most
:data:`STIFF_FORWARD_LIMIT` parameters: forward sensitivities there. Measured by
``benchmarks/bench_stiff.py`` (see ``docs/solvers.md``): with a stiff method the continuous
adjoint costs 12-44 forward solves (its backward solve restarts at every observation and
takes several times the forward steps), forward sensitivities 1.4-16 up to the 100
parameters measured, and with LSODA they were the fastest gradient on every problem.

``method="auto"`` (:func:`choose_method_for`) picks the solver from a cheap stiffness probe
of the solves themselves (:func:`dynlearn.solve.choose_method`): RK45 with the discrete
adjoint and tangent for a non-stiff problem, LSODA with the gradient method above for a
stiff or borderline one. The sensitivity then follows the chosen method as for a method the
user names, and a sensitivity the user gives is kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain

from dynlearn.core.vectorfield import VectorField
from dynlearn.sensitivity.adjoint import Adjoint
from dynlearn.sensitivity.base import Problem, Sensitivity
from dynlearn.sensitivity.discrete import DISCRETE_METHODS, discrete_state_jacobian
from dynlearn.sensitivity.forward import ForwardSensitivity
from dynlearn.solve import STIFF_METHODS, MethodChoice, choose_method

__all__ = ["STIFF_FORWARD_LIMIT", "cheap_jacobian", "choose_method_for", "default_sensitivity",
           "observable_jacobian", "observe_with_jacobian", "state_jacobian"]

#: most parameters for which a stiff method's default gradient is forward sensitivities
STIFF_FORWARD_LIMIT = 100


def default_sensitivity(method: str, n_params: int) -> Sensitivity:
    """The gradient method used when none is given (see the module notes).

    Parameters
    ----------
    method : str
        The solver method.
    n_params : int
        Number of model parameters ``theta`` (free physical parameters and network
        weights).

    Returns
    -------
    Sensitivity
        :class:`~dynlearn.ForwardSensitivity` for a stiff method with at most
        :data:`STIFF_FORWARD_LIMIT` parameters, else :class:`~dynlearn.Adjoint`.
    """
    if method in STIFF_METHODS and n_params <= STIFF_FORWARD_LIMIT:
        return ForwardSensitivity()
    return Adjoint()


def choose_method_for(problems: Iterable[Problem]) -> MethodChoice:
    """The solver for ``method="auto"`` from the solves of ``problems`` (an experiment each,
    at the point where the fit or evaluation starts; their own tolerances and options): see
    :func:`dynlearn.solve.choose_method`. ``problems`` may be a generator: probing stops at
    the first stiff experiment."""
    rest = iter(problems)
    first = next(rest, None)
    if first is None:
        return MethodChoice("RK45", False, float("nan"), "nothing to integrate")

    def solves():
        for p in chain([first], rest):
            yield p.vf, p.t0, float(p.t_obs[-1]), p.y0, p.where
    return choose_method(solves(), first.rtol, first.atol, first.options)


def cheap_jacobian(method: str) -> bool:
    """Whether a Jacobian costs about a forward solve with ``method`` (the discrete tangent
    of RK45/RK23: 1.1-2 solves; forward sensitivities cost far more)."""
    return method in DISCRETE_METHODS


def state_jacobian(prob: Problem, sensitivity: Sensitivity | None = None,
                   wrt_y0: bool = False):
    """States at ``prob.t_obs`` and their derivatives, by the method chosen as the module
    notes say.

    Parameters
    ----------
    prob : Problem
    sensitivity : Sensitivity, optional
        The user's sensitivity; a :class:`~dynlearn.ForwardSensitivity` is used as given for
        methods without a discrete tangent.
    wrt_y0 : bool
        Also differentiate with respect to the initial state.

    Returns
    -------
    Y : ndarray, shape (m, n)
    S : ndarray, shape (m, n, q)
        ``dy/d[theta, y0]`` with ``q = n_theta (+ n when wrt_y0)``.
    """
    if cheap_jacobian(prob.method):
        return discrete_state_jacobian(prob, wrt_y0)
    fs = sensitivity if isinstance(sensitivity, ForwardSensitivity) else ForwardSensitivity()
    return fs.trajectories(prob, wrt_y0)


def observable_jacobian(prob: Problem, sensitivity: Sensitivity | None = None,
                        wrt_y0: bool = False):
    """Observables at ``prob.t_obs`` and their derivatives (see :func:`state_jacobian`).

    Returns
    -------
    H : ndarray, shape (m, n_obs)
    dH : ndarray, shape (m, n_obs, q)
        ``d observables / d[theta, y0]``.
    """
    Y, S = state_jacobian(prob, sensitivity, wrt_y0)
    return observe_with_jacobian(prob.vf, prob.t_obs, Y, S)


def observe_with_jacobian(vf: VectorField, t, Y, S):
    """Observables and ``d observables / d[theta, y0]`` from states ``Y`` at times ``t`` and
    their sensitivities ``S`` (shape ``(m, n, q)``)."""
    H, Hy, Hp = vf.observe_batch(t, Y, derivatives=True)
    dH = Hy @ S
    if vf.n_free:
        dH[:, :, :vf.n_free] += Hp
    return H, dH
