"""Gauss-Newton with a backtracking line search."""

from __future__ import annotations

import numpy as np

from dynlearn.optimizers.base import (
    STALL_ADVICE,
    OptimizeOutcome,
    Status,
    begin_least_squares,
    small_step,
    xtol_outcome,
)
from dynlearn.optimizers.levenberg_marquardt import LevenbergMarquardt
from dynlearn.optimizers.steps import step_solver

__all__ = ["GaussNewton"]


class GaussNewton(LevenbergMarquardt):
    """Gauss-Newton steps with a backtracking line search (a tiny fixed damping keeps
    the step defined when the Jacobian is rank deficient).

    ``jacobian_at_trial``: the full step may be evaluated with its Jacobian (see
    :class:`~dynlearn.optimizers.LevenbergMarquardt`).

    A run ends ``CONVERGED_FTOL`` or ``CONVERGED_XTOL`` after an accepted step, or
    ``CONVERGED_XTOL`` when no step along the direction lowers the cost and the shortest
    step tried is below ``xtol``; ``STALLED`` when it is still above (the direction is not
    one of descent: an inaccurate Jacobian or a noisy cost), when a step passed the ``xtol``
    test only through runaway coordinates (as in
    :class:`~dynlearn.optimizers.LevenbergMarquardt`), or when the Jacobian cannot be
    computed at the next point; ``MAX_ITER``; ``FAILED`` when the start cannot be solved.
    """

    state_entries = {"x": "point", "cost": "number", "it": "count", "policy": "counts",
                     "stop": "stop"}

    def __init__(self, max_iter: int = 100, ftol: float = 1e-10, xtol: float = 1e-10,
                 gtol: float = 1e-10, jacobian_at_trial="auto"):
        super().__init__(max_iter, ftol, xtol, gtol, damping=1e-12,
                         jacobian_at_trial=jacobian_at_trial)
        self.patience = None

    def run(self, obj, x0, state=None) -> OptimizeOutcome:
        """Minimise ``obj`` from ``x0``; ``state`` (see :meth:`Optimizer.run`) keeps the
        iterate, its cost, the iteration count, the trial policy's counts and the stop."""
        lo, hi = obj.space.lower, obj.space.upper
        st = {} if state is None else state
        start = begin_least_squares(self.jacobian_at_trial, obj, x0, st)
        if isinstance(start, OptimizeOutcome):
            return start
        policy, x, r, A, b, cost = start
        it = int(st["it"]) if "x" in st else 0
        status, message = Status.MAX_ITER, f"maximum number of iterations ({self.max_iter}) reached"
        while it < self.max_iter:
            it += 1
            d = np.linalg.norm(A, axis=0)
            ds = np.where(d > 0, d, 1.0)
            steps = step_solver(obj, A, b, ds)
            full = steps.step(self.damping * steps.smax2)
            alpha, accepted = 1.0, False
            for tries in range(1, 31):
                xn = np.clip(x + alpha * full, lo, hi)
                cn = policy.trial(obj, xn, tries == 1 and policy.choose())
                if tries == 1:
                    policy.count(cn < cost)
                if cn < cost:
                    accepted = True
                    break
                alpha *= 0.5
            if not accepted:
                if small_step(xn - x, x, self.xtol):
                    status, message = xtol_outcome(
                        xn - x, x, self.xtol, "converged: no step along the Gauss-Newton "
                        "direction reduces the cost (steps down to below xtol tried)")
                else:
                    status, message = Status.STALLED, (
                        "stalled: no step along the Gauss-Newton direction reduces the cost, "
                        "the shortest tried still above xtol (not a direction of descent); "
                        "try dl.LevenbergMarquardt(), " + STALL_ADVICE)
                break
            at = policy.system(obj, xn)
            if at is None:        # solved, but not with sensitivities: stop at x
                status, message = Status.STALLED, (
                    "stalled: the Jacobian cannot be computed at the next point; try "
                    "dl.LevenbergMarquardt(), which backs off from such points")
                break
            x_old, cost_old = x, cost
            x, (r, A, b) = xn, at
            cost = float(r @ r)
            stop = None
            if cost_old - cost <= self.ftol * cost_old:
                stop = Status.CONVERGED_FTOL, "converged: relative cost reduction below ftol"
            elif small_step(x - x_old, x, self.xtol):
                stop = xtol_outcome(x - x_old, x, self.xtol, "converged: relative step below xtol")
            st.update(x=x, cost=cost, it=it, policy=policy.counts,
                      stop=None if stop is None else [stop[0].value, stop[1]])
            obj.report(x, cost, iteration=True)
            if stop is not None:
                status, message = stop
                break
        return OptimizeOutcome(x, cost, status, message, it)
