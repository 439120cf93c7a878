"""Optimizers for :func:`dynlearn.fit`, as objects (the diffrax/optax style).

Every optimizer works on the fit's objective in the optimizer's coordinates ``x`` (log
for log-transformed parameters, see :class:`~dynlearn.core.parameters.ParameterSpace`) and
respects its box bounds. A trial point where the model cannot be solved raises
:class:`~dynlearn.objective.objective.Rejected`; each optimizer rejects such a point and
backs off (a larger damping, a shorter step) instead of stopping.

Every run ends with one :class:`Status` (converged by a named criterion, stalled, out of
iterations, ...) in its :class:`OptimizeOutcome`; only convergence is ``success``.

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
* :class:`Restarts`: runs another optimizer again from new network weights while its fit
  ends far above the noise floor estimated from the data (the default for networks).

:func:`default_optimizer` is what :func:`dynlearn.fit` uses when given none;
:func:`optimizer_from_name` builds one from its name in a model file.

Modules: ``base`` (the interface, :class:`Status`, :class:`OptimizeOutcome`), ``steps`` (the
damped least-squares step solvers), one module per optimizer, ``factory``.
"""

from dynlearn.optimizers.adam import Adam
from dynlearn.optimizers.base import OptimizeOutcome, Optimizer, Status
from dynlearn.optimizers.factory import OPTIMIZERS, default_optimizer, optimizer_from_name
from dynlearn.optimizers.gauss_newton import GaussNewton
from dynlearn.optimizers.lbfgsb import LBFGSB
from dynlearn.optimizers.levenberg_marquardt import LevenbergMarquardt
from dynlearn.optimizers.multiple_shooting import MultipleShooting
from dynlearn.optimizers.restarts import Restarts
from dynlearn.optimizers.staged import Staged

__all__ = ["LBFGSB", "OPTIMIZERS", "Adam", "GaussNewton", "LevenbergMarquardt",
           "MultipleShooting", "OptimizeOutcome", "Optimizer", "Restarts", "Staged", "Status",
           "default_optimizer", "optimizer_from_name"]
