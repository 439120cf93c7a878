"""scipy's L-BFGS-B on the loss and its gradient."""

from __future__ import annotations

import numpy as np

from dynlearn.objective.objective import Rejected
from dynlearn.optimizers.base import (
    STALL_ADVICE,
    OptimizeOutcome,
    Optimizer,
    Status,
    check_positive_int,
)

__all__ = ["LBFGSB"]


def lbfgsb_status(scipy_status: int, scipy_message: str) -> Status:
    """The :class:`~dynlearn.optimizers.Status` of a finished L-BFGS-B run from scipy's
    message, or from its ``status`` (0 converged, 1 iteration or evaluation limit, 2 anything
    else) where the message does not say.

    The message names what ended the run; scipy's status does not always (a line search
    that fails after the evaluation budget is spent gets status 1 with an ABNORMAL
    message). ABNORMAL (the line search found no acceptable point: an inaccurate gradient or
    a noisy cost) and WARNING (rounding errors prevent progress) are stalls, never
    convergence; ERROR is a failure. Both message spellings are read (``"NORM OF PROJECTED
    GRADIENT"`` since scipy 1.15, ``"NORM_OF_PROJECTED_GRADIENT"`` before).
    """
    text = scipy_message.upper().replace("_", " ").strip()
    if text.startswith("CONVERGENCE"):
        # NORM OF PROJECTED GRADIENT <= PGTOL, or RELATIVE REDUCTION OF F <= FACTR*EPSMCH
        return Status.CONVERGED_GTOL if "GRADIENT" in text else Status.CONVERGED_FTOL
    if "PROJECTED GRADIENT IS SUFFICIENTLY SMALL" in text:
        return Status.CONVERGED_GTOL
    if text.startswith(("ABNORMAL", "WARNING")):
        return Status.STALLED
    if text.startswith("ERROR"):
        return Status.FAILED
    if text.startswith("STOP") and ("ITERATIONS" in text or "EVALUATIONS" in text):
        return Status.MAX_ITER
    return {0: Status.CONVERGED_GTOL, 1: Status.MAX_ITER}.get(scipy_status, Status.STALLED)


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

    A run ends ``CONVERGED_GTOL`` or ``CONVERGED_FTOL`` (scipy's CONVERGENCE), ``MAX_ITER``
    (the iteration or evaluation limit), ``STALLED`` (scipy's ABNORMAL termination: the line
    search found no lower point along the search direction, which is not convergence), or
    ``FAILED``; scipy's own message is the outcome's ``detail``.
    """

    state_entries = {"x": "point", "nit": "count", "nfev": "count"}

    def __init__(self, max_iter: int = 300, max_fun: int | None = None, ftol: float = 1e-12,
                 gtol: float = 1e-8, memory: int = 20):
        self.max_iter = check_positive_int(max_iter, "max_iter")
        self.max_fun = max_fun
        self.ftol, self.gtol, self.memory = ftol, gtol, memory

    def run(self, obj, x0, state=None) -> OptimizeOutcome:
        """Minimise ``obj`` from ``x0``.

        ``state`` (see :meth:`Optimizer.run`) keeps the iterate at the end of the last
        iteration and the iterations and evaluations spent. scipy's L-BFGS-B cannot take
        its memory (the stored correction pairs) back, so a resumed run restarts the memory
        at that iterate, with the budget that is left: an honest restart, whose path differs
        from an uninterrupted run's and which ends at the same minimum within the
        tolerances.
        """
        from scipy.optimize import minimize
        lo, hi = obj.space.lower, obj.space.upper
        st = {} if state is None else state
        x0 = np.clip(np.asarray(st.get("x", x0), dtype=float), lo, hi)
        nit0, nfev0 = int(st.get("nit", 0)), int(st.get("nfev", 0))
        max_fun = self.max_fun or 2 * self.max_iter
        last = {"g": np.zeros(x0.size), "best": np.inf, "nfev": 0}

        def fg(x):
            last["nfev"] += 1
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

        def cb(xk, *_):
            it[0] += 1
            st.update(x=np.array(xk, dtype=float), nit=nit0 + it[0], nfev=nfev0 + last["nfev"])
            obj.report(None, None, iteration=True)

        if nit0 >= self.max_iter or nfev0 >= max_fun:   # resumed with no budget left
            x = obj.best_x if obj.best_x is not None else x0
            return OptimizeOutcome(np.asarray(x), float(obj.best_cost), Status.MAX_ITER,
                                   "L-BFGS-B: the iteration or evaluation budget is spent",
                                   nit0)
        bounds = list(zip(np.where(np.isfinite(lo), lo, None), np.where(np.isfinite(hi), hi, None)))
        res = minimize(fg, x0, jac=True, method="L-BFGS-B", bounds=bounds, callback=cb,
                       options=dict(maxiter=self.max_iter - nit0, maxfun=max_fun - nfev0,
                                    ftol=self.ftol, gtol=self.gtol, maxcor=self.memory))
        x = obj.best_x if obj.best_x is not None else res.x
        detail = f"L-BFGS-B: {res.message}"
        status = lbfgsb_status(int(res.status), str(res.message))
        if not np.isfinite(obj.best_cost):
            status = Status.FAILED
        if status is Status.STALLED:
            message = (f"stalled: {detail} (the line search found no lower point: an "
                       f"inaccurate gradient or a noisy cost); try dl.LevenbergMarquardt(), "
                       f"{STALL_ADVICE}")
        elif status is Status.FAILED:
            message = f"failed: {detail}"
        else:
            message = detail
        return OptimizeOutcome(np.asarray(x), float(obj.best_cost), status, message,
                               nit0 + int(res.nit), detail=detail)
