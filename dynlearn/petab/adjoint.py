"""The adjoint gradient of a PEtab likelihood: one backward solve per simulation, whatever
the number of estimated parameters.

How it works
------------
PEtab's objective is a scalar, ``L = sum_j l_j(y(t_j), P)``. Forward sensitivities carry
``dy/dP`` along every estimated parameter that moves the simulation (``n (1 + k)``
components for ``k`` directions). The adjoint carries ``lambda(t) = dL/dy(t)`` backward
instead, from the state's dense forward solution:

.. math:: \\dot\\lambda = -J(t, y(t))^T \\lambda, \\qquad
          \\lambda(t_j^-) = \\lambda(t_j^+) + \\partial l_j / \\partial y, \\qquad
          \\dot\\mu = -(\\partial f/\\partial\\theta)^T \\lambda, \\; \\mu(T) = 0,

and ``dL/dP = lambda(t0)^T dy0/dP + mu(t0)^T dtheta/dP`` (plus the observables' and noise
formulas' own derivatives, which :class:`~dynlearn.petab.problem.PetabProblem` adds). The
backward system has ``n + n_theta`` components (``n_theta``: the model's parameters that
``P`` moves), solved by the same method and tolerances as the forward pass (LSODA by
default), with every component in the error control. Its accuracy follows the state's
tolerance: forward sensitivities in the error control take extra steps for their own
accuracy, the adjoint does not (on an oscillator, Borghans_BiophysChem1997, at rtol 1e-9:
1.7e-4 against AMICI's gradient where forward sensitivities give 1e-6; at 1e-12 1.1e-6).
The solve restarts at every measurement time (the jump in ``lambda``), as CVODES's adjoint
does.

At a time where the right-hand side switches or SBML events fire, the forward pass maps the
derivative ``D = dy/dP`` affinely, ``D+ = A D- + C``; the backward pass applies the
transpose, ``lambda- = A^T lambda+``, and adds ``lambda+^T C`` to the gradient.

Preequilibration and steady-state measurements (``time = inf``) keep their own derivatives
(:mod:`dynlearn.petab.steady`): the adjoint sees them as the
initial derivative ``dy0/dP`` and as one more term ``G_inf^T dy_ss/dP``.

When it pays (measured, ``docs/solvers.md``, "PEtab gradients"): the forward sensitivities'
cost grows with ``n k``, the adjoint's with ``n`` plus a restart per measurement time; the
rule is :func:`prefer_adjoint`.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp

from dynlearn.errors import SolveError
from dynlearn.solve import STIFF_METHODS, solve_observed

__all__ = ["ADJOINT_COMPONENTS_PER_RESTART", "AdjointTape", "prefer_adjoint"]

#: the adjoint is chosen when forward sensitivities would carry at least this many
#: sensitivity components (states x directions) per restart of the adjoint (measurement
#: time); see :func:`prefer_adjoint`
ADJOINT_COMPONENTS_PER_RESTART = 7.0


def prefer_adjoint(n_states: int, n_directions: int, n_times: int) -> bool:
    """Whether the adjoint gradient is expected to beat forward sensitivities for a model of
    ``n_states`` states whose simulations move along ``n_directions`` directions
    (estimated parameters that change a rate or an initial value), measured at ``n_times``
    distinct times summed over the simulations.

    Forward sensitivities carry ``n k`` components with the state, every one in the error
    control: their cost per step (the ``J S`` product, LSODA's banded LU of ``n (1 + k)``
    components) and their number of steps grow with ``n k``. The adjoint carries ``n +
    n_theta`` components backward after a forward solve of the state alone, but restarts at
    every measurement time, where the jump in ``lambda`` excites its fast modes and LSODA
    starts again at order 1: at tight tolerances a restart costs hundreds of steps (Raia:
    27,198 backward steps for 69 measurement times against 3,683 forward). So the measure
    is sensitivity components per restart, ``n k / n_times``. Measured side by side
    (``benchmarks/petab_adjoint.py``, rtol = atol = 1e-12; docs/solvers.md, "PEtab
    gradients"): forward sensitivities were 2.4-3.8 times faster at 0.5-4.5 (Borghans,
    Raia, Brannmark), level at 5.3 (Bachmann: 1.02 and 1.3 times in two runs), the adjoint
    6 times faster at 9.3 (Laske) and 1.8 times at 38 (Lucarelli): the adjoint is taken
    from :data:`ADJOINT_COMPONENTS_PER_RESTART` on.
    """
    return n_states * n_directions >= ADJOINT_COMPONENTS_PER_RESTART * max(n_times, 1)


class AdjointTape:
    """The forward pass of one simulation (states with dense output, in segments between
    the times where the derivative jumps) and what its backward pass needs.

    Parameters
    ----------
    vf : VectorField
        The simulation's vector field.
    t0 : float
        Start time.
    times : ndarray
        Increasing output times (``>= t0``).
    y0 : ndarray, shape (n,)
    D0 : ndarray, shape (n, nP), or None
        ``dy0/dP`` (``None``: zero).
    Dtheta : ndarray, shape (n_theta, nP)
        ``dtheta/dP``.
    method, rtol, atol : solver settings
    where : str
        For messages.
    jumps : sequence of (float, callable, bool), optional
        Times in ``(t0, times[-1]]`` where the state and its derivative jump, each with a
        function ``(y-) -> (y+, A, C)``: the new state and the affine map ``D+ = A D- + C``
        of the derivative ``dy/dP`` (``A`` shape (n, n), ``C`` shape (n, nP)); and whether
        a measurement at that time sees the state after the jump (an event) or before it
        (a switch of the right-hand side, where the state is continuous).
    start_jump : callable, optional
        A jump at ``t0`` itself (events firing at the start), same signature.

    Attributes
    ----------
    Y : ndarray, shape (m, n)
        The states at ``times`` (after any jump at that time).
    """

    def __init__(self, vf, t0: float, times, y0, D0, Dtheta, method: str, rtol: float,
                 atol: float, where: str = "", jumps=(), start_jump=None):
        self.vf, self.method, self.rtol, self.atol, self.where = vf, method, rtol, atol, where
        self.times = np.asarray(times, dtype=float)
        self.t0 = float(t0)
        n = vf.n
        self.Dtheta = np.asarray(Dtheta, dtype=float)
        nP = self.Dtheta.shape[1]
        self.D0 = np.zeros((n, nP)) if D0 is None else np.asarray(D0, dtype=float)
        # the model parameters P moves at all: only their quadratures are integrated
        self.moving = np.flatnonzero(np.any(self.Dtheta != 0, axis=1))
        self.Gy = np.zeros((self.times.size, n))
        self.steady = None          # (dy_ss/dP, cotangent) of a steady-state measurement
        y = np.asarray(y0, dtype=float)
        self.start_map = None
        if start_jump is not None:
            y, A, C = start_jump(y)
            self.start_map = (A, C)
        # segments between jumps: (a, b, dense solution or None, jump map at b or None)
        self.segments = []
        Y = np.empty((self.times.size, n))
        Y[self.times <= self.t0] = y
        if self.times.size == 0 or self.times[-1] <= self.t0:
            self.Y = Y
            return
        t_end = float(self.times[-1])
        bounds = [(float(tj), fn, after) for tj, fn, after in jumps if self.t0 < tj <= t_end]
        bounds.sort(key=lambda b: b[0])
        if not bounds or bounds[-1][0] < t_end:
            bounds.append((t_end, None, False))
        a = self.t0
        for b, fn, after in bounds:
            sel = (self.times > a) & (self.times <= b)
            seg = np.unique(np.concatenate([self.times[sel], [b]]))
            Ys, res = solve_observed(vf, a, seg, y, method, rtol, atol, {}, dense=True,
                                     where=where)
            Y[sel] = Ys[np.searchsorted(seg, self.times[sel])]
            y = Ys[-1]
            jmap = None
            if fn is not None:
                y, A, C = fn(y)
                jmap = (A, C, after)
                if after:       # a measurement at an event sees the state after it
                    Y[self.times == b] = y
            self.segments.append((a, b, res.sol, jmap))
            a = b
        self.Y = Y

    def add_cotangent(self, rows, G) -> None:
        """Add ``dL/dy`` (shape (len(rows), n)) at the output rows ``rows`` (indices into
        ``times``; the index ``len(times)`` is the steady-state measurement, see
        :meth:`set_steady`)."""
        rows = np.asarray(rows)
        G = np.asarray(G, dtype=float)
        fin = rows < self.times.size
        np.add.at(self.Gy, rows[fin], G[fin])
        if np.any(~fin):
            if self.steady is None:
                raise ValueError("a steady-state cotangent without a steady state")
            self.steady[1] += G[~fin].sum(axis=0)

    def set_steady(self, S_ss) -> None:
        """The derivative ``dy_ss/dP`` of the steady-state measurement row (shape (n, nP))."""
        self.steady = [np.asarray(S_ss, dtype=float), np.zeros(self.vf.n)]

    def gradient(self) -> np.ndarray:
        """``dL/dP`` through the simulation (shape (nP,)): one backward solve per interval
        between measurement times and jumps."""
        vf = self.vf
        n = vf.n
        mov = self.moving
        lam = np.zeros(n)
        g = np.zeros(self.Dtheta.shape[1])
        mu = np.zeros(mov.size)
        if self.steady is not None:
            g += self.steady[1] @ self.steady[0]
        rhs, jac = self._backward_functions(mov)
        for a, b, sol, jmap in reversed(self.segments):
            seen = False        # the cotangent at b is already in lam
            if jmap is not None:
                A, C, after = jmap
                if after:
                    lam = lam + self.Gy[self.times == b].sum(axis=0)
                    seen = True
                g += lam @ C
                lam = lam @ A
            # backward from b to a, restarting at every output time inside
            inside = self.times[(self.times > a) & (self.times <= b)]
            stops = np.unique(np.concatenate([inside, [b]]))[::-1]
            stops = np.append(stops, a)
            for hi, lo in zip(stops[:-1], stops[1:]):
                if not (seen and hi == b):
                    lam = lam + self.Gy[self.times == hi].sum(axis=0)
                lam, mu = self._solve_back(rhs, jac, sol, hi, lo, lam, mu)
        lam = lam + self.Gy[self.times <= self.t0].sum(axis=0)
        if self.start_map is not None:
            A, C = self.start_map
            g += lam @ C
            lam = lam @ A
        return g + lam @ self.D0 + mu @ self.Dtheta[mov]

    def _backward_functions(self, mov):
        vf = self.vf
        n = vf.n
        c = vf.c
        if not c.nets:
            fjp, split = c.rhs_and_jacobians(), c.split_rhs_and_jacobians
            pl, inputs = vf.pl, vf.inputs

            def parts(t, y):
                _, J, Jt = split(fjp([t], y.tolist(), pl, [],
                                     inputs(t).tolist() if inputs else []))
                return J, Jt
        else:
            parts = vf.jac_and_theta_jac
        cache = {}

        def rhs(t, w, sol):
            J, Jt = parts(t, sol(t))
            cache.clear()
            cache[t] = J, Jt
            lam = w[:n]
            return np.concatenate([-(lam @ J), -(lam @ Jt[:, mov])])

        def jac(t, w, sol):
            J, Jt = cache[t] if t in cache else parts(t, sol(t))
            M = np.zeros((n + mov.size, n + mov.size))
            M[:n, :n] = -J.T
            M[n:, :n] = -Jt[:, mov].T
            return M
        return rhs, jac

    def _solve_back(self, rhs, jac, sol, hi, lo, lam, mu):
        w0 = np.concatenate([lam, mu])
        if hi == lo:
            return lam, mu
        kw = dict(method=self.method, rtol=self.rtol, atol=self.atol)
        if self.method in STIFF_METHODS:
            kw["jac"] = lambda t, w: jac(t, w, sol)
        with np.errstate(all="ignore"):
            res = solve_ivp(lambda t, w: rhs(t, w, sol), (hi, lo), w0, t_eval=[lo], **kw)
        if res.status != 0 or not np.all(np.isfinite(res.y)):
            raise SolveError(f"the backward adjoint solve ({self.method}) failed{self.where} "
                             f"between t={lo} and t={hi}: {res.message}", status=res.status)
        w = res.y[:, -1]
        n = self.vf.n
        return w[:n], w[n:]
