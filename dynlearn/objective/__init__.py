"""Objectives: data bound to a model, losses, and the fit's residuals and gradients.

* :mod:`~dynlearn.objective.binding`: data matched to a model, initial-state strategies;
* :mod:`~dynlearn.objective.losses`: the loss objects (least squares, Gaussian, log);
* :mod:`~dynlearn.objective.objective`: the fit's objective and its front-ends
  :func:`loss`, :func:`loss_and_grad`, :class:`Objective`;
* :mod:`~dynlearn.objective.shooting`: the multiple-shooting problem built on it.
"""

from dynlearn.objective.binding import (
    BoundExperiment,
    Estimated,
    FirstRow,
    Given,
    InitialStates,
    PerState,
    bind_data,
    initial_states,
)
from dynlearn.objective.losses import (
    Gaussian,
    LeastSquares,
    LogLeastSquares,
    Loss,
    Rejected,
    loss_from_name,
)
from dynlearn.objective.objective import FitObjective, Objective, loss, loss_and_grad
from dynlearn.objective.shooting import ShootingObjective

__all__ = [
    "BoundExperiment", "Estimated", "FirstRow", "FitObjective", "Gaussian", "Given",
    "InitialStates", "LeastSquares", "LogLeastSquares", "Loss", "Objective", "PerState",
    "Rejected", "ShootingObjective", "bind_data", "initial_states", "loss", "loss_and_grad",
    "loss_from_name",
]
