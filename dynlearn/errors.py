"""Exceptions raised by dynlearn.

Every error the package raises on purpose derives from :class:`DynlearnError`, so a caller
can catch them all in one place. The subclasses also derive from the matching built-in
(``ValueError``, ``TypeError``, ``RuntimeError``) so generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "DynlearnError",
    "ModelError",
    "DataError",
    "ParameterError",
    "OptionError",
    "SolveError",
]


class DynlearnError(Exception):
    """Base class of every exception raised by dynlearn."""


class ModelError(DynlearnError, ValueError):
    """A model description is inconsistent (unknown symbol, missing equation, bad network)."""


class DataError(DynlearnError, ValueError):
    """Measurements are malformed (missing columns, NaN/inf, non-increasing times, ...)."""


class ParameterError(DynlearnError, ValueError):
    """A parameter value, bound, transform or parameter vector is invalid."""


class OptionError(DynlearnError, TypeError):
    """An unknown keyword argument or an invalid option object was passed."""


class SolveError(DynlearnError, RuntimeError):
    """The ODE solver failed; carries scipy's ``status`` and ``message``.

    Attributes
    ----------
    status : int
        The ``solve_ivp`` status (-1: integration step failed).
    message : str
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
