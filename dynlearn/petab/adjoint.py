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
formulas' own derivatives, which :class:`~dynlearn.petab.problem.PetabProblem` adds).

The quadratures ``mu`` (``n_theta`` of them: the model's parameters that ``P`` moves) are
integrals of known functions once ``lambda`` is known. Two ways to integrate them
(:data:`QUADRATURES`):

* ``"state"``: carried in the solver's state beside ``lambda``, ``n + n_theta`` components
  backward with the exact Jacobian, all in the error control;
* ``"gauss"``: not part of the implicit system (as CVODES keeps quadratures out of its
  Newton iterations): the backward solve is ``lambda`` alone (``n`` components, Jacobian
  ``-J^T``), and on every piece of its dense output and of the forward pass's (both
  interpolants are polynomials there) ``lambda^T df/dtheta`` is summed by Gauss-Legendre
  quadrature (:data:`QUADRATURE_NODES` nodes, exact for polynomials of degree ``2 q - 1``),
  all nodes of an interval evaluated in one batched call
  (:meth:`~dynlearn.core.vectorfield.VectorField.theta_vjp_points`). Where the backward
  solve takes many steps inside one forward step (the transient after each restart),
  ``df/dtheta``, a function of ``y`` alone, is evaluated at :data:`FORWARD_NODES` nodes of
  the forward step and interpolated, not at every backward step's nodes.

In the state, LSODA factors dense Newton matrices of ``n + n_theta`` rows (288 for
Lang_PLOSComputBiol2024's 124 states), and that LU is most of the time for large systems;
for small ones the Gauss nodes and the dense output cost more. ``"auto"`` (the default)
decides by size (:data:`QUADRATURE_STATE_LIMIT`). Gauss's gradient can be less accurate
where the state's error control, which also watches ``mu``, took smaller steps (Laske at
rtol 1e-12: 1.1e-7 against AMICI, 6.8e-11 in the state; equal elsewhere measured).
The accuracy follows
the state's tolerance: forward sensitivities in the error control take extra steps for their own
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

__all__ = ["ADJOINT_COMPONENTS_PER_RESTART", "DEFAULT_QUADRATURE", "FORWARD_NODES",
           "QUADRATURES", "QUADRATURE_NODES", "QUADRATURE_STATE_LIMIT", "AdjointTape",
           "prefer_adjoint"]

