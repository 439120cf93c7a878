"""Optimizers for :func:`dynlearn.fit`, as objects (the diffrax/optax style).

Every optimizer works on the fit's objective in the optimizer's coordinates ``x`` (log
for log-transformed parameters, see :class:`~dynlearn.parameters.ParameterSpace`) and
respects its box bounds. A trial point where the model cannot be solved (the solver fails,
the state blows up, a log-loss prediction is not positive) raises
:class:`~dynlearn.objective.Rejected`; each optimizer rejects such a point and backs off
(a larger damping, a shorter step) instead of stopping.

Which one to use
----------------
* :class:`LevenbergMarquardt` (default for models without networks, and the final stage for
  networks): uses the least-squares structure. Each iteration needs the residual Jacobian
  (exact, through the recorded Runge-Kutta steps), then tries damped Gauss-Newton steps,
  each costing one forward solve. Converges in far fewer iterations than gradient methods
  near a minimum.
* :class:`GaussNewton`: undamped Gauss-Newton steps with a backtracking line search; fast
  on well-conditioned problems with small residuals.
* :class:`LBFGSB`: scipy's L-BFGS-B on the loss and its adjoint gradient; cost per
  iteration independent of the number of residuals (long time series, many parameters).
* :class:`Adam`: first-order, robust far from a minimum, slow near one.
* :class:`Staged`: several of the above in sequence, e.g.
  ``Staged([Adam(200, lr=0.01), LevenbergMarquardt()])``.
* :class:`MultipleShooting`: splits each time series into segments with their own initial
  states, joined by continuity residuals; for long or oscillating series where single
  shooting gets stuck in a local minimum. Ends with a single-shooting polish.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import OptionError
from .objective import Rejected

__all__ = ["Adam", "GaussNewton", "LBFGSB", "LevenbergMarquardt", "MultipleShooting",
           "Optimizer", "OptimizeOutcome", "Staged"]


@dataclass
class OptimizeOutcome:
    """What one optimizer run returns: the final point and why it stopped."""

    x: np.ndarray
    cost: float
    success: bool
    message: str
    nit: int = 0
    extra: dict = field(default_factory=dict)


class Optimizer:
    """Base class. Subclasses implement :meth:`run`."""

    #: needs the residual Jacobian (least-squares structure)
    least_squares = False

    def run(self, obj, x0: np.ndarray, state: dict | None = None) -> OptimizeOutcome:
        """Minimise ``obj`` from ``x0``; ``state`` holds resumable internals."""
        raise NotImplementedError  # pragma: no cover

    def stages(self) -> list[Optimizer]:
        return [self]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"

    def to_dict(self) -> dict:
        return {"type": type(self).__name__,
                **{k: v for k, v in vars(self).items()
                   if not k.startswith("_") and isinstance(v, (int, float, str, bool, type(None)))}}


def _check_positive_int(v, name):
    if not isinstance(v, (int, np.integer)) or v < 1:
        raise OptionError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


class LevenbergMarquardt(Optimizer):
    """Levenberg-Marquardt on the residual Jacobian, with bounds by projection.

    Parameters
    ----------
    max_iter : int
        Maximum number of Jacobian evaluations (iterations).
    ftol : float
        Stop when an accepted step reduces the cost by less than ``ftol`` relatively and the
        model predicted no more.
    xtol : float
        Stop when the step is smaller than ``xtol * (xtol + |x|)``.
    gtol : float
        Stop when the scaled gradient's largest entry is below ``gtol``.
    damping : float
        Initial damping relative to the largest squared singular value of the scaled
        Jacobian.

    Notes
    -----
    Columns are scaled by their norms (kept at the running maximum, as MINPACK does), so
    the method is invariant to parameter units. One SVD of the scaled Jacobian per
    iteration gives the step for any damping, so rejected trial points cost one forward
    solve each and no linear algebra. Damping follows Nielsen's rule: after a step with
    gain ratio ``rho`` the damping is multiplied by ``max(1/3, 1 - (2 rho - 1)^3)``; after a
    rejected step (including one where the solver fails) by 2, 4, 8, ...

    This works when there are fewer residuals than parameters too (networks), where
    MINPACK's ``lm`` in ``scipy.optimize.least_squares`` refuses to run.

    References
    ----------
    .. [1] J. J. More, "The Levenberg-Marquardt algorithm: implementation and theory",
           Numerical Analysis, Lecture Notes in Mathematics 630 (1978).
    .. [2] H. B. Nielsen, "Damping parameter in Marquardt's method", IMM-REP-1999-05, DTU.
    """

    least_squares = True

    def __init__(self, max_iter: int = 200, ftol: float = 1e-10, xtol: float = 1e-10,
                 gtol: float = 1e-10, damping: float = 1.0):
        self.max_iter = _check_positive_int(max_iter, "max_iter")
        self.ftol, self.xtol, self.gtol, self.damping = ftol, xtol, gtol, damping

    def _step(self, d, U, s, Vt, r, lam):
        return -(Vt.T @ (s / (s * s + lam) * (U.T @ r))) / d

    def run(self, obj, x0, state=None):
        lo, hi = obj.space.lower, obj.space.upper
        x = np.clip(np.asarray(x0, dtype=float), lo, hi)
        try:
            r, J = obj.jacobian(x)
        except Rejected as exc:
            return OptimizeOutcome(x, np.inf, False, f"the model cannot be solved at the "
                                   f"starting point: {exc}")
        cost = float(r @ r)
        obj.report(x, cost)
        d = np.zeros(x.size)
        lam_rel, nu = self.damping, 2.0
        message, success = f"maximum number of iterations ({self.max_iter}) reached", False
        it = 0
        while it < self.max_iter:
            it += 1
            d = np.maximum(d, np.linalg.norm(J, axis=0))
            ds = np.where(d > 0, d, 1.0)
            U, s, Vt = np.linalg.svd(J / ds, full_matrices=False)
            smax2 = float(s[0] ** 2) if s.size and s[0] > 0 else 1.0
            g = (J / ds).T @ r
            if np.max(np.abs(g)) <= self.gtol * max(cost, 1e-300) ** 0.5 * smax2 ** 0.5:
                message, success = "converged: gradient below gtol", True
                break
            accepted = False
            while True:
                lam = lam_rel * smax2
                step = self._step(ds, U, s, Vt, r, lam)
                xn = np.clip(x + step, lo, hi)
                step = xn - x
                if np.linalg.norm(step) <= self.xtol * (self.xtol + np.linalg.norm(x)):
                    break
                pred = cost - float(np.sum((r + J @ step) ** 2))
                try:
                    rn = obj.residuals(xn)
                    cn = float(rn @ rn)
                except Rejected:
                    cn = np.inf
                rho = (cost - cn) / pred if pred > 0 and np.isfinite(cn) else -1.0
                if rho > 1e-4:
                    accepted = True
                    break
                lam_rel *= nu
                nu *= 2.0
                if lam_rel > 1e16:
                    break
            if not accepted:
                message, success = ("converged: no step reduces the cost (relative step "
                                    "below xtol)"), True
                break
            lam_rel *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            lam_rel = max(lam_rel, 1e-15)
            nu = 2.0
            x_old, cost_old = x, cost
            x = xn
            try:
                r, J = obj.jacobian(x)
            except Rejected:  # the forward solve just worked; retry the same point once
                r, J = obj.jacobian(x)
            cost = float(r @ r)
            obj.report(x, cost, iteration=True)
            if (cost_old - cost) <= self.ftol * cost_old and pred <= self.ftol * cost_old * 2:
                message, success = "converged: relative cost reduction below ftol", True
                break
            if np.linalg.norm(x - x_old) <= self.xtol * (self.xtol + np.linalg.norm(x)):
                message, success = "converged: relative step below xtol", True
                break
        return OptimizeOutcome(x, cost, success, message, it)


class GaussNewton(LevenbergMarquardt):
    """Gauss-Newton steps with a backtracking line search (a tiny fixed damping keeps
    the step defined when the Jacobian is rank deficient)."""

    def __init__(self, max_iter: int = 100, ftol: float = 1e-10, xtol: float = 1e-10,
                 gtol: float = 1e-10):
        super().__init__(max_iter, ftol, xtol, gtol, damping=1e-12)

    def run(self, obj, x0, state=None):
        lo, hi = obj.space.lower, obj.space.upper
        x = np.clip(np.asarray(x0, dtype=float), lo, hi)
        try:
            r, J = obj.jacobian(x)
        except Rejected as exc:
            return OptimizeOutcome(x, np.inf, False, f"the model cannot be solved at the "
                                   f"starting point: {exc}")
        cost = float(r @ r)
        obj.report(x, cost)
        message, success = f"maximum number of iterations ({self.max_iter}) reached", False
        it = 0
        while it < self.max_iter:
            it += 1
            d = np.linalg.norm(J, axis=0)
            ds = np.where(d > 0, d, 1.0)
            U, s, Vt = np.linalg.svd(J / ds, full_matrices=False)
            lam = self.damping * (float(s[0] ** 2) if s.size else 1.0)
            full = self._step(ds, U, s, Vt, r, lam)
            alpha, accepted = 1.0, False
            for _ in range(30):
                xn = np.clip(x + alpha * full, lo, hi)
                try:
                    rn = obj.residuals(xn)
                    cn = float(rn @ rn)
                except Rejected:
                    cn = np.inf
                if cn < cost:
                    accepted = True
                    break
                alpha *= 0.5
            if not accepted:
                message, success = "converged: no step along the Gauss-Newton direction " \
                    "reduces the cost", True
                break
            x_old, cost_old, x = x, cost, xn
            r, J = obj.jacobian(x)
            cost = float(r @ r)
            obj.report(x, cost, iteration=True)
            if cost_old - cost <= self.ftol * cost_old:
                message, success = "converged: relative cost reduction below ftol", True
                break
            if np.linalg.norm(x - x_old) <= self.xtol * (self.xtol + np.linalg.norm(x)):
                message, success = "converged: relative step below xtol", True
                break
        return OptimizeOutcome(x, cost, success, message, it)


class LBFGSB(Optimizer):
    """scipy's L-BFGS-B on the loss and its gradient (adjoint by default).

    Parameters
    ----------
    max_iter : int
    max_fun : int, optional
        Maximum number of loss+gradient evaluations (default ``2 * max_iter``).
    ftol, gtol : float
        scipy's stopping tolerances.
    memory : int
        Number of stored correction pairs (scipy's ``maxcor``).

    Notes
    -----
    A rejected point returns a cost far above the best one seen, with the last good
    gradient, so the line search shortens the step.
    """

    def __init__(self, max_iter: int = 300, max_fun: int | None = None, ftol: float = 1e-12,
                 gtol: float = 1e-8, memory: int = 20):
        self.max_iter = _check_positive_int(max_iter, "max_iter")
        self.max_fun = max_fun
        self.ftol, self.gtol, self.memory = ftol, gtol, memory

    def run(self, obj, x0, state=None):
        from scipy.optimize import minimize
        lo, hi = obj.space.lower, obj.space.upper
        x0 = np.clip(np.asarray(x0, dtype=float), lo, hi)
        last = {"g": np.zeros(x0.size), "best": np.inf}

        def fg(x):
            try:
                c, g = obj.cost_and_grad(x)
            except Rejected:
                big = 1e6 * (abs(last["best"]) + 1.0) if np.isfinite(last["best"]) else 1e20
                return big, last["g"]
            obj.report(x, c)
            last["g"] = g
            last["best"] = min(last["best"], c)
            return c, g

        it = [0]

        def cb(*_):
            it[0] += 1
            obj.report(None, None, iteration=True)

        bounds = list(zip(np.where(np.isfinite(lo), lo, None), np.where(np.isfinite(hi), hi, None)))
        res = minimize(fg, x0, jac=True, method="L-BFGS-B", bounds=bounds, callback=cb,
                       options=dict(maxiter=self.max_iter, maxfun=self.max_fun or 2 * self.max_iter,
                                    ftol=self.ftol, gtol=self.gtol, maxcor=self.memory))
        x = obj.best_x if obj.best_x is not None else res.x
        msg = str(res.message)
        success = bool(res.success) or "ABNORMAL" in msg.upper() and np.isfinite(obj.best_cost)
        return OptimizeOutcome(np.asarray(x), float(obj.best_cost), success,
                               f"L-BFGS-B: {msg}", int(res.nit))


class Adam(Optimizer):
    """Adam on the loss gradient (adjoint by default).

    Parameters
    ----------
    iterations : int
    lr : float
        Step size (in the optimizer's coordinates).
    betas : (float, float)
    eps : float

    Notes
    -----
    A rejected point halves the step and retries from the last good point (up to 20
    times); the moments are only updated with good gradients. Bounds are kept by clipping.
    """

    def __init__(self, iterations: int = 200, lr: float = 0.01,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.iterations = _check_positive_int(iterations, "iterations")
        self.lr, self.betas, self.eps = float(lr), tuple(betas), float(eps)

    def run(self, obj, x0, state=None):
        lo, hi = obj.space.lower, obj.space.upper
        x = np.clip(np.asarray(x0, dtype=float), lo, hi)
        b1, b2 = self.betas
        st = state if state is not None else {}
        m = st.get("m", np.zeros(x.size))
        v = st.get("v", np.zeros(x.size))
        k0 = int(st.get("k", 0))
        try:
            c, g = obj.cost_and_grad(x)
        except Rejected as exc:
            return OptimizeOutcome(x, np.inf, False, f"the model cannot be solved at the "
                                   f"starting point: {exc}")
        obj.report(x, c)
        for k in range(k0 + 1, self.iterations + 1):
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            step = self.lr * (m / (1 - b1 ** k)) / (np.sqrt(v / (1 - b2 ** k)) + self.eps)
            for _ in range(20):
                xn = np.clip(x - step, lo, hi)
                try:
                    cn, gn = obj.cost_and_grad(xn)
                    break
                except Rejected:
                    step = 0.5 * step
            else:
                return OptimizeOutcome(x, c, False, "Adam: every shortened step failed to solve",
                                       k)
            x, c, g = xn, cn, gn
            obj.report(x, c, iteration=True)
            st.update(m=m, v=v, k=k)
        x_best = obj.best_x if obj.best_x is not None else x
        return OptimizeOutcome(np.asarray(x_best), float(obj.best_cost), True,
                               f"Adam: {self.iterations} iterations done", self.iterations)


class Staged(Optimizer):
    """Several optimizers in sequence, each starting at the best point of the previous one.

    Parameters
    ----------
    stages : list of Optimizer
    """

    def __init__(self, stages):
        stages = list(stages)
        if not stages or not all(isinstance(s, Optimizer) for s in stages):
            raise OptionError("Staged([...]) needs a non-empty list of optimizer objects, e.g. "
                              "Staged([dl.Adam(200), dl.LevenbergMarquardt()])")
        self.stages_ = stages

    def stages(self):
        out = []
        for s in self.stages_:
            out += s.stages()
        return out

    def __repr__(self) -> str:
        return f"Staged({self.stages_!r})"

    def to_dict(self) -> dict:
        return {"type": "Staged", "stages": [s.to_dict() for s in self.stages_]}


class MultipleShooting(Optimizer):
    """Multiple shooting with Levenberg-Marquardt, then a single-shooting polish.

    Each experiment's time series is cut into ``segments`` pieces; each piece starts from
    its own initial state (extra unknowns, initialised from the data where every state is
    observed, else from a simulation). Continuity residuals
    ``weight * (y_end of piece k - y_start of piece k+1)`` join the pieces. Short pieces
    cannot drift out of phase with the data, so the fit avoids the local minima that trap
    single shooting on oscillating series. The joined solution then seeds an ordinary
    (single-shooting) fit with ``polish``.

    Parameters
    ----------
    segments : int
        Pieces per experiment.
    continuity_weight : float
        Weight of the continuity residuals, relative to a residual of one noise level.
    max_iter : int
        Levenberg-Marquardt iterations on the multiple-shooting problem.
    polish : Optimizer or None
        Final single-shooting optimizer (default :class:`LevenbergMarquardt`).
    """

    least_squares = True

    def __init__(self, segments: int = 4, continuity_weight: float = 10.0, max_iter: int = 100,
                 polish: Optimizer | None = "default"):
        self.segments = _check_positive_int(segments, "segments")
        self.continuity_weight = float(continuity_weight)
        self.max_iter = _check_positive_int(max_iter, "max_iter")
        self.polish = LevenbergMarquardt() if polish == "default" else polish

    def stages(self):
        return [self] + ([] if self.polish is None else self.polish.stages())

    def run(self, obj, x0, state=None):
        from .shooting import ShootingObjective
        ms = ShootingObjective(obj, self.segments, self.continuity_weight)
        z0 = ms.initial(x0)
        out = LevenbergMarquardt(max_iter=self.max_iter).run(ms, z0)
        x = ms.project(out.x)
        return OptimizeOutcome(x, float(obj.best_cost), out.success,
                               f"multiple shooting ({self.segments} segments): {out.message}",
                               out.nit)


def default_optimizer(model) -> Optimizer:
    """The optimizer :func:`dynlearn.fit` uses when none is given (see the module notes)."""
    if not model.networks:
        return LevenbergMarquardt()
    return LevenbergMarquardt(max_iter=400)
