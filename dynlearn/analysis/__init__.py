"""Analyses built from many fits: bootstrap and ensembles (profile likelihoods, refits of one
result, live in :mod:`dynlearn.results.likelihood_profile`)."""

from dynlearn.analysis.bootstrap import Bootstrap, bootstrap
from dynlearn.analysis.ensemble import Ensemble, ensemble

__all__ = ["Bootstrap", "Ensemble", "bootstrap", "ensemble"]
