"""Compiling sympy expressions into fast numerical functions, and differentiating them.

Each list of expressions is compiled twice, once per use:

* a *scalar* function for the solver's hot path: arguments are Python lists of floats and
  the code uses the ``math`` module (sub-microsecond for small models, about three times
  faster than numpy scalars);
* a *batch* function over many points at once (numpy, broadcasting), used by the adjoint
  sweeps that evaluate Jacobians at every stage of every step in one call.

Both come from ``sympy.lambdify`` with common-subexpression elimination. Only sympy
expression objects are compiled, never user strings (see :mod:`dynlearn.io` for parsing).

Derivatives at kinks
--------------------
:func:`derivative` (and so every Jacobian dynlearn compiles) differentiates the functions
with kinks or jumps, ``Max``, ``Min``, ``Abs``, ``sign`` and ``Heaviside``, by these rules,
which hold everywhere, at the kinks too:

* ``Max(a_1, ..., a_n)``, ``Min(...)``: the derivative of the argument attaining the
  maximum (minimum); at a tie, of the first such argument in sympy's order of the
  arguments, which puts numbers first. So ``d/dx Max(x, 0)`` is 1 for ``x > 0`` and 0 for
  ``x <= 0``, and ``d/dx Min(x, 0)`` is 1 for ``x < 0`` and 0 for ``x >= 0``: at the kink,
  the derivative of the constant piece, one of the two one-sided derivatives.
* ``Abs(u)``: ``sign`` of ``u`` times ``du``, with the right-hand derivative ``+du`` at
  ``u = 0``.
* ``Heaviside(u)``, ``sign(u)``: 0 (both one-sided derivatives of a step are 0; the jump
  itself has no derivative, and no Dirac delta is produced).
* The chain rule through these functions treats an exactly-zero inner derivative as
  annihilating: ``d/dh sqrt(Max(h, 0))`` is 0 for ``h < 0`` (the expression is constant
  there), not ``inf * 0 = nan``.

Expressions without these functions are differentiated by ``sympy.diff`` unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import sympy as sp
from scipy import special

from dynlearn.errors import ModelError

__all__ = ["KINK_FUNCTIONS", "NAMESPACES", "CompiledExprs", "MaxPick", "MinPick", "derivative",
           "jacobian_exprs"]


class _Pick(sp.Function):
    """``Pick(a_1, ..., a_n, d_1, ..., d_n)``: the ``d_k`` of the argument ``a_k`` a rule
    selects (see the subclasses); the ``d_k`` themselves when they are all equal."""

    @classmethod
    def eval(cls, *args):
        n = len(args) // 2
        picks = args[n:]
        if all(p == picks[0] for p in picks):   # e.g. every derivative is 0
            return picks[0]
        return None


class MaxPick(_Pick):
    """``MaxPick(a_1, ..., a_n, d_1, ..., d_n)``: the ``d_k`` of the first ``k`` at which
    ``a_k`` is largest.

    The derivative of ``Max(a_1, ..., a_n)`` is ``MaxPick(a_1, ..., a_n, da_1, ..., da_n)``
    (see the module notes); its own derivative picks the derivatives of the ``d_k`` by the
    same rule. Compiled to a function of its own (:data:`NAMESPACES`).
    """


class MinPick(_Pick):
    """``MinPick(a_1, ..., a_n, d_1, ..., d_n)``: the ``d_k`` of the first ``k`` at which
    ``a_k`` is smallest (the derivative of ``Min``; see :class:`MaxPick`)."""


#: functions differentiated by the kink rules of the module notes
KINK_FUNCTIONS = (sp.Max, sp.Min, sp.Abs, sp.sign, sp.Heaviside, MaxPick, MinPick)
# factors that can be exactly zero on a whole region (the chain rule masks through them)
_MAYBE_ZERO = KINK_FUNCTIONS + (sp.Piecewise,)


def _pick_scalar(select):
    def pick(*args):
        n = len(args) // 2
        a = args[:n]
        return args[n + a.index(select(a))]
    return pick


def _pick_batch(argselect):
    def pick(*args):
        n = len(args) // 2
        v = np.broadcast_arrays(*[np.asarray(x, dtype=float) for x in args])
        k = argselect(np.stack(v[:n]), axis=0)    # the first extremum, as the scalar version
        return np.take_along_axis(np.stack(v[n:]), k[None], axis=0)[0]
    return pick


class _Logical:
    """numpy's ``logical_and`` / ``logical_or`` for batched code. sympy prints ``And(p, q)``
    as ``logical_and.reduce((p, q))``, which stacks its arguments into one array: a condition
    on a parameter (a scalar) beside one on a state (an array over the batch) is then a
    ragged array and numpy raises. Reducing pairwise broadcasts instead."""

    def __init__(self, ufunc: np.ufunc):
        self.ufunc = ufunc

    def __call__(self, *args, **kwargs):
        return self.ufunc(*args, **kwargs)

    def reduce(self, args, axis: int = 0):
        return functools.reduce(self.ufunc, args)


#: functions compiled code calls besides those of the ``math`` and ``numpy`` modules, for
#: the scalar (``"math"``) and the batched (``"numpy"``) versions: the picks, and the error
#: functions, which numpy lacks (sympy's numpy printer leaves ``erf`` to ``math.erf``, which
#: fails on arrays)
NAMESPACES = {
    "math": {"MaxPick": _pick_scalar(max), "MinPick": _pick_scalar(min)},
    "numpy": {"MaxPick": _pick_batch(np.argmax), "MinPick": _pick_batch(np.argmin),
              "erf": special.erf, "erfc": special.erfc,
              "logical_and": _Logical(np.logical_and), "logical_or": _Logical(np.logical_or)},
}


def _chain(outer: sp.Expr, inner: sp.Expr) -> sp.Expr:
    """``outer * inner``, zero wherever ``inner`` is exactly zero (even where ``outer`` is
    infinite) when ``inner`` comes from a kink function."""
    if inner == 0:
        return sp.S.Zero
    product = outer * inner
    if inner.is_number or not inner.has(*_MAYBE_ZERO):
        return product
    return sp.Piecewise((product, sp.Ne(inner, 0)), (0, True))


class _Derivative:
    """``d expr / d s``, memoised over sub-expressions (``_d`` is the rule of one node)."""

    def __init__(self, s: sp.Symbol):
        self.s = s
        self.memo: dict = {}

    def __call__(self, e: sp.Expr) -> sp.Expr:
        out = self.memo.get(e)
        if out is None:
            out = self.memo[e] = self._d(e)
        return out

    def _d(self, e):  # pragma: no cover - interface
        raise NotImplementedError


class _KinkDerivative(_Derivative):
    """``d expr / d s`` by the rules of the module notes (memoised over sub-expressions)."""

    def _d(self, e):
        s = self.s
        if not e.has(s):
            return sp.S.Zero
        if not e.has(*KINK_FUNCTIONS):
            return sp.diff(e, s)
        if isinstance(e, (sp.Max, sp.Min)):
            pick = MaxPick if isinstance(e, sp.Max) else MinPick
            return pick(*e.args, *[self(a) for a in e.args])
        if isinstance(e, (MaxPick, MinPick)):
            n = len(e.args) // 2
            return type(e)(*e.args[:n], *[self(d) for d in e.args[n:]])
        if isinstance(e, (sp.sign, sp.Heaviside)):
            return sp.S.Zero
        if isinstance(e, sp.Abs):
            u = e.args[0]
            return _chain(sp.Piecewise((1, u >= 0), (-1, True)), self(u))
        if e.is_Add:
            return sp.Add(*[self(a) for a in e.args])
        if e.is_Mul:
            args = list(e.args)
            terms = []
            for i, f in enumerate(args):
                d = self(f)
                if d != 0:
                    terms.append(sp.Mul(*args[:i], d, *args[i + 1:]))
            return sp.Add(*terms)
        if e.is_Pow:
            b, p = e.args
            out = _chain(p * b ** (p - 1), self(b))
            if p.has(s):
                out += _chain(e * sp.log(b), self(p))
            return out
        if isinstance(e, sp.Piecewise):
            return sp.Piecewise(*[(self(v), c) for v, c in e.args])
        if isinstance(e, sp.Function):
            return sp.Add(*[_chain(e.fdiff(i + 1), self(a))
                            for i, a in enumerate(e.args) if a.has(s)])
        return sp.diff(e, s)


def derivative(expr: sp.Expr, s: sp.Symbol) -> sp.Expr:
    """``d expr / d s``, with the functions that have kinks (``Max``, ``Min``, ``Abs``,
    ``sign``, ``Heaviside``) differentiated as the module notes say; other expressions by
    ``sympy.diff``, unchanged."""
    expr = sp.sympify(expr)
    if not expr.has(*KINK_FUNCTIONS):
        return sp.diff(expr, s)
    return _KinkDerivative(s)(expr)


class _PlainDerivative(_Derivative):
    """``d expr / d s`` of an expression without kink functions, built without sympy's
    automatic simplification of sums, products and powers (memoised over sub-expressions).

    ``sympy.diff`` rebuilds every product it forms through ``Mul.flatten``, which asks the
    assumptions system about each factor (is it finite, zero, positive?): 70-400 ms for one
    entry of a mass-action rate law with seven saturating factors, 16 s for the 34-state
    Laske model's Jacobian. The product, sum and power rules here form the same derivative
    unevaluated (the compiled code is the same arithmetic; ``cse`` shares the repeats), and
    any other node (functions, ``Piecewise``) is left to :func:`derivative`.
    """

    def _d(self, e):
        s = self.s
        # zeros come out of the recursion (memoised), not from a free_symbols walk of
        # every sub-expression
        if e.is_Atom:
            return sp.S.One if e == s else sp.S.Zero
        if e.is_Add:
            return _plain_add([self(a) for a in e.args])
        if e.is_Mul:
            args = e.args
            terms = []
            for i, f in enumerate(args):
                d = self(f)
                if d != 0:
                    terms.append(_plain_mul([*args[:i], *args[i + 1:], d]))
            return _plain_add(terms)
        if e.is_Pow and not e.exp.has(s):
            b, p = e.args
            db = self(b)
            if db == 0:
                return sp.S.Zero
            q = p - 1
            power = b if q == 1 else sp.Pow(b, q, evaluate=False)
            return _plain_mul([p, power, db])
        if not e.has(s):
            return sp.S.Zero
        return derivative(e, s)


def _plain_add(terms):
    terms = [t for t in terms if t != 0]
    if not terms:
        return sp.S.Zero
    return terms[0] if len(terms) == 1 else sp.Add(*terms, evaluate=False)


def _plain_mul(factors):
    factors = [f for f in factors if f != 1]
    if any(f == 0 for f in factors):
        return sp.S.Zero
    if not factors:
        return sp.S.One
    return factors[0] if len(factors) == 1 else sp.Mul(*factors, evaluate=False)


def jacobian_exprs(exprs: Sequence[sp.Expr], wrt: Sequence[sp.Symbol]) -> list[list[sp.Expr]]:
    """Symbolic Jacobian ``d exprs[i] / d wrt[j]`` as nested lists (see :func:`derivative`),
    for compiling.

    Only the entries whose expression contains the symbol are differentiated; the others
    are zero without a call to sympy (a reaction network's Jacobian is mostly such zeros,
    and ``sympy.diff`` costs tens of microseconds even for them: 250,000 calls for a
    500-state model). Expressions without kink functions are differentiated by the plain
    sum, product and power rules, unevaluated (see :class:`_PlainDerivative`): the same
    derivative as :func:`derivative`'s, mathematically, in a form that is not simplified."""
    exprs = [sp.sympify(e) for e in exprs]
    wrt = [sp.sympify(s) for s in wrt]
    rules = {s: _PlainDerivative(s) for s in wrt if s.is_Symbol}
    out = []
    for e in exprs:
        used = e.free_symbols
        plain = not e.has(*KINK_FUNCTIONS)
        row = []
        for s in wrt:
            if not s.is_Symbol:
                row.append(derivative(e, s))
            elif s not in used:
                row.append(sp.S.Zero)
            else:
                row.append(rules[s](e) if plain else derivative(e, s))
        out.append(row)
    return out


