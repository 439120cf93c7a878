"""Equations out: sparse regression of learned terms onto sympy candidate libraries."""

from dynlearn.discovery.recovery import (
    STLSQ,
    DiscoveryError,
    DiscoveryWarning,
    Library,
    Recovery,
    compare_extrapolation,
    exponential_library,
    physics_only,
    polynomial_library,
    recover,
    sindy_baseline,
    sparse_regression,
    stlsq,
    trigonometric_library,
)

__all__ = ["STLSQ", "DiscoveryError", "DiscoveryWarning", "Library", "Recovery",
           "compare_extrapolation", "exponential_library", "physics_only", "polynomial_library",
           "recover", "sindy_baseline", "sparse_regression", "stlsq", "trigonometric_library"]
