"""Finite-difference gradients: the reference the other methods are checked against."""

from __future__ import annotations

import numpy as np

from dynlearn.core.vectorfield import VectorField
from dynlearn.errors import OptionError
from dynlearn.sensitivity.base import Problem, Sensitivity
from dynlearn.solve import solve_observed

__all__ = ["FiniteDifference"]

# central stencils: offsets and weights of the first derivative
_STENCILS = {
    2: (np.array([-1.0, 1.0]), np.array([-0.5, 0.5])),
    4: (np.array([-2.0, -1.0, 1.0, 2.0]), np.array([1.0, -8.0, 8.0, -1.0]) / 12.0),
}
# second derivative on the same offsets: their weights, and the weight of the centre
_CURVATURE = {
    2: (np.array([1.0, 1.0]), -2.0),
    4: (np.array([-1.0, 16.0, 16.0, -1.0]) / 12.0, -30.0 / 12.0),
}


class FiniteDifference(Sensitivity):
    """Central finite differences of the loss (2 or 4 solves per parameter).

    Parameters
    ----------
    step : float, optional
        Relative step ``h_i = step * max(1, |theta_i|)``. Default: ``1e-6`` for ``order=2``,
        ``1e-3`` for ``order=4``.
    order : {2, 4}
        Accuracy order of the stencil. The 4th-order stencil tolerates larger steps, which
        keeps the solver's own tolerance-level noise (it changes its steps with theta) from
        dominating: use it, at tight solver tolerances, as the reference for other methods.

    Notes
    -----
    Slow (``order * p`` forward solves) and noisy at the level of ``solver error / h``: for
    checking, not for fitting.
    """

    def __init__(self, step: float | None = None, order: int = 2):
        if order not in _STENCILS:
            raise OptionError(f"FiniteDifference(order={order!r}): use 2 or 4")
        self.order = order
        self.step = step if step is not None else (1e-6 if order == 2 else 1e-3)

    def loss_and_grad(self, prob: Problem, wrt_y0: bool = False):
        vf = prob.vf
        model, signal = vf.model, vf.inputs
        theta = vf.theta
        n = vf.n

        def value(th, y0):
            v = VectorField(model, th, signal)
            Y, _ = solve_observed(v, prob.t0, prob.t_obs, y0, prob.method, prob.rtol, prob.atol,
                                  prob.options, where=prob.where)
            H = v.observe_batch(prob.t_obs, Y)
            return float(prob.obs_loss(H)[0])

        x = np.concatenate([theta, prob.y0]) if wrt_y0 else theta
        P = theta.size
        f0, grad, _ = self.derivatives(lambda xx: value(xx[:P], xx[P:] if wrt_y0 else prob.y0),
                                       x)
        return f0, grad[:P], (grad[P:P + n] if wrt_y0 else None)

    def derivatives(self, f, x, indices=None, curvature: bool = False):
        """Central differences of a scalar function: its gradient and, optionally, the
        diagonal of its Hessian, in some or all coordinates.

        Uses this object's stencil (``order``) and relative step
        (``h_i = step * max(1, |x_i|)``); the curvature comes from the same evaluations
        plus ``f(x)``.

        Parameters
        ----------
        f : callable
            ``f(x) -> float``.
        x : array_like, shape (n,)
            The point.
        indices : array_like of int, optional
            The coordinates to differentiate in (default: all).
        curvature : bool
            Also return ``d2f/dx_i^2`` for those coordinates.

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
        >>> f0, g, c = fd.derivatives(lambda v: v[0] ** 3 + v[1], [2.0, 5.0], curvature=True)
        >>> [round(float(v), 6) for v in (*g, *c)]
        [12.0, 1.0, 12.0, 0.0]
        """
        x = np.asarray(x, dtype=float)
        idx = np.arange(x.size) if indices is None else np.asarray(indices, dtype=int)
        offsets, weights = _STENCILS[self.order]
        c_weights, c_centre = _CURVATURE[self.order]
        f0 = float(f(x))
        grad = np.zeros(idx.size)
        curv = np.zeros(idx.size) if curvature else None
        for k, i in enumerate(idx):
            h = self.step * max(1.0, abs(x[i]))
            acc = 0.0
            vals = []
            for o, w in zip(offsets, weights):
                xx = x.copy()
                xx[i] += o * h
                v = f(xx)
                acc += w * v
                vals.append(v)
            grad[k] = acc / h
            if curvature:
                curv[k] = (float(np.dot(c_weights, vals)) + c_centre * f0) / (h * h)
        return f0, grad, curv
