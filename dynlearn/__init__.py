"""dynlearn: hybrid dynamics models, symbolic physics plus neural networks, on scipy.

The public API, learnable from one page (see README.md):

* describe: :class:`HybridModel`, :class:`MLP`, :class:`Network`, :class:`Parameter`
* simulate: :func:`simulate`
* data: :class:`Dataset`, :class:`Experiment`, :class:`InputSignal`
* gradients: :func:`loss`, :func:`loss_and_grad` with :class:`Adjoint`,
  :class:`ForwardSensitivity` or :class:`FiniteDifference`
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Every public name is imported on first use (PEP 562), so that ``import dynlearn`` costs
# almost nothing and a script pays only for the parts it touches: models and simulation
# stand on numpy, scipy and sympy; Dask, matplotlib and the report code are imported only
# by what needs them. ``dir(dynlearn)``, ``from dynlearn import X`` and
# ``from dynlearn import *`` see every name as before. benchmarks/import_time.py measures
# the cost against the stack underneath.
_MODULES: dict[str, tuple[str, ...]] = {
    "dynlearn.analysis": ("Bootstrap", "Ensemble", "bootstrap", "ensemble"),
    "dynlearn.core.model": ("HybridModel",),
    "dynlearn.core.neural": ("MLP", "Network"),
    "dynlearn.core.parameters": ("Parameter",),
    "dynlearn.data.dataset": ("Dataset", "Experiment"),
    "dynlearn.data.signals": ("InputSignal",),
    "dynlearn.discovery": (
        "STLSQ", "DiscoveryError", "DiscoveryWarning", "Library", "Recovery",
        "compare_extrapolation", "exponential_library", "physics_only", "polynomial_library",
        "recover", "sindy_baseline", "sparse_regression", "stlsq", "trigonometric_library"),
    "dynlearn.distributed": ("Parallel", "TaskError", "parallel"),
    "dynlearn.errors": (
        "ClusterError", "DataError", "DataTypeError", "DataWarning", "DynlearnError",
        "FitInterrupted",
        "MissingDependencyError", "ModelError", "ModelTypeError", "OptionError",
        "OptionTypeError", "ParameterError", "ParameterTypeError", "SolveError"),
    "dynlearn.fitting.fitter": ("fit",),
    "dynlearn.objective.objective": ("Objective", "loss", "loss_and_grad"),
    "dynlearn.optimizers": ("LBFGSB", "Adam", "GaussNewton", "LevenbergMarquardt",
                            "MultipleShooting", "Optimizer", "Restarts", "Staged"),
    "dynlearn.results.diagnostics": ("FitWarning",),
    "dynlearn.results.likelihood_profile": ("Profile", "profile"),
    "dynlearn.results.result": ("FitResult", "load_result"),
    "dynlearn.sensitivity": ("Adjoint", "FiniteDifference", "ForwardSensitivity"),
    "dynlearn.solve": ("Solution", "simulate"),
    "dynlearn.version": ("__version__",),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str):
    """Import a public name on first use (PEP 562) and keep it as a module attribute."""
    if name == "petab":      # the optional PEtab import, a sub-package: dl.petab.load(...)
        return importlib.import_module("dynlearn.petab")
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'dynlearn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


if TYPE_CHECKING:     # for type checkers and IDEs: the names as if imported eagerly
    from dynlearn.analysis import Bootstrap, Ensemble, bootstrap, ensemble
    from dynlearn.core.model import HybridModel
    from dynlearn.core.neural import MLP, Network
    from dynlearn.core.parameters import Parameter
    from dynlearn.data.dataset import Dataset, Experiment
    from dynlearn.data.signals import InputSignal
    from dynlearn.discovery import (
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
    from dynlearn.distributed import Parallel, TaskError, parallel
    from dynlearn.errors import (
        ClusterError,
        DataError,
        DataTypeError,
        DataWarning,
        DynlearnError,
        FitInterrupted,
        MissingDependencyError,
        ModelError,
        ModelTypeError,
        OptionError,
        OptionTypeError,
        ParameterError,
        ParameterTypeError,
        SolveError,
    )
    from dynlearn.fitting.fitter import fit
    from dynlearn.objective.objective import Objective, loss, loss_and_grad
    from dynlearn.optimizers import (
        LBFGSB,
        Adam,
        GaussNewton,
        LevenbergMarquardt,
        MultipleShooting,
        Optimizer,
        Restarts,
        Staged,
    )
    from dynlearn.results.diagnostics import FitWarning
    from dynlearn.results.likelihood_profile import Profile, profile
    from dynlearn.results.result import FitResult, load_result
    from dynlearn.sensitivity import Adjoint, FiniteDifference, ForwardSensitivity
    from dynlearn.solve import Solution, simulate
    from dynlearn.version import __version__

__all__ = [
    "__version__",
    "Adjoint", "DataError", "Dataset", "DynlearnError", "Experiment", "FiniteDifference",
    "ForwardSensitivity", "HybridModel", "InputSignal", "MLP", "ModelError", "Network",
    "Objective", "OptionError", "Parameter", "ParameterError", "Solution", "SolveError",
    "loss", "loss_and_grad", "simulate",
    # the wrong-type variants of the errors (see dynlearn.errors)
    "DataTypeError", "MissingDependencyError", "ModelTypeError", "OptionTypeError",
    "ParameterTypeError",
    # fitting (issue 3)
    "Adam", "FitResult", "GaussNewton", "LBFGSB", "LevenbergMarquardt", "MultipleShooting",
    "Optimizer", "Profile", "Staged", "fit", "load_result", "profile",
    # fit diagnostics (issue 11)
    "FitWarning",
    # equations out: symbolic recovery of learned terms (issue 4)
    "DiscoveryError", "DiscoveryWarning", "Library", "Recovery", "STLSQ",
    "compare_extrapolation", "exponential_library", "physics_only", "polynomial_library",
    "recover", "sindy_baseline", "sparse_regression", "stlsq", "trigonometric_library",
    # scale-out on Dask distributed (issue 6); dynlearn.distributed.dask imports dask only when used
    "Bootstrap", "Ensemble", "Parallel", "TaskError", "bootstrap", "ensemble", "parallel",
    # interrupted fits and lost clusters (issue 12)
    "ClusterError", "FitInterrupted",
    # data read but not used (issue 11) and the default training of networks (issue 13)
    "DataWarning", "Restarts",
]
