"""Steady states for PEtab preequilibration and measurements at ``t = inf``: Newton first,
simulation as the fallback, and exact steady-state sensitivities, also with conservation
laws.

How a steady state is found
---------------------------
:func:`steady_state` starts from ``y0`` and

1. finds the model's **conservation laws** (:func:`conservation_laws`): the rows ``c`` with
   ``c . f(y) = 0`` for every ``y``. The SBML import keeps no stoichiometric matrix (and rate
   rules make ``f`` more general than ``N v(y)`` anyway), so they are read off the exact
   Jacobian: ``c . f = 0`` for all ``y`` means ``c . J(y) = 0`` for all ``y``. One Jacobian is
   not enough: at the start many species are zero, which zeroes whole rows of ``J`` (a
   species made only from absent ones), so the start's left null space holds vectors that
   are no conservation laws. The laws are the common left null space of ``J`` at the start
   and at two points drawn (seeded) around it, and each is checked against ``f`` itself:
   ``c . f`` must vanish at those points. A combination whose ``c . J`` vanishes while
   ``c . f`` is the same non-zero number everywhere changes at a constant rate: the model
   has no steady state, a :class:`~dynlearn.errors.SolveError` naming it. At the Newton
   result the laws are checked once more against ``J`` there.
2. runs a **damped Newton** iteration on ``f(y) = 0`` with the exact Jacobian; with
   conservation laws ``C`` (``J`` singular) on the manifold of the start's conserved totals,
   solving ``[J; C] dy = [-f; C (y0 - y)]`` by least squares. The step is halved until the
   weighted RMS norm of ``f`` decreases. Converged when that norm, with tolerances 100 times
   the solver's (AMICI's convention), drops below 1; one more full step then polishes the
   root when it lowers the residual.
3. **accepts** the Newton result only when it is an isolated stable steady state that the
   start can reach: non-negative where the start is, every eigenvalue of ``J`` on the
   manifold (the ``n - m`` that remain besides the conservation laws' zeros) with real part
   below ``-1e-11 max|J|``. Newton can converge to an unstable root (a threshold between two
   stable states) or to a negative one, and where ``J`` has a zero eigenvalue that no law
   explains (a species nothing depends on at the root) the roots form a continuum, of which
   the trajectory picks one by its path; the simulation does not make these mistakes.
4. otherwise **simulates** (stiff method, exact Jacobian) until the same test passes, up to
   ``horizon``. A right-hand side that depends on time (time-triggered ``piecewise``) is
   always simulated: its steady state is where the simulation settles.

Newton can still converge to a *stable* steady state other than the one the trajectory
reaches (a bistable model started in the other basin); as in AMICI, such a model needs
``method="simulation"``.

Sensitivities
-------------
At a steady state ``y*`` with ``J = df/dy`` and ``F = df/dtheta``:

* ``J`` regular (condition number below 1e10): ``dy*/dx = -J^{-1} F Dtheta``; the steady
  state forgets ``y0``.
* conservation laws ``C`` that do not depend on the parameters (``C F Dtheta = 0``, checked
  at the probe points): ``[J; C] S = [-F Dtheta; C D0]``, an exact consistent system of
  rank ``n`` when the steady state is hyperbolic on the manifold; ``C S = C D0`` says the
  conserved totals are those of the start.
* otherwise (the augmented system ill-conditioned, or laws that move with the parameters,
  e.g. estimated compartment sizes): the sensitivities are integrated from the start over
  growing spans until their own derivative passes the steady-state test.

:class:`SteadyState` says which path was taken (``path`` and ``sensitivity``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dynlearn.errors import SolveError
from dynlearn.sensitivity.base import Problem
from dynlearn.sensitivity.forward import ForwardSensitivity

__all__ = ["SteadyState", "conservation_laws", "steady_state"]

#: rank threshold of the (row- and column-equilibrated) stacked Jacobians: an exact law
#: leaves singular values at round-off (~1e-15), a real slow mode far above
_NULL_TOL = 1e-11
#: condition-number limit of ``J`` or ``[J; C]`` for the algebraic sensitivities
_COND_MAX = 1e10
#: eigenvalues of J on the manifold with |Re| below this times max|J| count as zero (a
#: zero column gives an exact 0; real slow modes sit far above: Isensee's slowest is
#: 2.5e-9 max|J|)
_HYPERBOLIC = 1e-11
_NEWTON_STEPS = 100
_MIN_DAMPING = 2.0 ** -20


@dataclass
class SteadyState:
    """A steady state and how it was found.

    Attributes
    ----------
    y : ndarray, shape (n,)
        The state.
    S : ndarray, shape (n, k) or None
        Its derivatives along the directions given (``None`` without ``grad``).
    path : str
        ``"newton"`` or ``"simulation"``.
    sensitivity : str or None
        ``"regular"`` (``-J^{-1} F``), ``"conserved"`` (``[J; C] S = [-F; C S0]``),
        ``"integrated"`` (long-time forward sensitivities), or ``None`` without ``grad``.
    n_conserved : int
        Number of conservation laws found (``-1`` when not looked for: a time-dependent
        right-hand side, or ``method="simulation"``).
    t : float
        Time at which the simulation passed the test (``nan`` on the Newton path).
    reason : str
        Why Newton was not used or not accepted (empty on the Newton path).
    """

    y: np.ndarray
    S: np.ndarray | None
    path: str
    sensitivity: str | None
    n_conserved: int
    t: float
    reason: str = ""


def _wrms(f, y, rtol, atol) -> float:
    return float(np.sqrt(np.mean((f / (atol + rtol * np.abs(y))) ** 2)))


def _equilibrated_left_null(blocks: list[np.ndarray]) -> np.ndarray:
    """Rows ``c`` with ``c @ B = 0`` for every block, shape (m, n), unit rows.

    Rows are scaled by a common factor and each block's columns by their own largest entry
    before the SVD (neither changes the null space in exact arithmetic), so that a stiff
    model's spread of rates does not decide the rank."""
    M = np.hstack([b / np.where(np.abs(b).max(axis=0) > 0, np.abs(b).max(axis=0), 1.0)
                   for b in blocks])
    r = np.abs(M).max(axis=1)
    r = np.where(r > 0, r, 1.0)
    U, s, _ = np.linalg.svd(M / r[:, None], full_matrices=True)
    s_full = np.zeros(U.shape[0])
    s_full[:s.size] = s
    null = s_full <= _NULL_TOL * max(s_full.max(), 1e-300)
    C = U[:, null].T / r[None, :]          # c = R w for the scaled null vector w
    if C.size == 0:
        return np.zeros((0, M.shape[0]))
    # an orthonormal basis of the same rows (the laws as a subspace)
    Q, _ = np.linalg.qr(C.T)
    return Q.T


