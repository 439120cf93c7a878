"""Forward (variational) sensitivities.

How it works
------------
Alongside the state, integrate its derivatives with respect to the parameters,
``S = dy/dtheta`` (and, on request, ``dy/dy0``):

.. math:: \\dot S = J(t, y)\\, S + \\partial f/\\partial\\theta, \\qquad S(t_0) = 0
          \\;(\\text{or } I \\text{ for } y_0).

The augmented system has ``n (1 + p)`` components and is solved by the same ``solve_ivp``
method as the state, every component inside the error control, so sensitivities are exact
to the solver's tolerance. Stiff methods receive the block-diagonal Jacobian
``I (x) J`` of the augmented system (the coupling block is omitted: it only affects Newton
convergence, not the solution).

Use it when parameters are few (cost grows with ``p``) or when the full Jacobian of the
residuals is wanted (Gauss-Newton / Levenberg-Marquardt fits, Fisher information). For
many parameters (networks) prefer :class:`~dynlearn.Adjoint`.

References
----------
.. [1] E. Hairer, S. P. Norsett, G. Wanner, "Solving Ordinary Differential Equations I",
       Sec. I.14 (the variational equation).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sps

from dynlearn.errors import SolveError
from dynlearn.sensitivity.base import (
    Problem,
    Sensitivity,
    check_gradient_finite,
    observation_cotangents,
)
from dynlearn.solve import STIFF_METHODS, failure_point, integrate

__all__ = ["ForwardSensitivity"]


class ForwardSensitivity(Sensitivity):
    """Gradients from forward sensitivity equations (exact to solver tolerance).

    Parameters
    ----------
    sparse_jacobian : bool or None
        For stiff methods, give the augmented Jacobian as a sparse matrix (default: when the
        augmented system has more than 60 components).
    """

    def __init__(self, sparse_jacobian: bool | None = None):
        self.sparse_jacobian = sparse_jacobian

    def trajectories(self, prob: Problem, wrt_y0: bool = False):
        """States and sensitivities at the observation times.

        Returns
        -------
        Y : ndarray, shape (m, n)
        S : ndarray, shape (m, n, q)
            dy/d[theta, y0] with ``q = n_theta (+ n when wrt_y0)``.
        """
        vf = prob.vf
        n, P = vf.n, vf.n_theta
        q = P + (n if wrt_y0 else 0)
        t_obs, t0 = prob.t_obs, prob.t0
        m = t_obs.size
        S0 = np.zeros((q, n))
        if wrt_y0:
            S0[P:] = np.eye(n)
        z0 = np.concatenate([prob.y0, S0.ravel()])
        if t_obs[-1] == t0:
            return np.tile(prob.y0, (m, 1)), np.broadcast_to(S0.T, (m, n, q)).copy()

        symbolic = not vf.c.nets and n * (q + 1) <= 400
        if symbolic:
            fsym, jsym, _ = vf.c.sensitivity_system(wrt_y0)
            pl, inputs = vf.pl, vf.inputs

            def fun(t, z):
                return fsym([t], z.tolist(), pl, [], inputs(t).tolist() if inputs else [])
        else:
            def fun(t, z):
                y = z[:n]
                ST = z[n:].reshape(q, n)
                J, Jt = vf.jac_and_theta_jac(t, y)
                dST = ST @ J.T
                dST[:P] += Jt.T
                return np.concatenate([vf.fun(t, y), dST.ravel()])

        kw = dict(method=prob.method, rtol=prob.rtol, **prob.options)
        atol = np.asarray(prob.atol, dtype=float)
        # dy_i/dtheta_k shares the absolute tolerance of y_i
        kw["atol"] = np.tile(atol, q + 1) if atol.ndim else float(atol)
        if prob.method in STIFF_METHODS and symbolic and jsym is not None:
            def jac(t, z):
                return jsym([t], z.tolist(), pl, [], inputs(t).tolist() if inputs else [])
            kw["jac"] = jac
        elif prob.method in STIFF_METHODS:
            sparse = self.sparse_jacobian if self.sparse_jacobian is not None else n * (q + 1) > 60
            eye = sps.identity(q + 1, format="csc") if sparse else np.eye(q + 1)

            def jac(t, z):
                J = vf.jac(t, z[:n])
                return sps.kron(eye, J, format="csc") if sparse else np.kron(eye, J)
            kw["jac"] = jac
        names = [s.name for s in vf.model.states]
        res = integrate(fun, (t0, t_obs[-1]), z0, t_obs, vf.breakpoints(t0, t_obs[-1]),
                        where=prob.where, names=names, **kw)
        if res.status != 0:
            raise SolveError(f"the {prob.method} solver failed{prob.where} while integrating "
                             f"sensitivities {failure_point(res, t0)}: {res.message}",
                             status=res.status, solver_message=res.message)
        Z = res.y.T
        return Z[:, :n], np.swapaxes(Z[:, n:].reshape(m, q, n), 1, 2)

    def observable_jacobian(self, prob: Problem, wrt_y0: bool = False):
        """Observables at ``t_obs`` and their derivatives.

        Returns
        -------
        H : ndarray, shape (m, n_obs)
        dH : ndarray, shape (m, n_obs, q)
            d observables / d[theta, y0].
        """
        vf = prob.vf
        Y, S = self.trajectories(prob, wrt_y0)
        H, Hy, Hp = vf.observe_batch(prob.t_obs, Y, derivatives=True)
        dH = Hy @ S
        if vf.n_free:
            dH[:, :, :vf.n_free] += Hp
        return H, dH

    def loss_and_grad(self, prob: Problem, wrt_y0: bool = False):
        """``(value, dL/dtheta, dL/dy0 or None)`` for one experiment."""
        vf = prob.vf
        Y, S = self.trajectories(prob, wrt_y0)
        value, Gy, g = observation_cotangents(vf, prob.t_obs, Y, prob.obs_loss)
        full = np.einsum("mn,mnq->q", Gy, S)
        g = g + full[:vf.n_theta]
        gy0 = full[vf.n_theta:] if wrt_y0 else None
        check_gradient_finite(prob, "forward sensitivity", g, gy0)
        return value, g, gy0
