"""Exceptions raised by dynlearn.

Every error the package raises on purpose derives from :class:`DynlearnError`, so a caller
can catch them all in one place, and is defined here. Each also derives from the matching
built-in, so generic handlers keep working. The scheme:

* **What is wrong** is the class: the model (:class:`ModelError`), the data
  (:class:`DataError`), a parameter (:class:`ParameterError`), an option or setting
  (:class:`OptionError`; :class:`UsageError` for the command line), sparse regression
  (:class:`DiscoveryError`).
* **Bad value or wrong type**: those classes are ``ValueError``\\ s (a value out of its
  range or choices, malformed data, an inconsistent model). An argument of the wrong
  *type* (a list where a DataFrame is expected, an unknown keyword argument) raises the
  class's ``...TypeError`` subclass, which is also a ``TypeError`` (and, being a subclass,
  still caught by ``except ModelError`` and, as before, by ``except ValueError``).
* **A computation failed** (``RuntimeError``): the ODE solver (:class:`SolveError`), a task
  on a Dask worker (:class:`TaskError`).
* **The environment**: an optional dependency is missing (:class:`MissingDependencyError`,
  an ``ImportError``).

Control-flow signals that never reach a user (a rejected trial point, a stopped fit) are
not errors and live with the code that raises and catches them. One signal does reach the
user and lives here: :class:`FitInterrupted`, a ``KeyboardInterrupt`` (not a
:class:`DynlearnError`, so that no ``except Exception`` swallows a Ctrl-C).
"""

from __future__ import annotations

__all__ = [
    "ClusterError",
    "DataError",
    "DataTypeError",
    "DataWarning",
    "DiscoveryError",
    "DynlearnError",
    "FitInterrupted",
    "MissingDependencyError",
    "ModelError",
    "ModelTypeError",
    "OptionError",
    "OptionTypeError",
    "ParameterError",
    "ParameterTypeError",
    "PetabError",
    "SolveError",
    "TaskError",
    "TimeLimitError",
    "UsageError",
]


class DynlearnError(Exception):
    """Base class of every exception raised by dynlearn."""


# --- bad values (ValueError) and their wrong-type variants (also TypeError) ---------------------
class ModelError(DynlearnError, ValueError):
    """A model description is inconsistent (unknown symbol, missing equation, bad network)."""


class ModelTypeError(ModelError, TypeError):
    """A part of a model given as the wrong type (states not a list, an equation that is not
    an expression)."""


class DataError(DynlearnError, ValueError):
    """Measurements are malformed (missing columns, NaN/inf, non-increasing times, ...)."""


class DataTypeError(DataError, TypeError):
    """Data given as the wrong type (not a DataFrame or Dataset)."""


class DataWarning(UserWarning):
    """Data that is read but not used: a column that matches no observable, input or
    noise-level column of the model (the message names it and the closest model name).
    A warning, not a :class:`DynlearnError`: the fit goes on without that column."""


class ParameterError(DynlearnError, ValueError):
    """A parameter value, bound, transform or parameter vector is invalid."""


class ParameterTypeError(ParameterError, TypeError):
    """A parameter given as the wrong type (not a number, dict or Parameter)."""


class OptionError(DynlearnError, ValueError):
    """An option or setting has an invalid value (an unknown method name, a step count that
    is not positive, a malformed time grid)."""


class OptionTypeError(OptionError, TypeError):
    """An unknown keyword argument, or an option object of the wrong type."""


class UsageError(OptionError):
    """A bad command line (unknown option, missing argument)."""


class DiscoveryError(DynlearnError, ValueError):
    """Sparse regression cannot run: too few samples, non-finite library values, ..."""


class PetabError(ModelError):
    """A PEtab problem or its SBML model that cannot be imported: an unsupported construct
    (named with its id) or inconsistent tables."""


# --- failed computations (RuntimeError) -----------------------------------------------------
class SolveError(DynlearnError, RuntimeError):
    """The ODE solver failed; carries scipy's ``status`` and ``message``.

    Attributes
    ----------
    status : int
        The ``solve_ivp`` status (-1: integration step failed).
    solver_message : str
        scipy's message, e.g. "Required step size is less than spacing between numbers."
    t : float or None
        Time reached before the failure, when known.
    """

    def __init__(self, message: str, status: int = -1, t: float | None = None,
                 solver_message: str = ""):
        super().__init__(message)
        self.status = status
        self.t = t
        self.solver_message = solver_message


class TimeLimitError(DynlearnError, RuntimeError):
    """A computation passed the wall-time deadline it was given (a fit's ``max_time``,
    checked inside every solve: see :func:`dynlearn.solve.deadline`).

    Not a :class:`SolveError`: the trial point is not at fault, so a fit does not reject
    it but stops, keeping its best point (status ``max_time``).

    Attributes
    ----------
    t : float or None
        The solve's time reached when the deadline passed.
    """

    def __init__(self, message: str, t: float | None = None):
        super().__init__(message)
        self.t = t

    def __reduce__(self):
        return (type(self), (str(self), self.t))


class TaskError(DynlearnError, RuntimeError):
    """A task failed on a Dask worker.

    Attributes
    ----------
    where : str
        What failed, e.g. ``"experiment 'run3'"``, ``"start 2"``, ``"bootstrap replicate 17"``.
    worker : str
        Address of the worker ("" when unknown).
    remote_traceback : str
        The traceback on the worker.
    """

    def __init__(self, message: str, where: str = "", worker: str = "",
                 remote_traceback: str = ""):
        super().__init__(message)
        self.where, self.worker, self.remote_traceback = where, worker, remote_traceback

    def __reduce__(self):  # keep the attributes when the error travels back from a worker
        return (type(self), (str(self), self.where, self.worker, self.remote_traceback))


class ClusterError(DynlearnError, RuntimeError):
    """The Dask cluster can no longer be reached: its scheduler died or the connection to it
    was lost.

    Attributes
    ----------
    address : str
        The scheduler's address ("" when unknown).
    result : FitResult or None
        For a multi-start fit, the result of the starts that had finished (also kept in the
        fit's checkpoint, when it has one); ``None`` when none had.
    """

    def __init__(self, message: str, address: str = "", result=None):
        super().__init__(message)
        self.address, self.result = address, result

    def __reduce__(self):
        return (type(self), (str(self), self.address, None))


# --- Ctrl-C -----------------------------------------------------------------------------------
class FitInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a fit: raised by :func:`dynlearn.fit` after it wrote its checkpoint.

    The one exception here that is not a :class:`DynlearnError`: it is a
    ``KeyboardInterrupt``, so a script or a loop of fits stops as on any Ctrl-C, and no
    ``except Exception`` swallows it. Uncaught, it ends a Python script with status 1, not
    by SIGINT as an exact ``KeyboardInterrupt`` does (a CPython rule), so a shell loop over
    such scripts goes on: ``except FitInterrupted: raise KeyboardInterrupt from None`` at
    the script's top level gives the SIGINT exit (docs/reliability.md, Known limits).

    Attributes
    ----------
    result : FitResult or None
        The fit at its best point so far (status ``interrupted``); ``None`` when no point
        had been evaluated.
    checkpoint : str or None
        The checkpoint written (continue with ``resume=True``), if the fit had one.
    """

    def __init__(self, message: str = "interrupted", result=None, checkpoint=None):
        super().__init__(message)
        self.result, self.checkpoint = result, checkpoint


# --- the environment --------------------------------------------------------------------------
class MissingDependencyError(DynlearnError, ImportError):
    """An optional dependency (matplotlib, dask) is not installed."""