def _probes(y0: np.ndarray) -> list[np.ndarray]:
    """Two generic points near the start (seeded: the same every call), shifted towards
    positive values so that concentrations stay in their domain."""
    rng = np.random.default_rng(20261206)
    a = np.abs(y0)
    s = float(a.max()) if a.size and a.max() > 0 else 1.0
    return [y0 + rng.uniform(0.1, 1.0, y0.size) * (a + s),
            y0 + rng.uniform(0.01, 0.1, y0.size) * (a + 1e-2 * s)]


def conservation_laws(vf, y0, t: float = 0.0, atol: float = 0.0):
    """Linear conservation laws of ``dy/dt = f(t, y)`` at fixed ``t``, and constant drifts.

    Parameters
    ----------
    vf : dynlearn.core.vectorfield.VectorField
    y0 : array_like, shape (n,)
        The start; the laws are read at it and at two seeded points around it.
    t : float
        Time at which ``f`` is evaluated (the right-hand side should not depend on it).
    atol : float
        Absolute tolerance below which a constant drift rate counts as zero.

    Returns
    -------
    C : ndarray, shape (m, n)
        Orthonormal rows ``c`` with ``c @ J(y) = 0`` and ``c @ f(y) = 0`` at every point.
    drift : ndarray, shape (d, n)
        Rows with ``c @ J(y) = 0`` but ``c @ f(y)`` the same non-zero number at every point:
        combinations that change at a constant rate (then no steady state exists).
    points : list of ndarray
        The points used (the start and the probes at which ``f`` and ``J`` are finite).
    """
    y0 = np.asarray(y0, dtype=float)
    pts, Js, Fs = [], [], []
    for y in [y0, *_probes(y0)]:
        with np.errstate(all="ignore"):
            f = np.asarray(vf.fun(t, y), dtype=float).reshape(-1)
            J = np.asarray(vf.jac(t, y), dtype=float)
        if np.all(np.isfinite(f)) and np.all(np.isfinite(J)):
            pts.append(y)
            Js.append(J)
            Fs.append(f)
    n = y0.size
    if not Js:
        return np.zeros((0, n)), np.zeros((0, n)), pts
    N = _equilibrated_left_null(Js)
    if N.shape[0] == 0:
        return N, np.zeros((0, n)), pts
    # split the null space into laws (c . f = 0) and drifts (c . f constant, non-zero):
    # project the values of f onto the null space and look at what moves them
    V = np.array([N @ f for f in Fs])                   # (points, m)
    scale = np.array([np.abs(N) @ np.abs(f) for f in Fs]).max(axis=0)
    V_mean = V.mean(axis=0)
    # rows whose value is the same at every point, and well above round-off
    same = np.all(np.abs(V - V_mean) <= 1e-6 * np.abs(V_mean) + 1e-14 * scale, axis=0)
    big = np.abs(V_mean) > np.maximum(1e-8 * scale, atol)
    moving = same & big
    if not np.any(moving) or len(pts) < 2:
        return N, np.zeros((0, n)), pts
    # the drifting directions: the span of the values' constant part; the rest are laws
    v = V_mean / np.linalg.norm(V_mean)
    drift = (v @ N)[None, :]
    C = N - np.outer(N @ drift[0], drift[0])
    Q, s, _ = np.linalg.svd(C.T, full_matrices=False)
    C = Q[:, s > 1e-8].T
    return C, drift, pts


