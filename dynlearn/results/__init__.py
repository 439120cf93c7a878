"""Fit results: parameters with uncertainties, covariance, diagnostics, prediction,
persistence and profile likelihoods."""

from dynlearn.results.diagnostics import Diagnostics, FitWarning
from dynlearn.results.likelihood_profile import Profile, profile
from dynlearn.results.result import FitResult, load_result

__all__ = ["Diagnostics", "FitResult", "FitWarning", "Profile", "load_result", "profile"]
