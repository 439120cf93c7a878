"""Adam on the loss gradient."""

from __future__ import annotations

import numpy as np

from dynlearn.objective.objective import Rejected
from dynlearn.optimizers.base import OptimizeOutcome, Optimizer, Status, check_positive_int

__all__ = ["Adam"]


class Adam(Optimizer):
    """Adam on the loss gradient (adjoint by default).

    Parameters
    ----------
    iterations : int
    lr : float
        Step size (in the optimizer's coordinates).
    betas : (float, float)
    eps : float
    gtol : float, optional
        Stop, converged, when the gradient's largest entry is at most ``gtol``. Default:
        no criterion, so a run always ends ``MAX_ITER`` after ``iterations`` steps (Adam
        is a first stage that brings a fit near a minimum; a later stage decides
        convergence).

    Notes
    -----
    A rejected point halves the step and retries from the last good point (up to 20
    times); the moments are only updated with good gradients. Bounds are kept by clipping.
    A run where every shortened step fails to solve ends ``STALLED``.
    """

    budget_option = "iterations"
    state_entries = {"x": "point", "m": "point", "v": "point", "k": "count", "stop": "stop"}

    def __init__(self, iterations: int = 200, lr: float = 0.01,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 gtol: float | None = None):
        self.iterations = check_positive_int(iterations, "iterations")
        self.lr, self.betas, self.eps = float(lr), tuple(betas), float(eps)
        self.gtol = None if gtol is None else float(gtol)

    def _small(self, g) -> bool:
        return self.gtol is not None and float(np.max(np.abs(g), initial=0.0)) <= self.gtol

    def run(self, obj, x0, state=None) -> OptimizeOutcome:
        """Minimise ``obj`` from ``x0``; ``state`` (see :meth:`Optimizer.run`) keeps the
        iterate, the moments, the step count and the stop, so a resumed run takes the same
        steps as an uninterrupted one (its first gradient, at the iterate, is computed
        again)."""
        lo, hi = obj.space.lower, obj.space.upper
        st = {} if state is None else state
        x = np.clip(np.asarray(st.get("x", x0), dtype=float), lo, hi)
        b1, b2 = self.betas
        m = np.asarray(st.get("m", np.zeros(x.size)), dtype=float)
        v = np.asarray(st.get("v", np.zeros(x.size)), dtype=float)
        k0 = int(st.get("k", 0))
        if st.get("stop"):      # the run had ended: its outcome, as it was
            x_best = obj.best_x if obj.best_x is not None else x
            return OptimizeOutcome(np.asarray(x_best), float(obj.best_cost),
                                   Status(st["stop"][0]), st["stop"][1], k0)
        try:
            c, g = obj.cost_and_grad(x)
        except Rejected as exc:
            return OptimizeOutcome(x, np.inf, Status.FAILED, f"the model cannot be solved at "
                                   f"the starting point: {exc}")
        obj.report(x, c)
        status = Status.MAX_ITER
        message = f"Adam: maximum number of iterations ({self.iterations}) reached"
        done = k0
        if self._small(g):
            status, message = Status.CONVERGED_GTOL, "Adam: converged: gradient below gtol"
        else:
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
                    return OptimizeOutcome(x, c, Status.STALLED, "Adam: stalled: every "
                                           "shortened step failed to solve; try a smaller lr",
                                           k)
                x, c, g = xn, cn, gn
                done = k
                stop = self._small(g)
                # the state at the end of the step, before it is reported (a checkpoint
                # written then can continue from it)
                st.update(x=x, m=m, v=v, k=k, stop=[Status.CONVERGED_GTOL.value,
                                                    "Adam: converged: gradient below gtol"]
                          if stop else None)
                obj.report(x, c, iteration=True)
                if stop:
                    status, message = (Status.CONVERGED_GTOL,
                                       "Adam: converged: gradient below gtol")
                    break
        x_best = obj.best_x if obj.best_x is not None else x
        return OptimizeOutcome(np.asarray(x_best), float(obj.best_cost), status, message,
                               done if status.converged else self.iterations)
