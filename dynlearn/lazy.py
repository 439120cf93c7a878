"""Imports on first use, so that ``import dynlearn`` and a model's simulation do not pay
for libraries they do not touch (pandas, matplotlib, Dask).

``dynlearn/__init__.py`` imports its public names on first use (PEP 562); modules that need
a heavy library only in some of their functions name it with :class:`LazyModule`, which
imports it at the first attribute access, and test an object's type with
:func:`is_instance`, which never imports. ``benchmarks/import_time.py`` measures the start-up
cost; ``tests/test_startup.py`` checks what ``import dynlearn`` imports.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

__all__ = ["LazyModule", "is_instance"]


class LazyModule:
    """A module imported at the first access to one of its attributes.

    Parameters
    ----------
    name : str
        The module's import name, e.g. ``"pandas"``.

    Examples
    --------
    >>> pd = LazyModule("pandas")     # nothing imported yet
    >>> pd.DataFrame({"t": [0.0]}).shape
    (1, 1)
    """

    __slots__ = ("_module", "_name")

    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str):
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attr)

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not imported yet"
        return f"<LazyModule {self._name!r} ({state})>"


def is_instance(obj, module: str, name: str) -> bool:
    """``isinstance(obj, module.name)`` without importing ``module``: while it has not been
    imported, no object can be an instance of one of its classes."""
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    return isinstance(cls, type) and isinstance(obj, cls)
