"""Compiling sympy expressions into fast numerical functions.

Each list of expressions is compiled twice, once per use:

* a *scalar* function for the solver's hot path: arguments are Python lists of floats and
  the code uses the ``math`` module (sub-microsecond for small models, about three times
  faster than numpy scalars);
* a *batch* function over many points at once (numpy, broadcasting), used by the adjoint
  sweeps that evaluate Jacobians at every stage of every step in one call.

Both come from ``sympy.lambdify`` with common-subexpression elimination. Only sympy
expression objects are compiled, never user strings (see :mod:`dynlearn.io` for parsing).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import sympy as sp

__all__ = ["CompiledExprs", "jacobian_exprs"]


def jacobian_exprs(exprs: Sequence[sp.Expr], wrt: Sequence[sp.Symbol]) -> list[list[sp.Expr]]:
    """Symbolic Jacobian ``d exprs[i] / d wrt[j]`` as nested lists."""
    return [[sp.diff(e, s) for s in wrt] for e in exprs]


class CompiledExprs:
    """A flat list of expressions compiled for scalar and batched evaluation.

    Parameters
    ----------
    groups : sequence of sequences of sympy.Symbol
        The argument groups, e.g. ``[[t], states, params, net_outputs, inputs]``; each group
        is passed as one array (or list) at call time.
    exprs : sequence of sympy.Expr
        The outputs, flattened; use ``shape`` to reshape.
    shape : tuple of int
        Shape of the result for one point.

    Notes
    -----
    Symbols are renamed to plain identifiers before compiling, so model symbols named like
    Python keywords or module functions (``lambda``, ``exp``) or with brackets (``nn[0]``)
    cannot collide with generated code.
    """

    def __init__(self, groups: Sequence[Sequence[sp.Symbol]], exprs: Sequence[sp.Expr],
                 shape: tuple[int, ...] | None = None):
        exprs = [sp.sympify(e) for e in exprs]
        self.shape = tuple(shape) if shape is not None else (len(exprs),)
        self.size = len(exprs)
        self.is_zero = all(e == 0 for e in exprs)
        rename = {}
        arg_groups = []
        for gi, group in enumerate(groups):
            names = []
            for si, s in enumerate(group):
                d = sp.Symbol(f"a{gi}_{si}")
                rename[s] = d
                names.append(d)
            arg_groups.append(names)
        clean = [e.xreplace(rename) for e in exprs]
        self._const = [not e.free_symbols for e in clean]
        self._const_values = np.array([float(e) if c else 0.0 for e, c in zip(clean, self._const)])
        if self.size == 0:
            self._scalar = self._batch = None
            return
        try:
            self._scalar = sp.lambdify(arg_groups, clean, modules="math", cse=True)
        except Exception:  # a function the math module lacks: fall back to numpy
            self._scalar = sp.lambdify(arg_groups, clean, modules="numpy", cse=True)
        self._batch = sp.lambdify(arg_groups, clean, modules="numpy", cse=True)

    def __call__(self, *args) -> np.ndarray:
        """Evaluate at one point; arguments are lists (or 1-D arrays) per group."""
        if self.size == 0:
            return np.zeros(self.shape)
        try:
            out = np.array(self._scalar(*args), dtype=float)
        except (ValueError, OverflowError, ZeroDivisionError):
            # the math module raises where numpy returns nan/inf (sqrt of a state that a
            # trial step pushed below zero, 1/0): evaluate with numpy so the solver sees a
            # non-finite value and rejects the step instead of the whole solve crashing
            with np.errstate(all="ignore"):
                vals = self._batch(*[np.asarray(a, dtype=float) for a in args])
                out = np.array([float(v) for v in vals], dtype=float)
        return out.reshape(self.shape) if len(self.shape) > 1 else out

    def batch(self, m: int, *args) -> np.ndarray:
        """Evaluate at ``m`` points; each argument group is an array with a trailing axis of
        length ``m`` (or a scalar-like group shared by all points). Returns shape
        ``self.shape + (m,)``."""
        out = np.empty((self.size, m))
        if self.size:
            vals = self._batch(*args)
            for i, v in enumerate(vals):
                out[i] = v
        return out.reshape(self.shape + (m,))
