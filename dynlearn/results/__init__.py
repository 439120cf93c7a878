"""Fit results: parameters with uncertainties, covariance, prediction and persistence."""

from dynlearn.results.result import FitResult, load_result

__all__ = ["FitResult", "load_result"]
