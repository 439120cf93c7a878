"""dynlearn: hybrid dynamics models, symbolic physics plus neural networks, on scipy.

The public API, learnable from one page (see README.md):

* describe: :class:`HybridModel`, :class:`MLP`, :class:`Network`, :class:`Parameter`
* simulate: :func:`simulate`
* data: :class:`Dataset`, :class:`Experiment`, :class:`InputSignal`
* gradients: :func:`loss`, :func:`loss_and_grad` with :class:`Adjoint`,
  :class:`ForwardSensitivity` or :class:`FiniteDifference`
"""

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
]
