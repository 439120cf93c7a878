"""Optimizers for :func:`dynlearn.fit`, as objects."""

from dynlearn.optimizers.optimizers import (
    LBFGSB,
    Adam,
    GaussNewton,
    LevenbergMarquardt,
    MultipleShooting,
    OptimizeOutcome,
    Optimizer,
    Staged,
)

__all__ = ["LBFGSB", "Adam", "GaussNewton", "LevenbergMarquardt", "MultipleShooting",
           "OptimizeOutcome", "Optimizer", "Staged"]
