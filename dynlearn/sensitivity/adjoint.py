"""Adjoint gradients: one backward pass, cost independent of the number of parameters.

How it works
------------
For a loss ``L = sum_j l_j(y(t_j))`` the adjoint ``lambda(t) = dL/dy(t)`` satisfies, backward
in time,

.. math:: \\dot\\lambda = -J(t, y(t))^T \\lambda, \\qquad
          \\lambda(t_j^-) = \\lambda(t_j^+) + \\partial l_j/\\partial y,

and ``dL/dtheta = int_{t_0}^{T} lambda^T (df/dtheta) dt``, ``dL/dy0 = lambda(t_0)``. The
quadrature is integrated together with ``lambda``.

Two variants are provided, chosen by ``Adjoint(kind=...)``:

``"discrete"`` (default for RK45 and RK23)
    The exact gradient of the discrete Runge-Kutta solve, through its recorded steps (see
    :mod:`dynlearn.sensitivity.discrete`). Fastest by far: typically 1.1-1.5 times one
    forward solve, with no backward ODE solve at all.

``"continuous"`` (default for DOP853, Radau, BDF and LSODA)
    Solves the adjoint equation above with the same method as the forward pass, reading
    ``y(t)`` from the stored dense forward solution, never by re-integrating the state
    backwards (that "backsolve" is unstable on dissipative and stiff problems). Stiff
    methods receive the exact adjoint Jacobian ``[[-J^T, 0], [-(df/dtheta)^T, 0]]``. Exact to
    the solver tolerance.

Checkpointing (``checkpoint_every=K``) bounds memory: the discrete variant stores only every
K-th solver state and recomputes each K-step segment during the backward sweep; the
continuous variant stores the state at checkpoint times and re-solves each segment forward
with dense output just before solving its adjoint.

When to use which
-----------------
Forward sensitivities cost about ``(1 + p)`` forward solves and give the full Jacobian of the
residuals; the adjoint costs a few forward solves whatever ``p`` is. With more than ~10
parameters (any network) use the adjoint; with a handful of physical parameters, and for
Gauss-Newton fits, use forward sensitivities.

References
----------
.. [1] Y. Cao, S. Li, L. Petzold, R. Serban, "Adjoint sensitivity analysis for
       differential-algebraic equations", SIAM J. Sci. Comput. 24 (2003).
.. [2] R. T. Q. Chen et al., "Neural ordinary differential equations", NeurIPS 2018.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sps

from dynlearn.errors import OptionError, SolveError
from dynlearn.sensitivity.base import (
    Problem,
    Sensitivity,
    check_gradient_finite,
    observation_cotangents,
)
from dynlearn.sensitivity.discrete import DISCRETE_METHODS, discrete_loss_and_grad
from dynlearn.sensitivity.scipy_rk import next_step_size
from dynlearn.solve import (
    SOLVER_CLASSES,
    STIFF_METHODS,
    SolveGuard,
    failure_point,
    integrate_field,
    split_options,
)

__all__ = ["Adjoint"]


class Adjoint(Sensitivity):
    """Adjoint gradients.

    Parameters
    ----------
    kind : {"auto", "discrete", "continuous"}
        ``"auto"``: discrete for RK45/RK23, continuous for other methods.
    checkpoint_every : int, optional
        Discrete: keep every K-th solver state. Continuous: number of observation intervals
        per checkpoint segment. ``None`` (default) stores the whole forward pass.
    backward_method : str, optional
        Method of the continuous backward solve (default: the forward method; Radau when the
        forward method is BDF).
    """

    def __init__(self, kind: str = "auto", checkpoint_every: int | None = None,
                 backward_method: str | None = None):
        if kind not in ("auto", "discrete", "continuous"):
            raise OptionError(f"Adjoint(kind={kind!r}): use 'auto', 'discrete' or 'continuous'")
        if checkpoint_every is not None and (not isinstance(checkpoint_every, (int, np.integer))
                                             or checkpoint_every < 1):
            raise OptionError("checkpoint_every must be a positive integer, "
                              f"got {checkpoint_every!r}")
        self.kind = kind
        self.checkpoint_every = checkpoint_every
        self.backward_method = backward_method

    def resolve_kind(self, method: str) -> str:
        """``"discrete"`` or ``"continuous"``: the variant used with ``method``."""
        if self.kind == "discrete" and method not in DISCRETE_METHODS:
            raise OptionError(f"Adjoint(kind='discrete') needs an explicit method with a recorded "
                              f"stage structure {sorted(DISCRETE_METHODS)}; got method={method!r}. "
                              "Use kind='continuous' (or 'auto').")
        if self.kind == "auto":
            return "discrete" if method in DISCRETE_METHODS else "continuous"
        return self.kind

    def loss_and_grad(self, prob: Problem, wrt_y0: bool = False):
        """``(value, dL/dtheta, dL/dy0 or None)`` for one experiment; SolveError rather
        than a non-finite gradient."""
        # an infinite derivative met by a zero cotangent (J^T lam at a kink) is NaN: the
        # gradient is then refused below, with no RuntimeWarning on the way
        if self.resolve_kind(prob.method) == "discrete":
            with np.errstate(all="ignore"):
                value, g, gy0 = discrete_loss_and_grad(prob, wrt_y0, self.checkpoint_every)
            check_gradient_finite(prob, "the discrete adjoint", g, gy0)
        else:
            with np.errstate(all="ignore"):
                value, g, gy0 = self._continuous(prob, wrt_y0)
            check_gradient_finite(prob, "the continuous adjoint", g, gy0)
        return value, g, gy0

    # --- continuous adjoint --------------------------------------------------------------
    def _continuous(self, prob: Problem, wrt_y0: bool):
        vf = prob.vf
        n, P = vf.n, vf.n_theta
        t_obs, t0, y0 = prob.t_obs, prob.t0, prob.y0
        if t_obs[-1] == t0:
            Y = np.tile(y0, (t_obs.size, 1))
            value, Gy, g = observation_cotangents(vf, t_obs, Y, prob.obs_loss)
            return value, g, (Gy.sum(axis=0) if wrt_y0 else None)
        # forward: states at the observation times, and checkpoints (segment start states)
        K = self.checkpoint_every
        later = np.flatnonzero(t_obs > t0)
        if K is None:
            bounds = [t0, t_obs[-1]]
        else:
            bounds = [t0] + list(t_obs[later][K - 1::K])
            if bounds[-1] != t_obs[-1]:
                bounds.append(t_obs[-1])
        jumps = vf.breakpoints(t0, t_obs[-1])
        # the state's solve as every plain solve (a large model's LSODA: banded Jacobian)
        res = integrate_field(vf, (t0, t_obs[-1]), y0, np.union1d(t_obs[later], bounds[1:]),
                              prob.method, prob.rtol, prob.atol, prob.options,
                              dense=K is None, where=prob.where)
        self._check(res, prob, "forward")
        Y = np.empty((t_obs.size, n))
        Y[t_obs <= t0] = y0
        pos = np.searchsorted(res.t, t_obs[later])
        Y[later] = res.y.T[pos]
        value, Gy, g = observation_cotangents(vf, t_obs, Y, prob.obs_loss)
        seg_states = [y0] + [res.y.T[np.searchsorted(res.t, b)] for b in bounds[1:-1]]

        # scipy's BDF fails to start the backward pass of stiff adjoints at tight absolute
        # tolerances (Robertson at atol=1e-14: Newton failures down to the float spacing);
        # Radau solves the same backward problem reliably, so it serves BDF's backward pass.
        method = self.backward_method or ("Radau" if prob.method == "BDF" else prob.method)
        bmethod = SOLVER_CLASSES[method]
        stiff = method in STIFF_METHODS
        atol = np.asarray(prob.atol, dtype=float)
        batol = np.concatenate([np.broadcast_to(atol, (n,)), np.full(P, float(atol.min()))]) \
            if atol.ndim else float(atol)
        # LSODA's Fortran core takes only a dense Jacobian (scipy raises on a sparse one)
        sparse = stiff and n + P > 60 and method != "LSODA"
        # one guard watches the whole backward pass (its budget, the deadline, NaNs)
        guard = SolveGuard(method, split_options(prob.options)[1],
                           f"{prob.where} (backward adjoint pass)", span=(t_obs[-1], t0))
        lam = np.zeros(n)
        mu = np.zeros(P)
        h_last = None
        for si in range(len(bounds) - 2, -1, -1):
            ta, tb = bounds[si], bounds[si + 1]
            if K is None:
                sol = res.sol
            else:
                r = integrate_field(vf, (ta, tb), seg_states[si], [tb], prob.method,
                                    prob.rtol, prob.atol, prob.options, dense=True,
                                    where=prob.where)
                self._check(r, prob, "forward (checkpoint segment)")
                sol = r.sol

            def rhs(t, w, sol=sol):
                J, Jt = vf.jac_and_theta_jac(t, sol(t))
                lam_ = w[:n]
                return np.concatenate([-J.T @ lam_, -Jt.T @ lam_])

            def jac(t, w, sol=sol):
                J, Jt = vf.jac_and_theta_jac(t, sol(t))
                top = np.hstack([-J.T, np.zeros((n, P))])
                bot = np.hstack([-Jt.T, np.zeros((P, P))])
                M = np.vstack([top, bot])
                return sps.csc_matrix(M) if sparse else M

            # jumps at the observations inside (ta, tb], processed from tb down to ta
            inside = np.flatnonzero((t_obs > ta) & (t_obs <= tb))
            # the backward solve also restarts at the inputs' discontinuities
            inner = np.union1d(t_obs[inside], jumps[(jumps > ta) & (jumps < tb)])
            stops = [tb] + [s for s in inner[::-1] if s < tb] + [ta]
            stops = list(dict.fromkeys(stops))
            for a, b in zip(stops[:-1], stops[1:]):
                lam = lam + Gy[(t_obs == a)].sum(axis=0)
                w0 = np.concatenate([lam, mu])
                opts = dict(rtol=prob.rtol, atol=batol)
                if stiff:
                    opts["jac"] = guard.wrap_jac(jac)
                if h_last is not None:
                    opts["first_step"] = min(h_last, a - b)
                solver = bmethod(guard.wrap_fun(rhs), a, w0, b, **opts)
                with guard.solver_failures():
                    while solver.status == "running":
                        solver.step()
                if solver.status == "failed":
                    raise SolveError(f"the backward adjoint solve ({method}) failed{prob.where} "
                                     f"at t={solver.t}", status=-1, t=float(solver.t))
                h_last = next_step_size(solver) or None
                lam, mu = solver.y[:n], solver.y[n:]
        lam = lam + Gy[t_obs <= t0].sum(axis=0)
        return value, g + mu, (lam if wrt_y0 else None)

    @staticmethod
    def _check(res, prob, what):
        if res.status != 0:
            raise SolveError(f"the {prob.method} solver failed{prob.where} in the {what} pass "
                             f"{failure_point(res, prob.t0)}: {res.message}",
                             status=res.status, solver_message=res.message)
