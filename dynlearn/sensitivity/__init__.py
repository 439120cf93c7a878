"""Gradient methods: forward sensitivities, adjoints (continuous and discrete), finite
differences. See :mod:`dynlearn.sensitivity.adjoint` for when to use which."""

from .adjoint import Adjoint
from .base import Problem, Sensitivity
from .finite_difference import FiniteDifference
from .forward import ForwardSensitivity

__all__ = ["Adjoint", "FiniteDifference", "ForwardSensitivity", "Problem", "Sensitivity"]
