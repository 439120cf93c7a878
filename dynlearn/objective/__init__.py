"""Objectives: data bound to a model, losses, and the fit's residuals and gradients."""

from dynlearn.objective.objective import Objective, loss, loss_and_grad

__all__ = ["Objective", "loss", "loss_and_grad"]
