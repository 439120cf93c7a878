"""Candidate libraries: the sympy terms a learned term (or a derivative) is regressed onto.

A :class:`Library` is an ordered set of candidate terms. It lists them explicitly or builds
them from variables known only later (the variables a network sees, for
:func:`~dynlearn.discovery.recover`; the states, for
:func:`~dynlearn.discovery.sindy_baseline`). :func:`library_terms` resolves a library
against the symbols a caller allows and :func:`evaluate_terms` evaluates the terms at sample
points, giving the matrix ``Theta`` of the regression (one column per term).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import sympy as sp

from dynlearn.core.neural import NetworkOutput
from dynlearn.core.symbolic import CompiledExprs
from dynlearn.errors import DiscoveryError, ModelError

__all__ = [
    "Library", "polynomial_library", "trigonometric_library", "exponential_library",
    "as_library", "check_variables", "library_terms", "evaluate_terms",
]


def _as_variable(v, where: str) -> sp.Symbol:
    if isinstance(v, NetworkOutput):
        raise ModelError(f"{where}: {v} is a network output; library terms are built from "
                         "states, inputs, time and parameters")
    if isinstance(v, str):
        if not v.isidentifier():
            raise ModelError(f"{where}: variable name {v!r} is not a valid identifier")
        return sp.Symbol(v)
    if isinstance(v, sp.Symbol):
        return v
    raise ModelError(f"{where}: variables must be sympy Symbols or names, got {v!r}")


def _as_term(e, where: str) -> sp.Expr:
    if isinstance(e, (int, float, np.number)) and not isinstance(e, bool):
        e = sp.Integer(int(e)) if float(e).is_integer() else sp.Float(float(e))
    if isinstance(e, str):
        raise ModelError(f"{where}: library terms must be sympy expressions, got the string "
                         f"{e!r}; build it from the model's symbols, e.g. x*y")
    if not isinstance(e, sp.Expr) or isinstance(e, (sp.MatrixBase, sp.NDimArray)):
        raise ModelError(f"{where}: library terms must be scalar sympy expressions, got {e!r}")
    if e.is_number:
        if e == 0:
            raise ModelError(f"{where}: the term 0 is not a candidate term; remove it")
        return sp.Integer(1)   # any constant spans the same column as 1
    if any(isinstance(s, NetworkOutput) for s in e.free_symbols):
        raise ModelError(f"{where}: term {e} uses a network output; library terms are built "
                         "from states, inputs, time and parameters")
    # a numeric factor does not change the column's span: 2*x*y is the candidate x*y
    return e.as_coeff_Mul()[1]


def _dedupe(terms: Iterable[sp.Expr]) -> list[sp.Expr]:
    out, seen = [], set()
    for t in terms:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


@dataclass(frozen=True)
class _Part:
    """One block of a library: a description and a rule ``variables -> terms``."""

    label: str
    build: Callable[[Sequence[sp.Symbol]], list[sp.Expr]]


class Library:
    """An ordered set of candidate terms for sparse regression.

    A library either lists its terms explicitly (``Library([x*y, sp.sin(x)])``) or builds them
    from variables that are only known later: ``polynomial_library(2)`` without
    ``variables`` uses the variables a network sees (for :func:`recover`) or the states (for
    :func:`sindy_baseline`). Libraries combine with ``+`` (concatenation, duplicates dropped,
    e.g. two constant terms) and ``*`` (all pairwise products); a plain list of sympy
    expressions may stand on either side of ``+``.

    Parameters
    ----------
    terms : iterable of sympy expressions
        Candidate terms. Any non-zero constant becomes the constant term ``1``.
    label : str, optional
        Shown in ``repr``.

    Examples
    --------
    >>> import sympy as sp
    >>> x, y = sp.symbols("x y")
    >>> lib = polynomial_library(2) + [sp.sin(x)]
    >>> lib.terms([x, y])
    [1, x, y, x**2, x*y, y**2, sin(x)]
    >>> lib.names([x, y])
    ['1', 'x', 'y', 'x**2', 'x*y', 'y**2', 'sin(x)']
    """

    def __init__(self, terms: Iterable = (), label: str | None = None):
        if isinstance(terms, (sp.Basic, str)) or not isinstance(terms, Iterable):
            terms = [terms]
        fixed = _dedupe(_as_term(e, "library") for e in terms)
        self._parts: tuple[_Part, ...] = ()
        if fixed:
            self._parts = (_Part(label or f"custom({', '.join(map(str, fixed))})",
                                 lambda variables, fixed=tuple(fixed): list(fixed)),)

    @classmethod
    def _from_parts(cls, parts: Sequence[_Part]) -> Library:
        lib = cls()
        lib._parts = tuple(parts)
        return lib

    @classmethod
    def _deferred(cls, label: str, build: Callable) -> Library:
        return cls._from_parts([_Part(label, build)])

    # --- combination ---------------------------------------------------------------------
    @staticmethod
    def _coerce(other) -> Library | None:
        if isinstance(other, Library):
            return other
        if isinstance(other, (sp.Expr, list, tuple)):
            return Library(other)
        return None

    def __add__(self, other) -> Library:
        other = self._coerce(other)
        if other is None:
            return NotImplemented
        return Library._from_parts(self._parts + other._parts)

    def __radd__(self, other) -> Library:
        other = self._coerce(other)
        if other is None:
            return NotImplemented
        return other + self

    def __mul__(self, other) -> Library:
        other = self._coerce(other)
        if other is None:
            return NotImplemented
        a, b = self, other

        def build(variables):
            return [_as_term(p * q, "library product") for p in a.terms(variables)
                    for q in b.terms(variables)]
        return Library._deferred(f"({a!r}) * ({b!r})", build)

    __rmul__ = __mul__

    # --- resolution ----------------------------------------------------------------------
    def terms(self, variables: Sequence | None = None) -> list[sp.Expr]:
        """The candidate terms, built from ``variables`` where a part needs them.

        Parameters
        ----------
        variables : sequence of sympy.Symbol or str, optional
            Default variables for parts created without explicit ``variables``. Symbols in
            the terms are matched to these by name, so the terms use these very objects.

        Returns
        -------
        list of sympy.Expr
            Without duplicates, in order.
        """
        variables = [] if variables is None else [_as_variable(v, "library variables")
                                                   for v in variables]
        by_name = {v.name: v for v in variables}
        out = []
        for part in self._parts:
            for e in part.build(variables):
                e = _as_term(e, f"library {part.label}")
                # use the caller's symbol objects (same name, possibly other assumptions)
                e = e.xreplace({s: by_name[s.name] for s in e.free_symbols
                                if s.name in by_name and s is not by_name[s.name]})
                out.append(e)
        return _dedupe(out)

    def names(self, variables: Sequence | None = None) -> list[str]:
        """``str`` of each term (``'x*y'``, ``'x**2'``, ``'1'``)."""
        return [str(e) for e in self.terms(variables)]

    def __bool__(self) -> bool:
        return bool(self._parts)

    def __len__(self) -> int:
        try:
            return len(self.terms())
        except ModelError:
            raise TypeError("this library's size depends on its variables; use "
                            "len(lib.terms(variables))") from None

    def __repr__(self) -> str:
        return " + ".join(p.label for p in self._parts) if self._parts else "Library([])"


def check_variables(variables, where: str) -> list[sp.Symbol] | None:
    """Validate the variables given to a library or a regression.

    Parameters
    ----------
    variables : sympy.Symbol, str, sequence of them, or None
        A single variable stands for a list of one.
    where : str
        Names the caller in error messages.

    Returns
    -------
    list of sympy.Symbol or None
        None when ``variables`` is None (the caller's defaults apply).

    Raises
    ------
    ModelError
        A variable is a network output, not a symbol or a valid name, or the list is empty.
    """
    if variables is None:
        return None
    if isinstance(variables, (str, sp.Basic)):
        variables = [variables]
    out = [_as_variable(v, where) for v in variables]
    if not out:
        raise ModelError(f"{where}: variables is empty; pass at least one symbol or None "
                         "for the default variables")
    return out


def _resolve(variables, default):
    return list(default) if variables is None else list(variables)


def _need_variables(vs, where: str):
    if not vs:
        raise ModelError(f"{where} has no variables: pass variables=[...] or use it with "
                         "recover()/sindy_baseline(), which supply the model's variables")
    return vs


def polynomial_library(degree: int = 2, variables: Sequence | None = None,
                       include_bias: bool = True, interaction_only: bool = False) -> Library:
    """All monomials of the variables up to total degree ``degree``.

    Parameters
    ----------
    degree : int
        Highest total degree (>= 0).
    variables : sequence of sympy.Symbol or str, optional
        Default: the variables the learned term can depend on (:func:`recover`: the states,
        inputs and time appearing in the network's inputs), or the states
        (:func:`sindy_baseline`).
    include_bias : bool
        Include the constant term ``1``.
    interaction_only : bool
        Only products of distinct variables (``x*y`` but not ``x**2``).

    Returns
    -------
    Library
        With ``n`` variables: :math:`\\binom{n + d}{d}` terms (one fewer without the bias),
        ordered by degree then lexicographically, like scikit-learn's and PySINDy's
        ``PolynomialFeatures``: ``1, x, y, x**2, x*y, y**2``.
    """
    if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)) or degree < 0:
        raise ModelError(f"polynomial_library: degree must be an integer >= 0, got {degree!r}")
    if degree == 0 and not include_bias:
        raise ModelError("polynomial_library: degree=0 without the bias has no terms")
    vs = check_variables(variables, "polynomial_library")
    degree = int(degree)

    def build(default):
        v = _need_variables(_resolve(vs, default), "polynomial_library")
        terms = [sp.Integer(1)] if include_bias else []
        for d in range(1, degree + 1):
            combos = (itertools.combinations(v, d) if interaction_only
                      else itertools.combinations_with_replacement(v, d))
            terms += [sp.Mul(*c) for c in combos]
        return terms

    label = f"polynomial(degree={degree}" + (f", variables={vs}" if vs else "") + \
        ("" if include_bias else ", include_bias=False") + \
        (", interaction_only=True" if interaction_only else "") + ")"
    return Library._deferred(label, build)


def _check_numbers(values, what: str, where: str, positive: bool = False) -> tuple:
    if isinstance(values, (int, float, np.number)):
        values = [values]
    try:
        vals = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ModelError(f"{where}: {what} must be numbers, got {values!r}") from None
    if not vals or not all(math.isfinite(v) and v != 0 for v in vals) or \
            (positive and any(v <= 0 for v in vals)):
        raise ModelError(f"{where}: {what} must be non-empty, finite and "
                         f"{'positive' if positive else 'non-zero'}; got {values!r}")
    return vals


def _number(v: float) -> sp.Expr:
    return sp.Integer(int(v)) if float(v).is_integer() else sp.Float(v)


def trigonometric_library(variables: Sequence | None = None, frequencies=(1,),
                          include_sin: bool = True, include_cos: bool = True) -> Library:
    """``sin(k*v)`` and ``cos(k*v)`` for every variable ``v`` and frequency ``k``.

    Parameters
    ----------
    variables : sequence of sympy.Symbol or str, optional
        Default as in :func:`polynomial_library`.
    frequencies : sequence of float
        Positive angular frequencies ``k``.
    include_sin, include_cos : bool

    Returns
    -------
    Library
        ``2 * n_variables * n_frequencies`` terms, per variable and frequency ``sin`` then
        ``cos``.
    """
    ks = _check_numbers(frequencies, "frequencies", "trigonometric_library", positive=True)
    if not (include_sin or include_cos):
        raise ModelError("trigonometric_library: include_sin and include_cos are both False; "
                         "the library would be empty")
    vs = check_variables(variables, "trigonometric_library")

    def build(default):
        v = _need_variables(_resolve(vs, default), "trigonometric_library")
        out = []
        for s in v:
            for k in ks:
                arg = _number(k) * s
                out += ([sp.sin(arg)] if include_sin else []) + \
                       ([sp.cos(arg)] if include_cos else [])
        return out
    return Library._deferred(f"trigonometric(frequencies={list(ks)})", build)


def exponential_library(variables: Sequence | None = None, rates=(1, -1)) -> Library:
    """``exp(r*v)`` for every variable ``v`` and rate ``r``.

    Parameters
    ----------
    variables : sequence of sympy.Symbol or str, optional
        Default as in :func:`polynomial_library`.
    rates : sequence of float
        Non-zero rates; ``(1, -1)`` gives growth and decay.

    Returns
    -------
    Library
        ``n_variables * n_rates`` terms.
    """
    rs = _check_numbers(rates, "rates", "exponential_library")
    vs = check_variables(variables, "exponential_library")

    def build(default):
        v = _need_variables(_resolve(vs, default), "exponential_library")
        return [sp.exp(_number(r) * s) for s in v for r in rs]
    return Library._deferred(f"exponential(rates={list(rs)})", build)


def as_library(library) -> Library:
    """The :class:`Library` a user's ``library=`` argument stands for.

    Parameters
    ----------
    library : Library, sympy expression, list of sympy expressions, or None
        None means the default, ``polynomial_library(2)``.

    Returns
    -------
    Library

    Raises
    ------
    ModelError
        For anything else.
    """
    if library is None:
        return polynomial_library(2)
    if isinstance(library, Library):
        return library
    if isinstance(library, (sp.Expr, list, tuple)):
        return Library(library)
    raise ModelError(f"library must be a dl.Library (e.g. dl.polynomial_library(2)) or a list "
                     f"of sympy expressions, got {type(library).__name__}")


def library_terms(library, variables: Sequence[sp.Symbol], allowed: Mapping[str, sp.Symbol],
                  what: str) -> list[sp.Expr]:
    """The terms of ``library`` built from ``variables``, in the caller's symbols.

    Parameters
    ----------
    library : Library, list of sympy expressions, or None
        As accepted by :func:`as_library`.
    variables : sequence of sympy.Symbol
        Default variables of the library's deferred parts.
    allowed : mapping name -> sympy.Symbol
        The symbols a term may use. Symbols in the terms are matched to these by name, so the
        terms use these very objects.
    what : str
        Describes ``allowed`` in error messages ("the states", ...).

    Returns
    -------
    list of sympy.Expr
        Without duplicates, in library order.

    Raises
    ------
    ModelError
        The library is empty or a term uses a symbol outside ``allowed``.
    """
    lib = as_library(library)
    terms = lib.terms(variables)
    if not terms:
        raise ModelError("the library is empty: give at least one candidate term, e.g. "
                         "library=dl.polynomial_library(degree=2)")
    # match symbols by name to the model's own objects, then refuse anything unknown
    fixed = []
    for e in terms:
        e = e.xreplace({s: allowed[s.name] for s in e.free_symbols if s.name in allowed})
        unknown = sorted(s.name for s in e.free_symbols if s.name not in allowed)
        if unknown:
            raise ModelError(f"library term {e} uses unknown symbol(s) {unknown}; terms may "
                             f"only use {what}: {sorted(allowed)}")
        fixed.append(e)
    return _dedupe(fixed)


def evaluate_terms(terms: Sequence[sp.Expr], groups: Sequence[Sequence[sp.Symbol]],
                   values: Sequence[np.ndarray], m: int) -> np.ndarray:
    """The library matrix ``Theta``: every term evaluated at ``m`` sample points.

    Parameters
    ----------
    terms : sequence of sympy.Expr
    groups : sequence of sequences of sympy.Symbol
        The symbols the terms may use, in groups (e.g. time, states, parameters, inputs).
    values : sequence of ndarray
        Per group, the values of its symbols, shaped ``(len(group), m)``.
    m : int
        Number of sample points.

    Returns
    -------
    ndarray, shape (m, len(terms))

    Raises
    ------
    DiscoveryError
        A term is not finite at some sample (a log or a division outside its domain).
    """
    ce = CompiledExprs(groups, terms)
    with np.errstate(all="ignore"):
        out = ce.batch(m, *values).T
    bad = ~np.isfinite(out)
    if bad.any():
        j = int(np.flatnonzero(bad.any(0))[0])
        raise DiscoveryError(f"library term {terms[j]} is not finite at {int(bad[:, j].sum())} "
                             f"of {m} samples (e.g. a log or division outside its domain); drop "
                             "the term or restrict where it is sampled")
    return out
