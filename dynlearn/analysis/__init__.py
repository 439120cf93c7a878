"""Analyses built from refits: profile likelihoods, bootstrap and ensembles."""

from dynlearn.analysis.bootstrap import Bootstrap, bootstrap
from dynlearn.analysis.ensemble import Ensemble, ensemble
from dynlearn.analysis.likelihood_profile import Profile, profile

__all__ = ["Bootstrap", "Ensemble", "Profile", "bootstrap", "ensemble", "profile"]
