"""Finite-difference gradients: the reference the other methods are checked against.

Steps are taken on each coordinate's own scale. A rate constant of 1e-7 beside one of 1e3
needs steps ten orders of magnitude apart: a step in physical units (the same ``1e-3`` for
both) moves the small rate to a negative value and the difference means nothing. So:

* a coordinate that is log-transformed or bounded below by zero (and positive) is
  differenced in ``log`` of its value: the step is a relative change, it never reaches zero,
  and the chain rule brings the result back to physical units;
* any other coordinate steps by ``step * max(|x_i|, typical_i)``, where ``typical_i`` is
  its size when ``x_i`` itself is near zero (for a model's parameters the value declared in
  the model, for initial states the size the state reaches in the experiment);
* no evaluation leaves a coordinate's bounds: near a bound the stencil turns one-sided
  (offsets ``0, 1, ..., order`` away from it, the same accuracy order), and where even that
  does not fit, the step shrinks to the room there is.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

from dynlearn.core.vectorfield import VectorField
from dynlearn.errors import OptionError
from dynlearn.sensitivity.base import Problem, Sensitivity
from dynlearn.solve import solve_observed

__all__ = ["FiniteDifference", "parameter_step_scales"]

_ORDERS = (2, 4)


@cache
def _stencil(offsets: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offsets and the weights of the first and second derivative on them.

    The weights solve the Taylor (Vandermonde) conditions ``sum_j w_j o_j^k = k! [k == d]``
    for ``k < len(offsets)``; the offsets are small integers, so the system is exact enough.
    """
    o = np.asarray(offsets, dtype=float)
    V = np.vander(o, increasing=True).T           # row k: o_j^k
    e1 = np.zeros(o.size)
    e1[1] = 1.0
    e2 = np.zeros(o.size)
    e2[2] = 2.0
    w1 = np.linalg.solve(V, e1)
    w2 = np.linalg.solve(V, e2)
    # weights are rationals with small denominators: drop the solver's rounding
    w1 = np.round(w1 * 720.0) / 720.0
    w2 = np.round(w2 * 720.0) / 720.0
    return o, w1, w2


def _central(order: int) -> tuple:
    half = order // 2
    return tuple(range(-half, 0)) + (0,) + tuple(range(1, half + 1))


def _one_sided(order: int, sign: int) -> tuple:
    return tuple(sign * k for k in range(order + 1))