def _reduced_eigs(J: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Eigenvalues of ``J`` on the tangent space of ``C y = const`` (``C J = 0``, so ``J``
    maps into it; the other ``m`` eigenvalues are the laws' zeros)."""
    if C.shape[0] == 0:
        return np.linalg.eigvals(J)
    # orthonormal basis of the right null space of C
    _, _, Vt = np.linalg.svd(C, full_matrices=True)
    Q = Vt[C.shape[0]:].T
    return np.linalg.eigvals(Q.T @ J @ Q)


def _newton_step(vf, t, y, f, y0, C):
    """The Newton step at ``y`` (on ``C y = C y0``), or None and why not."""
    with np.errstate(all="ignore"):
        J = np.asarray(vf.jac(t, y), dtype=float)
    if not np.all(np.isfinite(J)):
        return None, "the Jacobian is not finite at a Newton iterate"
    try:
        if C.shape[0]:
            A = np.vstack([J, C])
            b = np.concatenate([-f, C @ (y0 - y)])
            return np.linalg.lstsq(A, b, rcond=None)[0], ""
        try:
            return np.linalg.solve(J, -f), ""
        except np.linalg.LinAlgError:     # exactly singular: the least-squares step
            return np.linalg.lstsq(J, -f, rcond=None)[0], ""
    except np.linalg.LinAlgError as exc:
        return None, f"Newton step failed ({exc})"


def _residual(vf, t, y, rtol_ss, atol_ss):
    with np.errstate(all="ignore"):
        f = np.asarray(vf.fun(t, y), dtype=float)
    return f, (_wrms(f, y, rtol_ss, atol_ss) if np.all(np.isfinite(f)) else np.inf)


def _newton(vf, t, y0, C, rtol_ss, atol_ss):
    """Damped Newton on ``f = 0`` (on ``C y = C y0``); the root, or None and why not.

    Once the test passes, one more full step is taken when it lowers the residual: near
    the root it squares the error, so the root (and the sensitivities computed there) no
    longer depends on where the test happened to stop."""
    y = np.array(y0, dtype=float)
    f, r = _residual(vf, t, y, rtol_ss, atol_ss)
    lam = 1.0
    for _ in range(_NEWTON_STEPS):
        if r < 1.0:
            break
        dy, why = _newton_step(vf, t, y, f, y0, C)
        if dy is None:
            return None, why
        while True:
            fn, rn = _residual(vf, t, y + lam * dy, rtol_ss, atol_ss)
            if rn < r:
                y, f, r = y + lam * dy, fn, rn
                lam = min(1.0, 2.0 * lam)
                break
            lam *= 0.5
            if lam < _MIN_DAMPING:
                return None, f"Newton stalled (weighted RMS of dy/dt {r:.3g})"
    if r >= 1.0:
        return None, f"Newton did not converge in {_NEWTON_STEPS} steps"
    dy, _ = _newton_step(vf, t, y, f, y0, C)
    if dy is not None:
        fn, rn = _residual(vf, t, y + dy, rtol_ss, atol_ss)
        if rn <= r:
            y = y + dy
    return y, ""


def _accept(vf, t, y, y0, C, rtol_ss, atol_ss) -> str:
    """Why the Newton root ``y`` is not the steady state the start reaches ('' if it is)."""
    scale = atol_ss + rtol_ss * float(np.abs(y0).max(initial=0.0))
    if np.any((y0 >= 0) & (y < -scale)):
        return "Newton's root is negative where the start is not"
    J = vf.jac(t, y)
    if C.shape[0]:
        # the laws must hold at the root too (they were read near the start)
        if not _annihilates(C, J):
            return "a conservation law read near the start fails at Newton's root"
    lam = _reduced_eigs(J, C)
    if not lam.size:
        return ""
    top, tol = float(np.max(lam.real)), _HYPERBOLIC * float(np.abs(J).max(initial=0.0))
    if top > tol:
        return f"Newton's root is unstable (an eigenvalue with real part {top:.3g})"
    if top > -tol:
        # a zero eigenvalue that no conservation law explains (e.g. a species nothing
        # depends on at the root): the roots form a continuum and which one the trajectory
        # reaches depends on its path, which Newton does not follow
        return f"Newton's root is not isolated (an eigenvalue {top:.3g} on the manifold)"
    return ""


def _simulate(vf, y0, rtol, atol, method, horizon, rtol_ss, atol_ss):
    from scipy.integrate import solve_ivp

    def event(t, y):
        return _wrms(vf.fun(t, y), y, rtol_ss, atol_ss) - 1.0
    event.terminal = True
    if event(0.0, y0) < 0:
        return np.array(y0, dtype=float), 0.0
    res = solve_ivp(vf.fun, (0.0, horizon), y0, method=method, rtol=rtol, atol=atol,
                    jac=vf.jac, events=event)
    if res.status != 1:
        raise SolveError(f"preequilibration did not reach a steady state by t = {horizon:.3g}: "
                         f"{res.message}")
    return res.y_events[0][0], float(res.t_events[0][0])


def _integrated(vf, y0, D0, Dtheta, t_end, rtol, atol, method, rtol_ss, atol_ss):
    """Sensitivities integrated from the start over growing spans until their derivative
    ``J D + F Dtheta`` passes the steady-state test (each span from the start: restarting
    a stiff solver near the steady state fails at tight tolerances)."""
    n = y0.size
    if D0 is None:
        D0 = np.zeros((n, Dtheta.shape[1]))
    fs = ForwardSensitivity()
    t = max(t_end, 1.0)
    for _ in range(12):
        prob = Problem(vf=vf, t0=0.0, t_obs=np.array([t]), y0=y0, obs_loss=None,
                       method=method, rtol=rtol, atol=atol, name="steady state")
        Y, SP = fs.directional(prob, Dtheta, D0)
        y, D = Y[0], SP[0]
        J, Jt = vf.jac_and_theta_jac(t, y)
        dD = J @ D + Jt @ Dtheta
        if _wrms(dD, D, rtol_ss, atol_ss) < 1.0:
            return y, D
        t *= 4.0
    raise SolveError("preequilibration: the steady-state sensitivities did not settle by "
                     f"t = {t:.3g}")


def steady_state(vf, y0, D0=None, Dtheta=None, *, rtol: float = 1e-9, atol: float = 1e-12,
                 method: str = "LSODA", horizon: float = 1e9, grad: bool = False,
                 newton: bool = True) -> SteadyState:
    """The steady state reached from ``y0`` and its derivatives (see the module docstring).

    Parameters
    ----------
    vf : dynlearn.core.vectorfield.VectorField
        The right-hand side at the parameters of the condition.
    y0 : array_like, shape (n,)
        The start.
    D0 : ndarray, shape (n, k), optional
        ``dy0/dx`` along the ``k`` directions (zero when omitted).
    Dtheta : ndarray, shape (n_theta, k), optional
        ``dtheta/dx``; needed with ``grad``.
    rtol, atol : float
        The solver's tolerances; the steady-state test uses 100 times them.
    method : str
        ``solve_ivp`` method of the simulation fallback.
    horizon : float
        The longest simulation.
    grad : bool
        Also compute ``dy*/dx``.
    newton : bool
        Try Newton first (``False``: simulate only, with the conservation laws not used:
        the behaviour before Newton was added, for comparisons).

    Returns
    -------
    SteadyState

    Raises
    ------
    SolveError
        When a combination of states changes at a constant non-zero rate (no steady state),
        when the simulation does not settle by ``horizon``, or when the integrated
        sensitivities do not settle.
    """
    y0 = np.array(y0, dtype=float).reshape(-1)
    rtol_ss, atol_ss = 100 * rtol, 100 * atol
    C = np.zeros((0, y0.size))
    n_laws, reason, y, pts = -1, "", None, []
    t_ref = float(horizon)
    timed = _depends_on_time(vf, y0, t_ref)
    if not newton:
        reason = "Newton disabled"
    elif timed:
        reason = "the right-hand side depends on time"
    else:
        C, drift, pts = conservation_laws(vf, y0, t_ref, atol_ss)
        n_laws = C.shape[0]
        if drift.shape[0]:
            names = [s.name for s in vf.model.states]
            d = drift[0] / np.abs(drift[0]).max()
            terms = " + ".join(f"{d[i]:.3g} {names[i]}" for i in np.argsort(-np.abs(d))[:4]
                               if abs(d[i]) > 1e-8)
            rate = float(drift[0] @ np.asarray(vf.fun(t_ref, y0), dtype=float))
            raise SolveError(f"no steady state: {terms} changes at the constant rate "
                             f"{rate / np.abs(drift[0]).max():.3g} whatever the state")
        y, reason = _newton(vf, t_ref, y0, C, rtol_ss, atol_ss)
        if y is not None:
            reason = _accept(vf, t_ref, y, y0, C, rtol_ss, atol_ss)
            if reason:
                y = None
    if y is not None:
        path, t_end = "newton", float("nan")
    else:
        path = "simulation"
        y, t_end = _simulate(vf, y0, rtol, atol, method, horizon, rtol_ss, atol_ss)
    if not grad:
        return SteadyState(y, None, path, None, n_laws, t_end, reason)
    Dtheta = np.asarray(Dtheta, dtype=float)
    t_jac = t_end if path == "simulation" else t_ref
    J, Jt = vf.jac_and_theta_jac(t_jac, y)
    if np.linalg.cond(J) < _COND_MAX:
        return SteadyState(y, -np.linalg.solve(J, Jt @ Dtheta), path, "regular", n_laws,
                           t_end, reason)
    if n_laws > 0 and _laws_fixed(vf, C, pts, t_ref, Dtheta):
        A = np.vstack([J, C])
        r = np.abs(A).max(axis=1)
        if np.linalg.cond(A / np.where(r > 0, r, 1.0)[:, None]) < _COND_MAX:
            S0 = np.zeros((y.size, Dtheta.shape[1])) if D0 is None else D0
            b = np.vstack([-(Jt @ Dtheta), C @ S0])
            S = np.linalg.lstsq(A, b, rcond=None)[0]
            return SteadyState(y, S, path, "conserved", n_laws, t_end, reason)
    if path == "newton":
        # the integration needs the time the trajectory settles: simulate after all
        _, t_end = _simulate(vf, y0, rtol, atol, method, horizon, rtol_ss, atol_ss)
    y, S = _integrated(vf, y0, D0, Dtheta, t_end, rtol, atol, method, rtol_ss, atol_ss)
    return SteadyState(y, S, path, "integrated", n_laws, t_end, reason)


def _annihilates(C, M) -> bool:
    """Whether ``C @ M`` vanishes to round-off: each entry against the norms of its row of
    ``C`` and column of ``M`` (elementwise bounds fail where a law's entry is itself
    round-off, ~1e-17, against a column that lives in that state only)."""
    bound = np.linalg.norm(C, axis=1)[:, None] * np.linalg.norm(M, axis=0)[None, :]
    return bool(np.all(np.abs(C @ M) <= 1e-8 * bound))


def _depends_on_time(vf, y0, t_ref) -> bool:
    """Whether ``f`` differs between ``t = 0`` and ``t_ref`` at the start."""
    with np.errstate(all="ignore"):
        a = np.asarray(vf.fun(0.0, y0), dtype=float)
        b = np.asarray(vf.fun(t_ref, y0), dtype=float)
    return not np.array_equal(a, b, equal_nan=True)


def _laws_fixed(vf, C, pts, t, Dtheta) -> bool:
    """Whether the conservation laws stay the same when the parameters move along
    ``Dtheta``: ``C F Dtheta`` vanishes at the probe points (it equals ``-(dC/dx) f``)."""
    for y in pts:
        _, Jt = vf.jac_and_theta_jac(t, y)
        G = Jt @ Dtheta
        if not _annihilates(C, G):
            return False
    return True
