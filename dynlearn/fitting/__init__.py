"""Fitting: :func:`fit`, starts, progress tracking and checkpoints."""

from dynlearn.fitting.fitter import fit

__all__ = ["fit"]