class FiniteDifference(Sensitivity):
    """Finite differences of the loss (2 or 4 solves per parameter), on each parameter's
    own scale.

    Parameters
    ----------
    step : float, optional
        Relative step: a log-transformed or positive, zero-bounded parameter moves by the
        factor ``exp(step)``; any other coordinate by ``step * max(|theta_i|, typical_i)``
        (see the module notes). Default: ``1e-6`` for ``order=2`` and ``1e-3`` for
        ``order=4`` (about ``eps^(1/3)`` and ``eps^(1/5)``, the steps that balance
        truncation against rounding).
    order : {2, 4}
        Accuracy order of the stencil. The 4th-order stencil tolerates larger steps, which
        keeps the solver's own tolerance-level noise (it changes its steps with theta) from
        dominating: use it, at tight solver tolerances, as the reference for other methods.

    Notes
    -----
    Slow (``order * p`` forward solves) and noisy at the level of ``solver error / h``: for
    checking, not for fitting. Near a bound the stencil is one-sided, so no parameter is
    ever evaluated outside its bounds.
    """

    def __init__(self, step: float | None = None, order: int = 2):
        if order not in _ORDERS:
            raise OptionError(f"FiniteDifference(order={order!r}): use 2 or 4")
        if step is not None and not (math.isfinite(step) and step > 0):
            raise OptionError(f"FiniteDifference(step={step!r}): use a positive number")
        self.order = order
        self.step = step if step is not None else (1e-6 if order == 2 else 1e-3)

    def loss_and_grad(self, prob: Problem, wrt_y0: bool = False):
        vf = prob.vf
        model, signal = vf.model, vf.inputs
        theta = vf.theta
        n = vf.n
        P = theta.size

        def solve(th, y0):
            v = VectorField(model, th, signal)
            Y, _ = solve_observed(v, prob.t0, prob.t_obs, y0, prob.method, prob.rtol, prob.atol,
                                  prob.options, where=prob.where)
            return v, Y

        def value(xx):
            v, Y = solve(xx[:P], xx[P:] if wrt_y0 else prob.y0)
            return float(prob.obs_loss(v.observe_batch(prob.t_obs, Y))[0])

        typical, lower, upper, log = parameter_step_scales(model, P)
        x = theta
        f0 = None
        if wrt_y0:
            x = np.concatenate([theta, prob.y0])
            # an initial state's size: the largest the state reaches at the observations
            # (a state starting at zero is still differenced on the scale it lives on)
            v, Y = solve(theta, prob.y0)
            f0 = float(prob.obs_loss(v.observe_batch(prob.t_obs, Y))[0])
            size = np.max(np.abs(np.vstack([Y, prob.y0[None, :]])), axis=0)
            typical = np.concatenate([typical, np.where(size > 0, size, 1.0)])
            lower = np.concatenate([lower, np.full(n, -np.inf)])
            upper = np.concatenate([upper, np.full(n, np.inf)])
            log = np.concatenate([log, np.zeros(n, dtype=bool)])
        f0, grad, _ = self.derivatives(value, x, typical=typical, lower=lower, upper=upper,
                                       log=log, f0=f0)
        return f0, grad[:P], (grad[P:P + n] if wrt_y0 else None)

    def derivatives(self, f, x, indices=None, curvature: bool = False, *, typical=1.0,
                    lower=None, upper=None, log=None, f0: float | None = None):
        """Finite differences of a scalar function: its gradient and, optionally, the
        diagonal of its Hessian, in some or all coordinates.

        Uses this object's stencil (``order``) and relative step: ``h_i = step *
        max(|x_i|, typical_i)``, or a step of ``step`` in ``log x_i`` where ``log`` says so
        (returned derivatives are with respect to ``x`` all the same). The curvature comes
        from the same evaluations plus ``f(x)``. No evaluation leaves ``[lower, upper]``:
        near a bound the stencil is one-sided.

        Parameters
        ----------
        f : callable
            ``f(x) -> float``.
        x : array_like, shape (n,)
            The point (within its bounds).
        indices : array_like of int, optional
            The coordinates to differentiate in (default: all).
        curvature : bool
            Also return ``d2f/dx_i^2`` for those coordinates.
        typical : float or array_like, shape (n,)
            The coordinates' typical sizes, used where ``|x_i|`` is smaller (default 1).
        lower, upper : array_like, shape (n,), optional
            Bounds no evaluation may cross (default: none).
        log : array_like of bool, shape (n,), optional
            Coordinates to difference in ``log x_i`` (they must be positive).
        f0 : float, optional
            ``f(x)`` when already known (saves one evaluation).

        Returns
        -------
        f0 : float
            ``f(x)``.
        grad : ndarray, shape (len(indices),)
        curv : ndarray, shape (len(indices),) or None
            ``None`` unless ``curvature``.

        Examples
        --------
        >>> fd = FiniteDifference(step=1e-4, order=4)
        >>> f0, g, c = fd.derivatives(lambda v: v[0] ** 3 + v[1] ** 2, [2.0, 5.0],
        ...                           curvature=True)
        >>> [round(float(v), 6) for v in (*g, *c)]
        [12.0, 10.0, 12.0, 2.0]
        """
        x = np.asarray(x, dtype=float)
        m = x.size
        idx = np.arange(m) if indices is None else np.asarray(indices, dtype=int)
        typ = np.broadcast_to(np.abs(np.asarray(typical, dtype=float)), (m,))
        lo = np.full(m, -np.inf) if lower is None else np.asarray(lower, dtype=float)
        hi = np.full(m, np.inf) if upper is None else np.asarray(upper, dtype=float)
        is_log = np.zeros(m, dtype=bool) if log is None else np.asarray(log, dtype=bool)
        f0 = float(f(x)) if f0 is None else float(f0)
        grad = np.zeros(idx.size)
        curv = np.zeros(idx.size) if curvature else None
        for k, i in enumerate(idx):
            in_log = bool(is_log[i]) and x[i] > 0
            if in_log:
                # the coordinate u = log x: a step h is a relative change exp(h)
                u = math.log(x[i])
                u_lo = math.log(lo[i]) if lo[i] > 0 else -math.inf
                u_hi = math.log(hi[i]) if hi[i] > 0 else -math.inf
                h = self.step
            else:
                u, u_lo, u_hi = float(x[i]), float(lo[i]), float(hi[i])
                h = self.step * max(abs(x[i]), typ[i])
            offsets, h = self._offsets(u, u_lo, u_hi, h)
            if h == 0.0:
                # no room at all between the bounds: no direction to differentiate in
                continue
            o, w1, w2 = _stencil(offsets)
            vals = np.empty(o.size)
            for j, oj in enumerate(o):
                if oj == 0:
                    vals[j] = f0
                    continue
                xx = x.copy()
                z = u + oj * h
                if in_log:
                    # exp(log(b)) can land an ulp beyond the bound b: stay on it
                    xx[i] = min(max(math.exp(z), lo[i]), hi[i])
                else:
                    xx[i] = z
                vals[j] = f(xx)
            d1 = float(w1 @ vals) / h
            if in_log:
                grad[k] = d1 / x[i]
            else:
                grad[k] = d1
            if curvature:
                d2 = float(w2 @ vals) / (h * h)
                # d2f/du2 = x^2 f'' + x f'
                curv[k] = (d2 - d1) / x[i] ** 2 if in_log else d2
        return f0, grad, curv

    def _offsets(self, u: float, u_lo: float, u_hi: float, h: float) -> tuple[tuple, float]:
        """The stencil's offsets and the step that keep ``u + o h`` within the bounds."""
        reach = self.order // 2
        if u - reach * h >= u_lo and u + reach * h <= u_hi:
            return _central(self.order), h
        room_up, room_down = u_hi - u, u - u_lo
        sign = 1 if room_up >= room_down else -1
        room = max(room_up, room_down)
        if room >= self.order * h:
            return _one_sided(self.order, sign), h
        # narrower than the one-sided stencil: central if the interval allows it, else
        # one-sided with the step shrunk to fit
        if min(room_up, room_down) >= reach * (room / self.order):
            return _central(self.order), min(room_up, room_down) / reach
        return _one_sided(self.order, sign), room / self.order


def parameter_step_scales(model, n_theta: int):
    """The scales and bounds of a model's theta for :meth:`FiniteDifference.derivatives`.

    Parameters
    ----------
    model : HybridModel
    n_theta : int
        Length of theta (free physical parameters first, then network weights).

    Returns
    -------
    typical, lower, upper : ndarray, shape (n_theta,)
        A free parameter's typical size is the value declared in the model (1 where that is
        zero); a network weight's is 1. Bounds are the parameters' own (none for weights).
    log : ndarray of bool, shape (n_theta,)
        Log-transformed parameters, and parameters bounded below by zero (differenced in
        log while positive).
    """
    typical = np.ones(n_theta)
    lower = np.full(n_theta, -np.inf)
    upper = np.full(n_theta, np.inf)
    log = np.zeros(n_theta, dtype=bool)
    for k, s in enumerate(model.free_params[:n_theta]):
        p = model.params[s]
        typical[k] = abs(p.value) if p.value != 0 else 1.0
        lower[k], upper[k] = p.min, p.max
        log[k] = p.transform == "log" or p.min >= 0
    return typical, lower, upper, log
