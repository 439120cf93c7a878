"""Gradient methods: forward sensitivities, adjoints (continuous and discrete), finite
differences. See :mod:`dynlearn.sensitivity.adjoint` for when to use which."""

from dynlearn.sensitivity.adjoint import Adjoint
from dynlearn.sensitivity.base import Problem, Sensitivity
from dynlearn.sensitivity.finite_difference import FiniteDifference
from dynlearn.sensitivity.forward import ForwardSensitivity

__all__ = ["Adjoint", "FiniteDifference", "ForwardSensitivity", "Problem", "Sensitivity"]