#: Gauss-Legendre nodes per backward step for the quadratures ``mu``: the solver's
#: interpolant of ``lambda`` is a polynomial of its order (at most 5 for LSODA's BDF), so
#: ``q`` nodes, exact to degree ``2 q - 1``, keep the quadrature's error below the step's own
QUADRATURE_NODES = 3
#: Gauss-Legendre nodes per forward step at which ``df/dtheta`` is evaluated where the
#: backward solve takes many short steps inside one forward step (after each restart,
#: through the fast transient of the jump in ``lambda``): interpolated from them, a
#: polynomial of degree ``2 QUADRATURE_NODES - 1``, the degree the nodes on the pieces
#: integrate exactly, so the interpolation adds an error of the rule's own order
#: (``AdjointTape._quadrature``; measured by ``benchmarks/adjoint_backward.py``)
FORWARD_NODES = 2 * QUADRATURE_NODES
#: how the quadratures are integrated: ``"gauss"`` on the backward steps, ``"state"`` as
#: part of the solver's state (the former way), ``"auto"`` by the backward system's size
#: (:data:`QUADRATURE_STATE_LIMIT`)
QUADRATURES = ("auto", "gauss", "state")
#: the quadrature an :class:`AdjointTape` uses when not told
DEFAULT_QUADRATURE = "auto"
#: ``"auto"`` keeps the quadratures in the state while ``n + n_theta`` (states plus moving
#: parameters) is below this: there LSODA's dense LU of the whole system is cheap, and the
#: state's error control (which watches ``mu`` too) keeps the gradient more accurate
#: (measured side by side on one BLAS thread, ``benchmarks/adjoint_quadrature.py``, rtol
#: 1e-12: state/gauss time 0.78-1.26 from Borghans to a 100-state chain (200 components);
#: Laske's gradient 6.8e-11 from AMICI's in the state, 1.1e-7 with Gauss). Above it the LU
#: of ``n + n_theta`` rows grows as its cube: Lang_PLOSComputBiol2024 (124 states, 288
#: components) takes 143 s with Gauss (docs/solvers.md, "The adjoint's quadratures")
QUADRATURE_STATE_LIMIT = 100

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
    quadrature : {"auto", "gauss", "state"}, optional
        How the quadratures ``mu`` are integrated backward (:data:`QUADRATURES`, module
        notes; default :data:`DEFAULT_QUADRATURE`). The one taken is :attr:`quadrature`.

    Attributes
    ----------
    Y : ndarray, shape (m, n)
        The states at ``times`` (after any jump at that time).
    quadrature : {"gauss", "state"}
        How this tape integrates its quadratures.
    """

    def __init__(self, vf, t0: float, times, y0, D0, Dtheta, method: str, rtol: float,
                 atol: float, where: str = "", jumps=(), start_jump=None,
                 quadrature: str | None = None):
        quadrature = DEFAULT_QUADRATURE if quadrature is None else quadrature
        if quadrature not in QUADRATURES:
            raise ValueError(f"quadrature={quadrature!r}: use one of {QUADRATURES}")
        self.vf, self.method, self.rtol, self.atol, self.where = vf, method, rtol, atol, where
        self.times = np.asarray(times, dtype=float)
        self.t0 = float(t0)
        n = vf.n
        self.Dtheta = np.asarray(Dtheta, dtype=float)
        nP = self.Dtheta.shape[1]
        self.D0 = np.zeros((n, nP)) if D0 is None else np.asarray(D0, dtype=float)
        # the model parameters P moves at all: only their quadratures are integrated
        self.moving = np.flatnonzero(np.any(self.Dtheta != 0, axis=1))
        if quadrature == "auto":
            quadrature = ("state" if n + self.moving.size < QUADRATURE_STATE_LIMIT
                          else "gauss")
        self.quadrature = quadrature
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
        if not (np.all(np.isfinite(self.Gy)) and np.all(np.isfinite(g))):
            # a likelihood without a finite derivative here (e.g. a log-transformed
            # observable at a simulated value <= 0): no backward solve, a NaN gradient, as
            # forward sensitivities give
            return np.full(g.shape, np.nan)
        has_cotangent = np.any(self.Gy != 0, axis=1)    # where lambda jumps
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
            # backward from b to a, restarting at every output time inside where lambda
            # jumps. Not where it does not: a restart costs LSODA a start from order 1,
            # and at tight tolerances from a smooth lambda its Adams start may not detect
            # stiffness at all (Lang_PLOSComputBiol2024 at 1e-12: 3,000 steps of 4e-8 at
            # the stability limit of J's fastest mode, -2.4e7, and no switch to BDF)
            inside = self.times[(self.times > a) & (self.times <= b)
                               & has_cotangent]
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
        cache = {}
        if self.quadrature == "gauss":
            # lambda alone: its right-hand side and Jacobian need df/dy only
            def rhs(t, w, sol):
                J = vf.jac(t, sol(t))
                cache.clear()
                cache[t] = J
                return -(w @ J)

            def jac(t, w, sol):
                J = cache[t] if t in cache else vf.jac(t, sol(t))
                return -J.T
            return rhs, jac
        if not c.nets:
            fjp, split = c.rhs_and_jacobians(), c.split_rhs_and_jacobians
            pl, inputs = vf.pl, vf.inputs

            def parts(t, y):
                _, J, Jt = split(fjp([t], y.tolist(), pl, [],
                                     inputs(t).tolist() if inputs else []))
                return J, Jt
        else:
            parts = vf.jac_and_theta_jac

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
        if hi == lo:
            return lam, mu
        n = self.vf.n
        in_state = self.quadrature == "state"
        w0 = np.concatenate([lam, mu]) if in_state else lam
        if not np.all(np.isfinite(w0)):
            raise SolveError(f"the backward adjoint solve ({self.method}){self.where} has "
                             f"no finite start at t={hi}: the adjoint state overflowed",
                             status=-1)
        kw = dict(method=self.method, rtol=self.rtol, atol=self.atol)
        if self.method in STIFF_METHODS:
            kw["jac"] = lambda t, w: jac(t, w, sol)
        with np.errstate(all="ignore"):
            res = solve_ivp(lambda t, w: rhs(t, w, sol), (hi, lo), w0, t_eval=[lo],
                            dense_output=not in_state, **kw)
        if res.status != 0 or not np.all(np.isfinite(res.y)):
            raise SolveError(f"the backward adjoint solve ({self.method}) failed{self.where} "
                             f"between t={lo} and t={hi}: {res.message}", status=res.status)
        w = res.y[:, -1]
        if in_state:
            return w[:n], w[n:]
        return w, mu + self._quadrature(res.sol, sol)

    def _quadrature(self, lam_sol, sol) -> np.ndarray:
        """``int lambda^T df/dtheta dt`` over the backward solve's steps (the module notes):
        the change of ``mu`` from its start to its end.

        The integrand is smooth on the pieces of both interpolants (lambda's backward steps,
        y's forward ones), not across their joins. ``df/dtheta`` depends on ``t`` through
        ``y`` alone, and after every restart the backward solve takes hundreds of short
        steps through the fast transient the jump in ``lambda`` excites, where ``y`` hardly
        moves (Lang_PLOSComputBiol2024: 271,000 backward steps against 30,500 forward ones,
        and ``df/dtheta`` at 3 nodes of every piece was 71 % of the backward pass). So on a
        forward step holding more than :data:`FORWARD_NODES` / :data:`QUADRATURE_NODES`
        pieces, ``df/dtheta`` is evaluated at :data:`FORWARD_NODES` Gauss-Legendre nodes of
        the forward step only and interpolated (degree ``FORWARD_NODES - 1``) at
        ``lambda``'s nodes: the moments ``int lambda l_j dt`` of its Lagrange basis are
        summed on the pieces by the same Gauss rule, with ``lambda`` alone. Other pieces
        take ``df/dtheta`` at their own nodes, as before."""
        ts = np.asarray(lam_sol.ts, dtype=float)
        lo, hi = ts.min(), ts.max()
        fwd = np.asarray(getattr(sol, "ts", ()), dtype=float)
        # the forward steps clipped to [lo, hi] (without the forward interpolant's joins,
        # lambda's own steps stand for them)
        inner = fwd[(fwd > lo) & (fwd < hi)] if fwd.size else ts
        fb = np.unique(np.concatenate([[lo, hi], inner]))
        ts = np.unique(np.concatenate([ts, fb]))
        a, b = ts[:-1], ts[1:]
        piece = np.searchsorted(fb, 0.5 * (a + b)) - 1      # the forward step of each piece
        x, wq = np.polynomial.legendre.leggauss(QUADRATURE_NODES)
        nodes = 0.5 * (b - a)[:, None] * (x[None, :] + 1.0) + a[:, None]     # (pieces, q)
        weights = 0.5 * (b - a)[:, None] * wq[None, :]
        n = self.vf.n
        L = lam_sol(nodes.ravel()).T.reshape(a.size, QUADRATURE_NODES, n)
        # interpolate df/dtheta where that evaluates it at fewer points
        interp = (np.bincount(piece, minlength=fb.size - 1) * QUADRATURE_NODES
                  > FORWARD_NODES)
        via = interp[piece]
        g = np.zeros(self.vf.n_theta)
        # mu' = -lambda^T df/dtheta backward in time: mu(lo) - mu(hi) is the integral of
        # +lambda^T df/dtheta from lo to hi
        if np.any(~via):
            T = nodes[~via].ravel()
            g += self.vf.theta_vjp_points(
                T, sol(T).T, (L[~via] * weights[~via][:, :, None]).reshape(-1, n))
        if np.any(via):
            A, B = fb[:-1][interp], fb[1:][interp]
            k = (np.cumsum(interp) - 1)[piece[via]]        # index among A, B; sorted
            s = 2.0 * (nodes[via] - A[k][:, None]) / (B - A)[k][:, None] - 1.0
            xf, _ = np.polynomial.legendre.leggauss(FORWARD_NODES)
            starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
            Lv = L[via]
            M = np.empty((A.size, FORWARD_NODES, n))
            for j in range(FORWARD_NODES):
                ell = np.ones_like(s)           # the Lagrange basis polynomial of node j
                for i in range(FORWARD_NODES):
                    if i != j:
                        ell *= (s - xf[i]) / (xf[j] - xf[i])
                M[:, j] = np.add.reduceat(Lv * (weights[via] * ell)[:, :, None], starts,
                                          axis=0).sum(axis=1)
            T = (0.5 * (B - A)[:, None] * (xf[None, :] + 1.0) + A[:, None]).ravel()
            g += self.vf.theta_vjp_points(T, sol(T).T, M.reshape(-1, n))
        return g[self.moving]