def _once(fn):
    """``fn`` computed on its first call and returned again on every later one (whatever
    the argument: the callers pass the same one)."""
    result = []

    def call(arg):
        if not result:
            result.append(fn(arg))
        return result[0]
    return call


def _rename(e: sp.Basic, table: dict, memo: dict) -> sp.Basic:
    """``e.xreplace(table)``, except that ``Max`` and ``Min`` are rebuilt without
    re-simplification: renaming symbols cannot enable a simplification sympy did not find
    already, and sympy's simplification of ``Max``/``Min`` compares every pair of arguments
    symbolically, which is slow for large (nested) arguments."""
    out = table.get(e)
    if out is not None:
        return out
    if not e.args:
        return e
    out = memo.get(e)
    if out is None:
        args = [_rename(a, table, memo) for a in e.args]
        if all(n is o for n, o in zip(args, e.args)):
            out = e
        elif isinstance(e, (sp.Max, sp.Min, sp.Add, sp.Mul, sp.Pow)):
            # renaming cannot enable a simplification that was not made already; and
            # re-evaluating a product asks the assumptions system about every factor
            out = e.func(*args, evaluate=False)
        else:
            out = e.func(*args)
        memo[e] = out
    return out


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

    Raises
    ------
    ModelError
        When an expression is too deeply nested to compile (the parser refuses such
        equations before they get here), or holds a constant that is not a real number.

    Notes
    -----
    When at least half of the outputs are exactly zero (the Jacobian of a reaction network),
    only the others are compiled; each call scatters them into an array of zeros.

    Symbols are renamed to plain identifiers before compiling, so model symbols named like
    Python keywords or module functions (``lambda``, ``exp``) or with brackets (``nn[0]``)
    cannot collide with generated code.

    A point where the ``math`` module refuses (the square root of a state that a trial step
    pushed below zero, a division by zero, a power that would be complex) is evaluated with
    numpy instead, giving ``nan``/``inf``: the solver then rejects the step, or dynlearn's
    checks (:mod:`dynlearn.solve`) turn it into a :class:`~dynlearn.SolveError`.
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
        # Jacobians of reaction networks are mostly structural zeros: compile only the
        # other entries and scatter them into zeros (building, converting and copying a
        # Python list of n^2 floats per call cost more than evaluating the non-zeros)
        nonzero = [i for i, e in enumerate(exprs) if e != 0]
        self._index = (np.array(nonzero, dtype=np.intp) if 2 * len(nonzero) <= self.size
                       else None)
        if self._index is not None:
            exprs = [exprs[i] for i in nonzero]
        if self.size == 0 or not exprs:
            self._scalar = self._batch = None
            return
        try:
            memo: dict = {}
            clean = [_rename(e, rename, memo) for e in exprs]
            # one common-subexpression elimination for both versions (it is most of the
            # compile time of a large model)
            shared = _once(lambda e: sp.cse(e, list=False))
            try:
                self._scalar = sp.lambdify(arg_groups, clean, cse=shared,
                                           modules=[NAMESPACES["math"], "math"])
            except RecursionError:
                raise
            except Exception:  # a function the math module lacks: fall back to numpy
                self._scalar = sp.lambdify(arg_groups, clean, cse=shared,
                                           modules=[NAMESPACES["numpy"], "numpy"])
            self._batch = sp.lambdify(arg_groups, clean, cse=shared,
                                      modules=[NAMESPACES["numpy"], "numpy"])
        except RecursionError:
            raise ModelError("an equation is nested too deeply to compile; simplify it or "
                             "split it with intermediate states") from None

    def __call__(self, *args) -> np.ndarray:
        """Evaluate at one point; arguments are lists (or 1-D arrays) per group."""
        if self._scalar is None:
            return np.zeros(self.shape)
        try:
            out = np.array(self._scalar(*args), dtype=float)
        except (ValueError, OverflowError, ZeroDivisionError, TypeError):
            # the math module raises where numpy returns nan/inf (sqrt of a state that a
            # trial step pushed below zero, 1/0), and Python's ** returns a complex number
            # for a negative base and a fractional exponent (TypeError here): evaluate
            # with numpy so the solver sees a non-finite value and rejects the step instead
            # of the whole solve crashing
            with np.errstate(all="ignore"):
                vals = self._batch(*[np.asarray(a, dtype=float) for a in args])
                out = np.array([float(v) for v in vals], dtype=float)
        if self._index is not None:
            full = np.zeros(self.size)
            full[self._index] = out
            out = full
        return out.reshape(self.shape) if len(self.shape) > 1 else out

    def batch(self, m: int, *args) -> np.ndarray:
        """Evaluate at ``m`` points; each argument group is an array with a trailing axis of
        length ``m`` (or a scalar-like group shared by all points). Returns shape
        ``self.shape + (m,)``; points outside an expression's domain give nan/inf."""
        if self._index is not None:
            out = np.zeros((self.size, m))
            rows = self._index
        else:
            out = np.empty((self.size, m))
            rows = range(self.size)
        if self._batch is not None:
            # a group given as a list (the parameters) would reach the code as Python floats,
            # whose 1/0 raises ZeroDivisionError where numpy gives inf (cbrt(p)' at p = 0)
            args = [a if isinstance(a, np.ndarray) else np.asarray(a, dtype=float)
                    for a in args]
            with np.errstate(all="ignore"):
                vals = self._batch(*args)
            for i, v in zip(rows, vals):
                out[i] = v
        return out.reshape(self.shape + (m,))
