"""Levenberg-Marquardt on the residual Jacobian: the default optimizer for models without
networks, and the final stage for networks."""

from __future__ import annotations

import numpy as np

from dynlearn.errors import OptionError
from dynlearn.optimizers.base import (
    STALL_ADVICE,
    OptimizeOutcome,
    Optimizer,
    Status,
    begin_least_squares,
    check_positive_int,
    small_step,
    xtol_outcome,
)
from dynlearn.optimizers.steps import step_solver

__all__ = ["LevenbergMarquardt"]

#: the relative damping beyond which no step is tried any more: the step is then far below
#: any step the gradient asks for, and the trials failed for another reason than its length
MAX_DAMPING = 1e16


class LevenbergMarquardt(Optimizer):
    """Levenberg-Marquardt on the residual Jacobian, with bounds by projection.

    Parameters
    ----------
    max_iter : int
        Maximum number of iterations (accepted steps).
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
    patience : int, optional
        Stop when the cost fell by less than a fraction ``ptol`` over the last
        ``patience`` iterations: for over-parameterised fits (networks) that keep creeping
        below the noise level, where the classical tolerances never trigger.
    ptol : float
    jacobian_at_trial : {"auto", True, False}
        Evaluate the first trial point of an iteration together with its Jacobian while
        more than half of the first trials are accepted: an accepted step then costs one
        solve with sensitivities instead of a forward solve followed by one (LM fits 1.4-1.8x
        faster on the benchmark problems). ``"auto"`` (default): only where Jacobians are
        cheap against solves (the discrete Jacobians of RK45/RK23). The iterates are the
        same either way (the two solves' costs differ by rounding, which could only tip an
        acceptance decided within rounding).

    Notes
    -----
    Columns are scaled by their norms (kept at the running maximum, as MINPACK does), so
    the method is invariant to parameter units. One SVD of the scaled Jacobian per
    iteration gives the step for any damping, so a rejected trial point costs a solve
    and no linear algebra. Damping follows Nielsen's rule: after a step with
    gain ratio ``rho`` the damping is multiplied by ``max(1/3, 1 - (2 rho - 1)^3)``; after a
    rejected step (including one where the solver fails) by 2, 4, 8, ...

    How a run ends (:class:`~dynlearn.optimizers.Status`): ``CONVERGED_GTOL``,
    ``CONVERGED_FTOL`` (``ftol``, or ``ptol`` over ``patience`` iterations),
    ``CONVERGED_XTOL`` (an accepted step, or the largest step that no longer lowers the
    cost, below ``xtol``); ``STALLED`` when the damping grows past 1e16 times the scale of
    the Jacobian with every trial rejected while the step is still above ``xtol`` (the
    gradient promises a decrease that the cost does not show: an inaccurate Jacobian or a
    noisy cost), or when the step passed the ``xtol`` test only because a few runaway
    coordinates make ``|x|`` huge (see :func:`~dynlearn.optimizers.base.xtol_outcome`);
    ``MAX_ITER``; ``FAILED`` when the start cannot be solved.

    This works when there are fewer residuals than parameters too (networks), where
    MINPACK's ``lm`` in ``scipy.optimize.least_squares`` refuses to run.

    References
    ----------
    .. [1] J. J. More, "The Levenberg-Marquardt algorithm: implementation and theory",
           Numerical Analysis, Lecture Notes in Mathematics 630 (1978).
    .. [2] H. B. Nielsen, "Damping parameter in Marquardt's method", IMM-REP-1999-05, DTU.
    """

    least_squares = True
    state_entries = {"x": "point", "cost": "number", "d": "point", "lam_rel": "number",
                     "nu": "number", "it": "count", "costs": "numbers", "policy": "counts",
                     "stop": "stop"}

    def __init__(self, max_iter: int = 200, ftol: float = 1e-10, xtol: float = 1e-10,
                 gtol: float = 1e-10, damping: float = 1.0, patience: int | None = None,
                 ptol: float = 0.05, jacobian_at_trial="auto"):
        self.max_iter = check_positive_int(max_iter, "max_iter")
        if jacobian_at_trial not in ("auto", True, False):
            raise OptionError(f"jacobian_at_trial={jacobian_at_trial!r}: use 'auto', True or "
                              "False")
        self.jacobian_at_trial = jacobian_at_trial
        self.ftol, self.xtol, self.gtol, self.damping = ftol, xtol, gtol, damping
        self.patience = None if patience is None else check_positive_int(patience, "patience")
        self.ptol = float(ptol)

    def run(self, obj, x0, state=None) -> OptimizeOutcome:
        """Minimise ``obj`` from ``x0`` (see the class notes for how a run ends).

        ``state`` (see :meth:`Optimizer.run`) keeps the iterate, its cost, the damping and
        its growth factor, the column scales, the iteration count, the costs the
        ``patience`` test looks back on, the trial policy's counts and, once decided, the
        stop: a resumed run takes the same steps as an uninterrupted one (its first
        Jacobian, at the iterate, is computed again).
        """
        lo, hi = obj.space.lower, obj.space.upper
        st = {} if state is None else state
        start = begin_least_squares(self.jacobian_at_trial, obj, x0, st)
        if isinstance(start, OptimizeOutcome):
            return start
        policy, x, r, A, b, cost = start
        if "x" in st:           # resumed at the end of an iteration
            d = np.asarray(st["d"], dtype=float)
            lam_rel, nu, it = float(st["lam_rel"]), float(st["nu"]), int(st["it"])
            costs = [float(c) for c in st["costs"]]
        else:
            d = np.zeros(x.size)
            lam_rel, nu = self.damping, 2.0
            costs = [cost]
            it = 0
        status, message = Status.MAX_ITER, f"maximum number of iterations ({self.max_iter}) reached"
        while it < self.max_iter:
            it += 1
            d = np.maximum(d, np.linalg.norm(A, axis=0))
            ds = np.where(d > 0, d, 1.0)
            steps = step_solver(obj, A, b, ds)
            smax2, g = steps.smax2, steps.g
            bb = float(b @ b)     # = cost when A, b are J, r
            if np.max(np.abs(g)) <= self.gtol * max(cost, 1e-300) ** 0.5 * smax2 ** 0.5:
                status, message = Status.CONVERGED_GTOL, "converged: gradient below gtol"
                break
            accepted, tiny, tries = False, False, 0
            while True:
                tries += 1
                with_jac = tries == 1 and policy.choose()
                lam = lam_rel * smax2
                step = steps.step(lam)
                xn = np.clip(x + step, lo, hi)
                step = xn - x
                if small_step(step, x, self.xtol):
                    tiny = True
                    break
                pred = bb - float(np.sum((b + A @ step) ** 2))
                cn = policy.trial(obj, xn, with_jac)
                rho = (cost - cn) / pred if pred > 0 and np.isfinite(cn) else -1.0
                if tries == 1:
                    policy.count(rho > 1e-4)
                if rho > 1e-4:
                    accepted = True
                    break
                lam_rel *= nu
                nu *= 2.0
                if lam_rel > MAX_DAMPING:
                    break
            if not accepted:
                if tiny:
                    status, message = xtol_outcome(step, x, self.xtol, "converged: no step "
                                                   "reduces the cost (relative step below xtol)")
                else:
                    # the damping blew up with the step still above xtol: not a minimum
                    # by any criterion, the model's decrease was never realised
                    status, message = Status.STALLED, (
                        f"stalled: no step reduces the cost although the damping grew past "
                        f"{MAX_DAMPING:.0e} with the step still above xtol (the Jacobian "
                        f"promises a decrease the cost does not show); try {STALL_ADVICE}")
                break
            at = policy.system(obj, xn)
            if at is None:        # solved, but not with sensitivities: a failed trial
                lam_rel *= nu
                nu *= 2.0
                continue
            x_old, cost_old = x, cost
            x, (r, A, b) = xn, at
            cost = float(r @ r)
            # the damping follows the residuals of the Jacobian's solve, whichever solve
            # decided the acceptance: the iterates do not depend on the policy's choices
            rho = (cost_old - cost) / pred
            lam_rel *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            lam_rel = max(lam_rel, 1e-15)
            nu = 2.0
            stop = None
            if (cost_old - cost) <= self.ftol * cost_old and pred <= self.ftol * cost_old * 2:
                stop = Status.CONVERGED_FTOL, "converged: relative cost reduction below ftol"
            elif small_step(x - x_old, x, self.xtol):
                stop = xtol_outcome(x - x_old, x, self.xtol, "converged: relative step below xtol")
            else:
                costs.append(cost)
                if self.patience and len(costs) > self.patience and \
                        costs[-1] > (1.0 - self.ptol) * costs[-1 - self.patience]:
                    stop = Status.CONVERGED_FTOL, (
                        f"converged: cost fell by less than {self.ptol:.0%} in "
                        f"{self.patience} iterations")
            # the state at the end of the iteration, before it is reported (a checkpoint
            # written then can continue from it)
            st.update(x=x, cost=cost, d=d, lam_rel=lam_rel, nu=nu, it=it,
                      costs=costs[-(self.patience or 0) - 1:],
                      policy=policy.counts,
                      stop=None if stop is None else [stop[0].value, stop[1]])
            obj.report(x, cost, iteration=True)
            if stop is not None:
                status, message = stop
                break
        return OptimizeOutcome(x, cost, status, message, it)
