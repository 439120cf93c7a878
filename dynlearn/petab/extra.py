"""The optional libraries of ``dynlearn[petab]``, imported where they are first needed."""

from __future__ import annotations

import importlib
from types import ModuleType

from dynlearn.errors import MissingDependencyError

__all__ = ["require"]


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (one of the ``petab`` extra's libraries), or raise a
    :class:`~dynlearn.errors.MissingDependencyError` that says what needs it and how to
    install it.

    Parameters
    ----------
    module : str
        The module to import (``"libsbml"``, ``"petab.v1"``, ``"h5py"``, ...).
    purpose : str
        What needs it, for the message (``"reading SBML"``).

    Returns
    -------
    module
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:   # pragma: no cover - the tests skip without the extra
        raise MissingDependencyError(
            f"{purpose} needs {module.split('.')[0]}: pip install 'dynlearn[petab]'") from exc
