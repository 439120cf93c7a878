"""Equations out: symbolic recovery of learned network terms.

After a hybrid model has been fitted, its networks stand for physics that was missing from
the equations. This module turns them back into equations, following the universal
differential equation (UDE) workflow of Rackauckas et al. (2020):

1. evaluate the learned terms ``nn[i]`` of the fitted model along its trajectories and on
   points spread over the state region the data cover, by default a narrow tube around
   the trajectories (:func:`recover`);
2. regress them sparsely onto a library of sympy candidate terms (:class:`Library`,
   :func:`polynomial_library`, ...) with sequentially thresholded least squares
   (:class:`STLSQ`), the threshold fixed or chosen by an information criterion or by
   cross-validation;
3. replace each network by the recovered terms, whose coefficients become named free
   parameters (:meth:`Recovery.to_model`), and refit that pure-symbolic model to the data
   with :func:`dynlearn.fit`, dropping terms the data do not support
   (:meth:`Recovery.refit`, run by :func:`recover` by default): the coefficients come
   with standard errors;
4. check that the recovered model extrapolates (:func:`compare_extrapolation`).

:func:`sindy_baseline` runs the same regression on finite-difference derivatives of the
data alone (plain SINDy, Brunton et al. 2016), the baseline the UDE workflow improves on.

How it works
------------
The regression for one network output ``z`` is

.. math:: z(X) \\approx \\Theta(X)\\,\\xi,

with ``Theta`` the library evaluated at the sample points ``X`` (one column per candidate
term). Columns and target are scaled to unit root-mean-square, so a coefficient of the
scaled problem, :math:`\\tilde\\xi_j = \\xi_j\\,\\mathrm{rms}(\\theta_j)/\\mathrm{rms}(z)`, is
the share of the target that term ``j`` carries: a threshold of 0.05 drops terms that
contribute less than 5 % of the term's size, whatever the units of the states. STLSQ then
alternates a ridge least-squares fit with zeroing every scaled coefficient below the
threshold, until the set of kept terms stops changing; the kept terms are finally refitted
without the ridge penalty (debiasing).

See ``docs/discovery.md`` for how to choose the library and the threshold, and for when a
recovered equation should not be trusted.

References
----------
.. [1] C. Rackauckas et al., "Universal Differential Equations for Scientific Machine
   Learning", arXiv:2001.04385 (2020).
.. [2] S. L. Brunton, J. L. Proctor, J. N. Kutz, "Discovering governing equations from data
   by sparse identification of nonlinear dynamical systems", PNAS 113, 3932 (2016).
.. [3] N. M. Mangan et al., "Model selection for dynamical systems via sparse regression and
   information criteria", Proc. R. Soc. A 473, 20170009 (2017).
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from dynlearn.core.model import HybridModel
from dynlearn.core.neural import NetworkOutput
from dynlearn.core.parameters import Parameter
from dynlearn.core.symbolic import CompiledExprs
from dynlearn.errors import DataError, DynlearnError, ModelError, OptionError

__all__ = [
    "DiscoveryError", "DiscoveryWarning", "Library", "polynomial_library",
    "trigonometric_library", "exponential_library", "STLSQ", "stlsq", "sparse_regression",
    "Recovery", "recover", "sindy_baseline", "compare_extrapolation", "physics_only",
]


class DiscoveryError(DynlearnError, ValueError):
    """Sparse regression cannot run: too few samples, non-finite library values, ..."""


class DiscoveryWarning(UserWarning):
    """A recovered equation may not be trustworthy (collinear library, poor fit)."""


# =====================================================================================
# Libraries
# =====================================================================================
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


def _check_variables(variables, where: str):
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
    vs = _check_variables(variables, "polynomial_library")
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
    vs = _check_variables(variables, "trigonometric_library")

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
    vs = _check_variables(variables, "exponential_library")

    def build(default):
        v = _need_variables(_resolve(vs, default), "exponential_library")
        return [sp.exp(_number(r) * s) for s in v for r in rs]
    return Library._deferred(f"exponential(rates={list(rs)})", build)


def _as_library(library) -> Library:
    if library is None:
        return polynomial_library(2)
    if isinstance(library, Library):
        return library
    if isinstance(library, (sp.Expr, list, tuple)):
        return Library(library)
    raise ModelError(f"library must be a dl.Library (e.g. dl.polynomial_library(2)) or a list "
                     f"of sympy expressions, got {type(library).__name__}")


def _library_terms(library, variables, allowed: Mapping[str, sp.Symbol], what: str):
    lib = _as_library(library)
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


# =====================================================================================
# Sequentially thresholded least squares
# =====================================================================================
def _ridge(A: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    """argmin |A x - b|^2 / m + alpha |x|^2 for scaled A (m, k), b (m,)."""
    m, k = A.shape
    if k == 0:
        return np.zeros(0)
    if alpha > 0:
        A = np.vstack([A / math.sqrt(m), math.sqrt(alpha) * np.eye(k)])
        b = np.concatenate([b / math.sqrt(m), np.zeros(k)])
    return np.linalg.lstsq(A, b, rcond=None)[0]


def _stlsq_scaled(A, b, threshold, alpha, max_iter, unbias, active=None):
    """STLSQ on a scaled problem; returns (coefficients (k,), support (k,) bool)."""
    k = A.shape[1]
    support = np.ones(k, bool) if active is None else active.copy()
    xi = np.zeros(k)
    xi[support] = _ridge(A[:, support], b, alpha)
    for _ in range(max_iter):
        keep = support & (np.abs(xi) >= threshold)
        if np.array_equal(keep, support):
            break
        support = keep
        xi = np.zeros(k)
        xi[support] = _ridge(A[:, support], b, alpha)
    if unbias and alpha > 0 and support.any():
        xi = np.zeros(k)
        xi[support] = _ridge(A[:, support], b, 0.0)
    return xi, support


def _scales(Theta: np.ndarray, z: np.ndarray, normalize: bool):
    m = Theta.shape[0]
    if normalize:
        s = np.sqrt(np.einsum("ij,ij->j", Theta, Theta) / m)
        zs = float(np.sqrt(z @ z / m))
    else:
        s, zs = np.ones(Theta.shape[1]), 1.0
    active = s > 0
    s = np.where(active, s, 1.0)
    return s, (zs if zs > 0 else 1.0), active


def stlsq(Theta, z, threshold: float, alpha: float = 1e-6, normalize: bool = True,
          max_iter: int = 20, unbias: bool = True) -> np.ndarray:
    """Sequentially thresholded least squares for ``z ~ Theta @ xi``.

    Parameters
    ----------
    Theta : array_like, shape (m, k)
        Library evaluated at ``m`` samples.
    z : array_like, shape (m,) or (m, q)
        Target(s).
    threshold : float
        With ``normalize`` (default), the smallest relative contribution
        :math:`|\\xi_j|\\,\\mathrm{rms}(\\theta_j)/\\mathrm{rms}(z)` of a kept term; otherwise
        the smallest absolute coefficient (PySINDy's convention).
    alpha : float
        Ridge penalty on the scaled coefficients, relative to the mean squared target
        (``alpha = 1e-6`` only stabilises nearly collinear columns).
    normalize : bool
        Scale columns and target to unit root-mean-square before thresholding.
    max_iter : int
    unbias : bool
        Refit the kept terms without the ridge penalty.

    Returns
    -------
    xi : ndarray, shape (k,) or (k, q)
        Coefficients in the units of ``Theta`` and ``z``; zero for dropped terms.

    Notes
    -----
    Each iteration solves
    :math:`\\min_\\xi \\|A_S \\xi - b\\|^2/m + \\alpha\\|\\xi\\|^2` on the current support ``S``
    (``A``, ``b`` the scaled library and target) and removes the terms with
    :math:`|\\xi_j| <` ``threshold``. It stops when the support no longer changes. Columns
    that vanish at every sample are never selected.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.linspace(-1, 1, 50)
    >>> Theta = np.column_stack([np.ones_like(x), x, x**2])
    >>> np.round(stlsq(Theta, 2 * x**2, threshold=0.05), 12)
    array([0., 0., 2.])
    """
    Theta = np.asarray(Theta, dtype=float)
    z = np.asarray(z, dtype=float)
    if Theta.ndim != 2:
        raise DiscoveryError(f"Theta must be 2-D (samples, terms), got shape {Theta.shape}")
    single = z.ndim == 1
    Z = z[:, None] if single else z
    if Z.ndim != 2 or Z.shape[0] != Theta.shape[0]:
        raise DiscoveryError(f"z must have {Theta.shape[0]} rows like Theta; got shape {z.shape}")
    _check_threshold(threshold)
    if not (np.all(np.isfinite(Theta)) and np.all(np.isfinite(Z))):
        raise DiscoveryError("Theta and z must be finite")
    out = np.zeros((Theta.shape[1], Z.shape[1]))
    for j in range(Z.shape[1]):
        s, zs, active = _scales(Theta, Z[:, j], normalize)
        xi, _ = _stlsq_scaled(Theta / s, Z[:, j] / zs, threshold, alpha, max_iter, unbias,
                              active)
        out[:, j] = xi * zs / s
    return out[:, 0] if single else out


def _check_threshold(threshold):
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)) \
            or not math.isfinite(threshold) or threshold < 0:
        raise OptionError(f"threshold must be a finite number >= 0 or 'auto', got {threshold!r}")


_CRITERIA = ("aic", "aicc", "bic", "cv")


@dataclass(frozen=True)
class STLSQ:
    """Sequentially thresholded least squares, with a fixed or an automatic threshold.

    Parameters
    ----------
    threshold : float, "auto" or sequence of float
        A float: the smallest relative contribution of a kept term (see :func:`stlsq`).
        ``"auto"``: scan a path of thresholds and keep the one ``criterion`` prefers. A
        sequence: scan those thresholds.
    criterion : {"bic", "aic", "aicc", "cv"}
        How ``"auto"`` chooses. For the information criteria, with ``n`` the effective sample
        size, ``k`` the number of kept terms and ``MSE`` the mean squared residual,

        .. math:: \\mathrm{AIC} = n \\log \\mathrm{MSE} + 2k,\\quad
                  \\mathrm{AICc} = \\mathrm{AIC} + \\frac{2k(k+1)}{n-k-1},\\quad
                  \\mathrm{BIC} = n \\log \\mathrm{MSE} + k \\log n.

        ``"cv"``: ``n_folds``-fold cross-validation over contiguous blocks of samples, with the
        one-standard-error rule (the sparsest model whose mean validation error is within
        one standard error of the best).
    alpha : float
        Ridge penalty on the scaled coefficients.
    normalize : bool
        Threshold relative contributions (default) rather than raw coefficients.
    max_iter : int
    unbias : bool
        Refit the kept terms without the penalty.
    n_path : int
        Number of thresholds on the automatic path (log-spaced from ``min_threshold``).
    n_folds : int
        Folds for ``criterion="cv"``.
    min_threshold : float
        Lower end of the automatic path: terms carrying less than this share of the target
        (1 % by default) are never kept by ``"auto"``. Lower it only for targets known to
        sub-percent accuracy.

    Examples
    --------
    >>> import dynlearn as dl
    >>> opt = dl.STLSQ(threshold="auto", criterion="cv", n_folds=4)
    >>> opt.threshold, opt.criterion, opt.alpha
    ('auto', 'cv', 1e-06)
    """

    threshold: float | str | Sequence[float] = "auto"
    criterion: str = "bic"
    alpha: float = 1e-6
    normalize: bool = True
    max_iter: int = 20
    unbias: bool = True
    n_path: int = 60
    n_folds: int = 5
    min_threshold: float = 0.01

    def __post_init__(self):
        t = self.threshold
        if isinstance(t, str):
            if t != "auto":
                raise OptionError(f"STLSQ: threshold must be a number, a list of numbers or "
                                  f"'auto', got {t!r}")
        elif isinstance(t, Iterable):
            ts = tuple(float(v) for v in t)
            if not ts:
                raise OptionError("STLSQ: the list of thresholds is empty")
            for v in ts:
                _check_threshold(v)
            object.__setattr__(self, "threshold", ts)
        else:
            _check_threshold(t)
        if self.criterion not in _CRITERIA:
            raise OptionError(f"STLSQ: criterion must be one of {list(_CRITERIA)}, got "
                              f"{self.criterion!r}")
        if not (isinstance(self.alpha, (int, float)) and self.alpha >= 0):
            raise OptionError(f"STLSQ: alpha must be a number >= 0, got {self.alpha!r}")
        for name, lo in (("max_iter", 1), ("n_path", 2), ("n_folds", 2)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise OptionError(f"STLSQ: {name} must be an integer >= {lo}, got {v!r}")
        if not (isinstance(self.min_threshold, (int, float)) and self.min_threshold > 0):
            raise OptionError(f"STLSQ: min_threshold must be > 0, got {self.min_threshold!r}")

    # --- the path -------------------------------------------------------------------------
    def _grid(self, A, b, active) -> np.ndarray:
        if not isinstance(self.threshold, str):
            return np.array(sorted(np.atleast_1d(self.threshold)), dtype=float)
        xi = np.zeros(A.shape[1])
        xi[active] = _ridge(A[:, active], b, self.alpha)
        top = float(np.max(np.abs(xi), initial=0.0))
        if top <= self.min_threshold:
            return np.array([self.min_threshold])
        # log-spaced up to just above the largest contribution (no term left). It starts
        # at min_threshold, not 0: learned terms are never exact, and with dense samples an
        # information criterion rewards tiny terms that fit the network's own error.
        return np.geomspace(self.min_threshold, 1.01 * top, self.n_path)

    def _fit_one(self, A, b, n_eff: float) -> dict:
        m, k = A.shape
        active = np.einsum("ij,ij->j", A, A) > 0
        grid = self._grid(A, b, active)
        if isinstance(self.threshold, (int, float)):
            xi, sup = _stlsq_scaled(A, b, float(self.threshold), self.alpha, self.max_iter,
                                    self.unbias, active)
            mse = float(np.mean((A @ xi - b) ** 2))
            return dict(xi=xi, threshold=float(self.threshold), path=[
                dict(threshold=float(self.threshold), n_terms=int(sup.sum()), mse=mse,
                     score=np.nan, selected=True)])
        fits = [_stlsq_scaled(A, b, lam, self.alpha, self.max_iter, self.unbias, active)
                for lam in grid]
        mses = np.array([np.mean((A @ xi - b) ** 2) for xi, _ in fits])
        ks = np.array([sup.sum() for _, sup in fits])
        if self.criterion == "cv":
            score, se = self._cv_scores(A, b, grid, active)
            ok = np.flatnonzero(score <= score[np.argmin(score)] + se[np.argmin(score)])
            best = int(ok[np.argmax(grid[ok])])         # sparsest within one SE
        else:
            score = _information(mses, ks, n_eff, self.criterion)
            best_score = np.min(score)
            # ties (within rounding) go to the larger threshold, i.e. the sparser model
            best = int(np.flatnonzero(score <= best_score + 1e-9 * max(1.0, abs(best_score)))[-1])
        # report the middle of the run of thresholds giving the chosen support
        sup = fits[best][1]
        same = [i for i in range(len(grid)) if np.array_equal(fits[i][1], sup)]
        lo, hi = grid[min(same)], grid[max(same)]
        lam = float(math.sqrt(lo * hi) if lo > 0 else hi / 2 if hi > 0 else 0.0)
        path = [dict(threshold=float(g), n_terms=int(kk), mse=float(ms), score=float(sc),
                     selected=bool(i == best))
                for i, (g, kk, ms, sc) in enumerate(zip(grid, ks, mses, score))]
        return dict(xi=fits[best][0], threshold=lam, path=path)

    def _cv_scores(self, A, b, grid, active):
        m = A.shape[0]
        folds = np.array_split(np.arange(m), self.n_folds)
        err = np.zeros((self.n_folds, grid.size))
        for f, test in enumerate(folds):
            train = np.ones(m, bool)
            train[test] = False
            for i, lam in enumerate(grid):
                xi, _ = _stlsq_scaled(A[train], b[train], lam, self.alpha, self.max_iter,
                                      self.unbias, active)
                err[f, i] = np.mean((A[test] @ xi - b[test]) ** 2)
        return err.mean(0), err.std(0, ddof=1) / math.sqrt(self.n_folds)

    def fit(self, Theta, Z, n_effective: float | None = None) -> dict:
        """Fit every column of ``Z``; returns coefficients and the threshold path.

        Parameters
        ----------
        Theta : ndarray, shape (m, k)
        Z : ndarray, shape (m, q)
        n_effective : float, optional
            Sample size used by the information criteria (default ``m``). Dense samples of
            a smooth learned term carry far less information than their number suggests;
            :func:`recover` passes the number of measured time points.

        Returns
        -------
        dict
            ``coef`` (k, q) in original units, ``thresholds`` (q,), ``path`` (list of lists
            of dicts, one per output).
        """
        Theta = np.asarray(Theta, float)
        Z = np.asarray(Z, float)
        m = Theta.shape[0]
        n_eff = float(m if n_effective is None else n_effective)
        coef = np.zeros((Theta.shape[1], Z.shape[1]))
        thresholds, paths = [], []
        for j in range(Z.shape[1]):
            s, zs, _ = _scales(Theta, Z[:, j], self.normalize)
            r = self._fit_one(Theta / s, Z[:, j] / zs, n_eff)
            coef[:, j] = r["xi"] * zs / s
            thresholds.append(r["threshold"])
            paths.append(r["path"])
        return dict(coef=coef, thresholds=np.array(thresholds), path=paths)


def _information(mse: np.ndarray, k: np.ndarray, n: float, criterion: str) -> np.ndarray:
    # floor the MSE so that exact fits (noise-free samples) tie and the penalty decides
    mse = np.maximum(mse, 1e-14)
    base = n * np.log(mse)
    if criterion == "bic":
        return base + k * math.log(max(n, 2.0))
    aic = base + 2 * k
    if criterion == "aic":
        return aic
    denom = n - k - 1
    return np.where(denom > 0, aic + 2 * k * (k + 1) / np.where(denom > 0, denom, 1), np.inf)


def _as_optimizer(optimizer) -> STLSQ:
    if optimizer is None:
        return STLSQ()
    if isinstance(optimizer, STLSQ):
        return optimizer
    if isinstance(optimizer, (int, float)) and not isinstance(optimizer, bool):
        return STLSQ(threshold=float(optimizer))
    raise OptionError(f"optimizer must be dl.STLSQ(...) (or a threshold), got {optimizer!r}")


# =====================================================================================
# The result
# =====================================================================================
def _term_tag(term: sp.Expr) -> str:
    """A short identifier fragment for a term: x*y -> 'xy', x**2 -> 'x2', sin(x) -> 'sin_x'."""
    if term == 1:
        return "1"
    powers = term.as_powers_dict()
    if all(isinstance(b, sp.Symbol) and isinstance(e, sp.Integer) and e > 0
           for b, e in powers.items()) and sp.Mul(*(b**e for b, e in powers.items())) == term:
        items = sorted(powers.items(), key=lambda be: be[0].name)
        short = all(len(b.name) == 1 for b, _ in items)
        parts = [b.name + ("" if e == 1 else (str(e) if short else f"p{e}")) for b, e in items]
        return ("" if short else "_").join(parts)
    text = str(term)
    for a, b in (("**", "p"), ("*", ""), ("/", "_over_"), ("-", "m"), ("+", "_plus_"),
                 (".", "d"), (" ", ""), ("(", "_"), (")", ""), (",", "_")):
        text = text.replace(a, b)
    text = re.sub(r"\W", "", text)
    return re.sub(r"_+", "_", text).strip("_") or "term"


def _output_tag(name: str) -> str:
    """'nn[0]' -> 'nn0', 'dx/dt' -> 'dx'."""
    name = re.sub(r"^(d\w+)/d\w+$", r"\1", name)
    return re.sub(r"_+", "_", re.sub(r"\W", "", name.replace("/", "_")))


def _format_number(c: float, precision: int) -> str:
    return f"{c:.{precision}g}"


def _format_sum(terms, coefs, precision: int) -> str:
    parts = []
    for term, c in zip(terms, coefs):
        if c == 0:
            continue
        mag = _format_number(abs(c), precision)
        body = mag if term == 1 else f"{mag}*{term}" if not isinstance(term, sp.Add) \
            else f"{mag}*({term})"
        if not parts:
            parts.append(("-" if c < 0 else "") + body)
        else:
            parts.append(("- " if c < 0 else "+ ") + body)
    return " ".join(parts) if parts else "0"


@dataclass
class Recovery:
    """Equations recovered from learned terms (or from data, for :func:`sindy_baseline`).

    Attributes
    ----------
    outputs : list of str
        The regressed quantities: network outputs (``"nn[0]"``) or derivatives (``"dx/dt"``).
    terms : list of sympy.Expr
        The candidate terms, in library order.
    coef : ndarray, shape (n_terms, n_outputs)
        Coefficients; zero for dropped terms.
    thresholds : ndarray, shape (n_outputs,)
        The threshold used for each output (chosen, when automatic).
    score : pandas.DataFrame
        Fit quality per output: ``r2`` (coefficient of determination on every sample),
        ``rmse``, ``nrmse`` (RMSE over the RMS of the target), ``r2_trajectory`` (on the
        trajectory samples only), ``n_terms``, ``threshold`` and ``stable`` (whether the
        trajectory samples alone select the same terms; always true without region
        samples).
    path : pandas.DataFrame
        The threshold path: per output and threshold, the number of kept terms, the scaled
        mean squared residual, the criterion and which was selected.
    samples : pandas.DataFrame
        Where the terms were evaluated: time, variables, the targets and ``source``
        (``"trajectory"`` or ``"region"``).
    condition_number : float
        Of the column-scaled library at the samples; above ~1e6 the columns are nearly
        collinear and the choice between them is arbitrary.
    model : HybridModel or None
        The fitted hybrid model the terms came from.
    data : Dataset or None
        The data of the fit the terms came from (the default for :meth:`refit`).
    stderr : ndarray or None, shape (n_terms, n_outputs)
        Standard errors of the coefficients, after :meth:`refit` (NaN for dropped terms).
    fit : FitResult or None
        The final refit, after :meth:`refit`.
    dropped : list of dict
        Terms removed by :meth:`refit`: output, term, value, stderr (before removal) and
        reason (``"not significant"``, ``"negligible"``, ``"bic"`` or ``"aic"``).
    regression : Recovery or None
        After :meth:`refit` (which :func:`recover` runs by default), the sparse regression
        of the network before the refit: what the network alone says.
    """

    outputs: list
    terms: list
    coef: np.ndarray
    thresholds: np.ndarray
    score: object
    path: object
    samples: object
    condition_number: float
    model: HybridModel | None = None
    output_symbols: list = field(default_factory=list)
    states: list = field(default_factory=list)   # for derivative targets (SINDy)
    optimizer: STLSQ | None = None
    library: Library | None = None
    kind: str = "network"                         # "network" or "derivative"
    data: object = None
    fit_settings: dict = field(default_factory=dict)
    stderr: np.ndarray | None = None
    fit: object = None
    dropped: list = field(default_factory=list)
    regression: Recovery | None = field(default=None, repr=False)
    hybrid_loss: float | None = field(default=None, repr=False)
    # relative size of each term on the samples: rms(theta_i) / rms(target_j), (k, q)
    scale: np.ndarray | None = field(default=None, repr=False)
    # (library at the samples, targets, trajectory-sample mask), to rescore refits
    arrays: tuple | None = field(default=None, repr=False)

    # --- views ---------------------------------------------------------------------------
    @property
    def expressions(self) -> dict[str, sp.Expr]:
        """``{output name: sympy expression}`` in the model's symbols, float coefficients."""
        out = {}
        for j, name in enumerate(self.outputs):
            out[name] = sp.Add(*(sp.Float(float(c)) * t if t != 1 else sp.Float(float(c))
                                 for t, c in zip(self.terms, self.coef[:, j]) if c != 0))
        return out

    @property
    def coefficients(self):
        """Coefficients as a DataFrame: one row per term (named by ``str(term)``), one column
        per output; zero where a term was dropped."""
        import pandas as pd
        return pd.DataFrame(self.coef, index=[str(t) for t in self.terms],
                            columns=list(self.outputs))

    def support(self) -> dict[str, list[str]]:
        """The kept terms per output, as strings."""
        return {name: [str(t) for t, c in zip(self.terms, self.coef[:, j]) if c != 0]
                for j, name in enumerate(self.outputs)}

    def equations(self, precision: int = 3, uncertainty: bool = False) -> list[str]:
        """Readable equations, e.g. ``['nn[0] = -0.901*x*y', 'nn[1] = 0.802*x*y']``.

        Parameters
        ----------
        precision : int
            Significant digits of the coefficients.
        uncertainty : bool
            After :meth:`refit`, write each coefficient with its standard error:
            ``nn[0] = (-0.9 ± 0.0018)*x*y``.
        """
        if uncertainty and self.stderr is None:
            raise OptionError("no standard errors yet: call rec.refit(...) first")
        out = []
        for j, name in enumerate(self.outputs):
            if not uncertainty:
                out.append(f"{name} = {_format_sum(self.terms, self.coef[:, j], precision)}")
                continue
            parts = [f"({_format_number(c, precision)} ± {_format_number(se, 2)})"
                     + ("" if t == 1 else f"*{t}")
                     for t, c, se in zip(self.terms, self.coef[:, j], self.stderr[:, j]) if c != 0]
            out.append(f"{name} = " + (" + ".join(parts) if parts else "0"))
        return out

    def print(self, precision: int = 3) -> None:
        """Print the equations, one per line (PySINDy's ``model.print()``)."""
        for line in self.equations(precision):
            print(line)

    def __repr__(self) -> str:
        eqs = "; ".join(self.equations())
        r2 = ", ".join(f"{o}: {v:.4g}" for o, v in zip(self.outputs, self.score["r2"]))
        return f"Recovery({eqs}; R^2 {r2})"

    def predict(self, samples) -> np.ndarray:
        """Evaluate the recovered expressions at new samples.

        Parameters
        ----------
        samples : DataFrame or mapping name -> array
            Columns named like the symbols the terms use.

        Returns
        -------
        ndarray, shape (m, n_outputs)
        """
        syms = sorted({s for t in self.terms for s in t.free_symbols}, key=lambda s: s.name)
        cols = {str(k): np.asarray(v, float) for k, v in dict(samples).items()}
        missing = [s.name for s in syms if s.name not in cols]
        if missing:
            raise DataError(f"samples lack column(s) {missing} used by the recovered terms")
        m = len(next(iter(cols.values()))) if cols else 1
        Theta = _evaluate(self.terms, [syms], [np.array([cols[s.name] for s in syms])], m)
        return Theta @ self.coef

    # --- models -------------------------------------------------------------------------
    def parameter_names(self, prefix: str = "c") -> dict[tuple[str, str], str]:
        """The parameter name of every kept coefficient, ``{(output, term): name}``, e.g.
        ``('nn[0]', 'x*y') -> 'c_nn0_xy'``."""
        taken = set()
        if self.model is not None:
            taken |= set(self.model._names)
            taken |= {n.name for n in self.model.networks}
        else:
            taken |= {s.name for s in self.states}
            taken |= {s.name for t in self.terms for s in t.free_symbols}
        out = {}
        for j, o in enumerate(self.outputs):
            for t, c in zip(self.terms, self.coef[:, j]):
                if c == 0:
                    continue
                base = f"{prefix}_{_output_tag(o)}_{_term_tag(t)}"
                name, i = base, 2
                while name in taken:
                    name, i = f"{base}_{i}", i + 1
                taken.add(name)
                out[(o, str(t))] = name
        return out

    def _parametrised(self, prefix: str):
        names = self.parameter_names(prefix)
        exprs, params = {}, {}
        for j, o in enumerate(self.outputs):
            acc = []
            for t, c in zip(self.terms, self.coef[:, j]):
                if c == 0:
                    continue
                s = sp.Symbol(names[(o, str(t))])
                params[s] = Parameter(float(c))
                acc.append(s * t)
            exprs[o] = sp.Add(*acc)
        return exprs, params

    def to_model(self, name: str | None = None, prefix: str = "c") -> HybridModel:
        """The model with every recovered network output replaced by its recovered terms.

        Each kept coefficient becomes a new free parameter named
        ``{prefix}_{output}_{term}`` (``c_nn0_xy``), starting at the recovered value; the
        physical parameters keep their (fitted) values, bounds and ``fixed`` flags. Refit it
        with :func:`dynlearn.fit` to refine the coefficients and get their standard errors.

        For a :func:`sindy_baseline` recovery, returns the pure SINDy model
        ``d state/dt = recovered terms``.

        Parameters
        ----------
        name : str, optional
            Model name (default: the original's with ``-recovered``).
        prefix : str
            Prefix of the coefficient names.

        Returns
        -------
        HybridModel
            Without the replaced networks (pure symbolic when all outputs were recovered).
        """
        if not isinstance(prefix, str) or not prefix.isidentifier():
            raise ModelError(f"prefix must be an identifier such as 'c', got {prefix!r}")
        exprs, new_params = self._parametrised(prefix)
        if self.kind == "derivative":
            return HybridModel(states=list(self.states), params=new_params,
                               rhs={s: exprs[o] for s, o in zip(self.states, self.outputs)},
                               name=name or "sindy")
        m = self.model
        if m is None:
            raise ModelError("this recovery has no model (it came from sparse_regression); "
                             "build the model yourself from rec.expressions")
        subs = {sym: exprs[o] for sym, o in zip(self.output_symbols, self.outputs)}
        rhs = {s: e.xreplace(subs) for s, e in zip(m.states, m.rhs)}
        params = dict(m.params)
        params.update(new_params)
        new = HybridModel(states=m.states, rhs=rhs, params=params, inputs=m.inputs,
                          observables=m.observables, time=m.time,
                          name=name or f"{m.name}-recovered")
        # networks left in place (outputs not recovered) keep their fitted weights
        new._weights = {n.name: m._weights[n.name].copy() for n in new.networks}
        return new

    def refit(self, data=None, *, prune: bool = True, z: float = 2.0,
              min_contribution: float | None = None, criterion: str | None = "bic",
              max_rounds: int = 20, **fit_kwargs) -> Recovery:
        """Refit the recovered model to the data, dropping the terms the data do not support.

        Fits :meth:`to_model` with :func:`dynlearn.fit`, then, with ``prune``, eliminates
        terms backwards, one per refit:

        1. a kept term is *weak* when its coefficient is not significant,
           :math:`|c| < z\\,\\mathrm{se}(c)`, or its refitted contribution to the learned
           term is negligible (below ``min_contribution`` of its size, measured on the
           recovery's samples as in :func:`stlsq`); the weak term with the smallest
           :math:`|c|/\\mathrm{se}(c)` is dropped;
        2. when no term is weak, the sparser supports that the regression met along its
           threshold path (per output, subsets of the current one) are refitted from the
           regression's coefficients, and the one that most improves the refit's
           information ``criterion`` (the fit result's BIC or AIC) is accepted. This
           removes groups of spurious terms that compensate one another (each looks
           significant, so step 1 keeps them); removing one term at a time would not,
           since for a single term the criterion agrees with the t test.

        The regression reads the network, which carries its own errors: a network trained
        on few noisy samples hands over terms that fit those errors. Against the data they
        come out indistinguishable from zero, too small to matter, or (when several
        spurious terms compensate one another and each looks significant) not worth their
        parameters.

        Parameters
        ----------
        data : Dataset or DataFrame, optional
            Default: the data of the fit the recovery came from.
        prune : bool
            Eliminate terms (default) or just refit once.
        z : float
            Significance: ``|value| >= z * stderr`` keeps a term in step 1 (2 ~ 95 %).
        min_contribution : float, optional
            Smallest relative contribution kept (default: the optimizer's
            ``min_threshold``, 1 %).
        criterion : {"bic", "aic"} or None
            For step 2; None skips it.
        max_rounds : int
            At most this many terms are dropped.
        **fit_kwargs
            Passed to :func:`dynlearn.fit`. Defaults follow the original fit when the
            recovery came from a fit result (``loss``, ``method``, ``rtol``, ``atol``, and
            ``y0``: estimated again if it was estimated, otherwise the initial states it
            used); ``progress=False``; the optimizer is ``dl.MultipleShooting(segments=4)``
            from the regression's coefficients, the fit's default from a previous refit.

        Returns
        -------
        Recovery
            With the refitted coefficients, their standard errors (:attr:`stderr`), the
            final fit result (:attr:`fit`), the dropped terms (:attr:`dropped`, each with
            the ``reason``) and the bare regression (:attr:`regression`).

        Notes
        -----
        The refit starts from the regression's coefficients, which can be a few percent
        off. On an oscillating system that is enough to put a single-shooting simulation
        out of phase with the data (the Lotka-Volterra example starts at 10^4 times the
        noise floor in one of our runs, and Levenberg-Marquardt stops in a wrong minimum),
        hence multiple shooting by default. When the recovery came from a fit result, a
        first refit that fits the data more than 10 times worse than the hybrid model
        is reported and not pruned: the terms are incomplete or the refit is stuck.

        Examples
        --------
        >>> refined = rec.refit()                           # doctest: +SKIP
        >>> refined.equations(uncertainty=True)             # doctest: +SKIP
        ['nn[0] = (-0.9 ± 0.0018)*x*y', 'nn[1] = (0.802 ± 0.0037)*x*y']
        >>> refined.fit.params.loc["c_nn0_xy", ["value", "stderr"]]   # doctest: +SKIP
        """
        from dynlearn.errors import DynlearnError
        from dynlearn.fitting.fitter import fit as _fit
        from dynlearn.optimizers.optimizers import MultipleShooting
        data = self.data if data is None else data
        if data is None:
            raise DataError("refit() needs data=: this recovery did not come from a fit result")
        if not (isinstance(z, (int, float)) and z >= 0):
            raise OptionError(f"z must be a number >= 0, got {z!r}")
        if criterion not in ("bic", "aic", None):
            raise OptionError(f"criterion must be 'bic', 'aic' or None, got {criterion!r}")
        kwargs = {"progress": False, **self.fit_settings, **fit_kwargs}
        cutoff = (self.optimizer.min_threshold if self.optimizer is not None else 0.01) \
            if min_contribution is None else float(min_contribution)
        regression = self.regression if self.regression is not None else self

        def fit_once(model, cold: bool):
            # from the regression's values (cold) the simulation may be out of phase with
            # the data: multiple shooting; from a previous refit (warm) the default
            # (Levenberg-Marquardt) is faster and safer
            if "optimizer" in fit_kwargs or not cold:
                return _fit(model, data, **kwargs)
            try:
                return _fit(model, data, **kwargs, optimizer=MultipleShooting(segments=4))
            except DynlearnError:   # multiple shooting does not suit every problem
                return _fit(model, data, **kwargs)

        def refitted(rec, dropped, cold: bool = False):
            """rec's terms fitted to the data, or None if no fit could be solved."""
            result = fit_once(rec.to_model(), cold)
            if not np.isfinite(result.loss) and not cold:
                # the warm start (previous refit minus a term) cannot be solved: start the
                # remaining terms from the regression's values instead
                restart = np.where(rec.coef != 0, self.coef, 0.0)
                result = fit_once(rec._replace(coef=restart).to_model(), True)
            if not np.isfinite(result.loss):
                return None, result
            coef = np.zeros_like(rec.coef)
            se = np.full_like(rec.coef, np.nan)
            for (o, t), name in rec.parameter_names().items():
                i, j = rec._term_index(t), rec.outputs.index(o)
                coef[i, j] = float(result.params.loc[name, "value"])
                se[i, j] = float(result.params.loc[name, "stderr"])
            return rec._replace(coef=coef, stderr=se, fit=result, dropped=dropped,
                                regression=regression), result

        def without(rec, i, j, reason):
            coef = rec.coef.copy()
            coef[i, j] = 0.0
            entry = dict(output=rec.outputs[j], term=str(rec.terms[i]),
                         value=float(rec.coef[i, j]), stderr=float(rec.stderr[i, j]),
                         reason=reason)
            return rec._replace(coef=coef), rec.dropped + [entry]

        current, result = refitted(self, list(self.dropped), cold=True)
        if current is None:
            warnings.warn(f"the refit failed ({result.message}); returning the regression",
                          DiscoveryWarning, stacklevel=2)
            return self
        ref = self.hybrid_loss
        if prune and ref is not None and np.isfinite(ref) and current.fit.loss > 10 * max(
                ref, 1e-12):
            warnings.warn(f"the refitted equations fit the data far worse than the hybrid "
                          f"model (loss {current.fit.loss:.4g} against {ref:.4g}): the "
                          "recovered terms are incomplete or the refit is stuck in a local "
                          "minimum (try another optimizer=, or a larger library). Nothing was "
                          "pruned", DiscoveryWarning, stacklevel=2)
            prune = False
        n_dropped = 0
        while prune and n_dropped < max_rounds:
            kept = current.coef != 0
            if not kept.any():
                break
            with np.errstate(divide="ignore", invalid="ignore"):
                tval = np.where(kept, np.abs(current.coef) / current.stderr, np.inf)
            tval = np.where(np.isnan(tval), np.inf, tval)
            negligible = kept & (np.abs(current.coef) * self.scale < cutoff) \
                if self.scale is not None else np.zeros_like(kept)
            weak = (kept & (tval < z)) | negligible
            if weak.any():
                # the least significant weak term first; if the model without it cannot be
                # solved (e.g. it was holding another spurious term in check), the next one,
                # then all weak terms together
                order = [np.unravel_index(f, tval.shape) for f in
                         np.argsort(np.where(weak, tval, np.inf), axis=None)[:int(weak.sum())]]
                nxt = None
                why = np.where(negligible & (tval >= z), "negligible", "not significant")
                for i, j in order:
                    trial, dropped = without(current, i, j, str(why[i, j]))
                    nxt, result = refitted(trial, dropped)
                    if nxt is not None:
                        break
                if nxt is None and len(order) > 1:
                    trial, dropped = current, current.dropped
                    for i, j in order:
                        trial, dropped = without(trial._replace(dropped=dropped), i, j,
                                                 str(why[i, j]))
                    nxt, result = refitted(trial, dropped)
                if nxt is None:
                    warnings.warn(f"no refit without the weak terms could be solved "
                                  f"({result.message}); stopping the elimination",
                                  DiscoveryWarning, stacklevel=2)
                    break
                n_dropped += len(nxt.dropped) - len(current.dropped)
                current = nxt
                continue
            if criterion is None:
                break
            # step 2: sparser supports proposed by the regression's threshold path
            base = getattr(current.fit, criterion)
            best = None
            for j, sup, xi in self._path_supports():
                if not (sup.sum() < kept[:, j].sum() and np.all(kept[sup, j])):
                    continue
                coef = current.coef.copy()
                coef[:, j] = xi
                gone = [dict(output=self.outputs[j], term=str(self.terms[i]),
                             value=float(current.coef[i, j]),
                             stderr=float(current.stderr[i, j]), reason=criterion)
                        for i in np.flatnonzero(kept[:, j] & ~sup)]
                nxt, _ = refitted(current._replace(coef=coef), current.dropped + gone,
                                  cold=True)
                if nxt is not None and getattr(nxt.fit, criterion) < base and (
                        best is None or getattr(nxt.fit, criterion) <
                        getattr(best.fit, criterion)):
                    best = nxt
            if best is None:
                break
            n_dropped += len(best.dropped) - len(current.dropped)
            current = best
        return current._rescored()

    def _path_supports(self):
        """``(output index, support, coefficients)`` for every distinct non-empty support
        the regression met along its threshold path (recomputed from the samples)."""
        if self.arrays is None or self.optimizer is None or self.path is None:
            return []
        Theta, Z, _ = self.arrays
        opt = self.optimizer
        out = []
        for j, name in enumerate(self.outputs):
            s, zs, active = _scales(Theta, Z[:, j], opt.normalize)
            A, b = Theta / s, Z[:, j] / zs
            seen = set()
            for lam in self.path.loc[self.path.output == name, "threshold"]:
                xi, sup = _stlsq_scaled(A, b, float(lam), opt.alpha, opt.max_iter,
                                        opt.unbias, active)
                key = sup.tobytes()
                if sup.any() and key not in seen:
                    seen.add(key)
                    out.append((j, sup, xi * zs / s))
        return out

    def _rescored(self) -> Recovery:
        """The same recovery with :attr:`score` recomputed for its coefficients."""
        if self.arrays is None:
            return self
        Theta, Z, on_traj = self.arrays
        score = _score(Theta, Z, self.coef, on_traj, self.outputs, self.thresholds,
                       self.score["stable"].to_numpy())
        return self._replace(score=score)

    def _term_index(self, term: str) -> int:
        return [str(t) for t in self.terms].index(term)

    def _replace(self, **changes) -> Recovery:
        import dataclasses
        return dataclasses.replace(self, **changes)


# =====================================================================================
# Sampling and evaluation
# =====================================================================================
def _evaluate(terms, groups, values, m: int) -> np.ndarray:
    """Terms at m points: groups of symbols, values per group shaped (len(group), m)."""
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


def _lhs(n: int, d: int, rng) -> np.ndarray:
    """Latin hypercube sample of n points in [0, 1]^d."""
    u = (rng.random((n, d)) + np.arange(n)[:, None]) / n
    for j in range(d):
        u[:, j] = u[rng.permutation(n), j]
    return u


def _region_points(P: np.ndarray, n: int, region: str, rng, radius: float,
                   starts: Sequence[int] = (0,)) -> np.ndarray:
    """n points spread over the region covered by the rows of P (m, d): trajectories in
    time order, each beginning at a row listed in ``starts``."""
    lo, hi = P.min(0), P.max(0)
    span = hi - lo
    vary = span > 1e-12 * np.maximum(1.0, np.abs(hi))
    out = np.tile((lo + hi) / 2, (n, 1))
    dv = int(vary.sum())
    if dv == 0 or n == 0:
        return out
    Q = (P[:, vary] - lo[vary]) / span[vary]           # trajectories in the unit box
    if region == "box":
        out[:, vary] = lo[vary] + _lhs(n, dv, rng) * span[vary]
        return out
    if region == "tube":
        from scipy.spatial import cKDTree
        # densify the polylines so that nearest-sample distance ~ distance to the curve
        f = np.linspace(0.0, 1.0, 8, endpoint=False)[:, None, None]
        pieces = []
        for a, b in zip(starts, [*starts[1:], len(Q)]):
            q = Q[a:b]
            pieces += [(q[:-1] + f * (q[1:] - q[:-1])).reshape(-1, dv), q[-1:]]
        tree = cKDTree(np.concatenate(pieces))
        box_lo, box_w = -radius, 1.0 + 2 * radius

        def inside(c):
            return tree.query(c, distance_upper_bound=radius)[0] <= radius
    else:   # hull
        box_lo, box_w = 0.0, 1.0
        if dv == 1:
            def inside(c):
                return np.ones(len(c), bool)
        else:
            from scipy.spatial import ConvexHull, QhullError
            try:
                eq = ConvexHull(Q).equations           # a.x + b <= 0 inside
            except QhullError:
                warnings.warn("the trajectories do not span a full-dimensional region "
                              "(convex hull failed); sampling the bounding box instead",
                              DiscoveryWarning, stacklevel=4)
                out[:, vary] = lo[vary] + _lhs(n, dv, rng) * span[vary]
                return out

            def inside(c):
                return np.all(c @ eq[:, :-1].T + eq[:, -1] <= 1e-12, axis=1)
    got, need = [], n
    for _ in range(200):
        cand = box_lo + box_w * _lhs(max(4 * need, 256), dv, rng)
        keep = cand[inside(cand)][:need]
        got.append(keep)
        need -= len(keep)
        if need <= 0:
            break
    pts = np.concatenate(got)
    if len(pts) < n:   # pragma: no cover - only for extremely thin regions
        pts = np.concatenate([pts, Q[rng.integers(0, len(Q), n - len(pts))]])
    out[:, vary] = lo[vary] + pts * span[vary]
    return out


def _source_parts(source, data, y0):
    """(model, data, y0) from a FitResult-like object or a HybridModel."""
    if isinstance(source, HybridModel):
        return source, data, y0
    model = None
    for attr in ("model", "fitted_model"):
        cand = getattr(source, attr, None)
        if isinstance(cand, HybridModel):
            model = cand
            break
    if model is None:
        raise ModelError(f"recover() needs a fit result (from dl.fit) or a dl.HybridModel, got "
                         f"{type(source).__name__}")
    if data is None:
        data = getattr(source, "data", None)
    if y0 is None:
        y0 = getattr(source, "y0", None)
    return model, data, y0


def _as_float(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _fit_settings(source, y0) -> dict:
    """Defaults for Recovery.refit: the original fit's loss, solver and initial states."""
    cfg = getattr(source, "config", None)
    out = {}
    if isinstance(cfg, Mapping):
        out = {k: cfg[k] for k in ("loss", "method", "rtol", "atol") if cfg.get(k) is not None}
        if cfg.get("y0") == "estimate":
            out["y0"] = "estimate"
        elif y0 is not None:
            out["y0"] = y0
    elif y0 is not None:
        out["y0"] = y0
    return out


def _trajectories(model, data, t, y0, inputs, n_trajectory, method, rtol, atol):
    """Fitted trajectories: list of (T (m,), Y (m, n), U (m, nu) or None) and n data rows."""
    from dynlearn.objective.objective import bind_data
    from dynlearn.solve import check_times, simulate
    out = []
    if data is not None:
        if t is not None:
            raise OptionError("pass either data= or t= (with y0=), not both")
        if isinstance(y0, Mapping) or y0 is None or np.ndim(y0) == 1:
            y0_arg = y0
        else:   # one row per experiment (e.g. fitted initial states)
            from dynlearn.data.dataset import as_dataset
            y0_arg = {e.name: np.asarray(r, float) for e, r in zip(as_dataset(data), y0)}
        bound = bind_data(model, data, y0_arg)
        n_rows = 0
        for b in bound:
            n_rows += int(b.mask.any(axis=1).sum())
            T = np.linspace(b.t0, b.t[-1], n_trajectory)
            sol = simulate(model, T, b.y0, method=method, rtol=rtol, atol=atol,
                           inputs=b.inputs)
            U = b.inputs(T) if b.inputs is not None else None
            out.append((T, sol.y, U))
        return out, n_rows
    if t is None or y0 is None:
        raise DataError("recover() needs where to evaluate the learned terms: the fit result "
                        "(which carries its data), data=..., or t=... together with y0=...")
    T = check_times(t)
    if T.size < 2:
        raise DataError("t must hold at least two times")
    signal = None
    if model.inputs:
        from dynlearn.data.dataset import as_input_signal
        signal = as_input_signal(inputs, model)
    sol = simulate(model, T, y0, method=method, rtol=rtol, atol=atol, inputs=signal)
    return [(T, sol.y, signal(T) if signal is not None else None)], T.size


def _network_outputs(model, T, Y, U):
    """All network outputs at m points: (m, nz)."""
    c = model.compiled
    p, ws = model.split_theta(model.theta0)
    m = T.size
    Ug = U.T if U is not None else np.zeros((0, m))
    Z = np.empty((m, c.nz))
    for d, w in zip(c.nets, ws):
        V = d["g"].batch(m, [T], Y.T, p.tolist(), [], Ug).T
        Z[:, d["zslice"]] = d["net"].forward(w, V)
    return Z


def _default_variables(model, outputs) -> list[sp.Symbol]:
    """States, inputs and time (in that order) appearing in the inputs of the networks."""
    used = set()
    for o in outputs:
        for v in o.network.inputs:
            used |= v.free_symbols
    order = [*model.states, *model.inputs, model.time]
    return [s for s in order if s in used] or list(model.states)


def _select_outputs(model, outputs) -> list[NetworkOutput]:
    every = [o for net in model.networks for o in net.outputs]
    if outputs is None:
        return every
    if isinstance(outputs, (str, sp.Symbol)):
        outputs = [outputs]
    by_name = {o.name: o for o in every}
    chosen = []
    for o in outputs:
        key = o.name if isinstance(o, sp.Symbol) else str(o)
        if key in by_name:
            chosen.append(by_name[key])
            continue
        nets = [n for n in model.networks if n.name == key]
        if nets:
            chosen += list(nets[0].outputs)
            continue
        raise ModelError(f"outputs: {key!r} is not a network output of the model; outputs are "
                         f"{sorted(by_name)}")
    return list(dict.fromkeys(chosen))


_REGIONS = ("tube", "hull", "box", "trajectory")


def recover(source, library=None, *, optimizer: STLSQ | None = None, data=None, t=None,
            y0=None, inputs=None, outputs=None, region: str = "tube", radius: float = 0.02,
            n_trajectory: int = 200, n_region: int = 200, n_effective: float | None = None,
            refit: bool = True, z: float = 2.0, seed: int | None = 0, method: str = "RK45",
            rtol: float = 1e-8, atol: float = 1e-10) -> Recovery:
    """Recover equations for the learned network terms of a fitted hybrid model.

    Parameters
    ----------
    source : FitResult or HybridModel
        A result of :func:`dynlearn.fit` (its fitted model and data are used), or a model
        whose ``theta0`` holds trained weights (then pass ``data=`` or ``t=`` and ``y0=``).
    library : Library or list of sympy expressions, optional
        Candidate terms (default ``polynomial_library(2)`` of the variables the networks
        see). Terms may use the model's states, inputs, time and parameters (evaluated at
        their fitted values).
    optimizer : STLSQ or float, optional
        Sparse regression settings; default ``STLSQ(threshold="auto", criterion="bic")``. A
        number is a fixed threshold.
    data : Dataset or DataFrame, optional
        Experiments whose time spans and initial states define the trajectories (default:
        the fit result's data).
    t : array_like, optional
        Instead of ``data``: the times of one trajectory (then ``y0`` is required).
    y0 : array_like or dict, optional
        Initial state of that trajectory; with ``data``, the initial state of every
        experiment or a dict per experiment (default: the fit result's initial states, else
        each experiment's first row).
    inputs : InputSignal or DataFrame, optional
        Input values for a model with inputs, when ``t`` is given.
    outputs : list of str, optional
        Only these network outputs (``"nn[0]"``) or networks (``"nn"``); default all.
    region : {"tube", "hull", "box", "trajectory"}
        Where to add samples besides the trajectories. Samples along a few trajectories can
        make nearly collinear library columns (on a circular orbit ``1``, ``x**2`` and
        ``y**2`` are exactly dependent), which invites spurious terms; points off the
        trajectories break such dependencies. But a network is only trained on the states
        its trajectories visit: off them it extrapolates, and its values there are not the
        missing physics. ``"tube"`` (default) samples within ``radius`` of the
        trajectories, ``"hull"`` inside their convex hull, ``"box"`` inside their bounding
        box (both dangerous for networks trained on one orbit), ``"trajectory"`` nowhere
        else.
    radius : float
        Half-width of the tube, as a fraction of each variable's range.
    n_trajectory : int
        Samples per trajectory (evenly spaced in time).
    n_region : int
        Samples spread over the region (Latin hypercube, rejected outside it).
    n_effective : float, optional
        Sample size of the information criteria; default the number of measured time
        points, since that is how much information the network learned from.
    refit : bool
        When the data are known (a fit result, or ``data=``), refit the recovered terms to
        the data and drop those the data do not support (:meth:`Recovery.refit`, with
        significance ``z`` and the original fit's settings). The regression reads the
        network, which carries its own errors (an over-fitted network hands over small
        spurious terms); the refit asks the data. The bare regression stays available as
        ``rec.regression``. ``refit=False`` returns the regression alone.
    z : float
        Significance for the refit: terms with ``|value| < z * stderr`` are dropped.
    seed : int, optional
        Seeds the region samples.
    method, rtol, atol
        Solver settings for the trajectories.

    Returns
    -------
    Recovery

    Raises
    ------
    ModelError
        The model has no networks, the library is empty, or a term uses an unknown symbol.

    Warns
    -----
    DiscoveryWarning
        When the scaled library is nearly singular on the samples, or a recovered
        expression explains less than 90 % of the variance of the learned term.

    Notes
    -----
    For every network output :math:`z_i = N_i(g(t, y, u; p); w)` the samples
    :math:`(X_s, z_i(X_s))` are regressed onto the library :math:`\\Theta(X_s)` with STLSQ
    (see the module docstring for the scaling). The samples are the fitted trajectories
    at ``n_trajectory`` times per experiment plus ``n_region`` points of the chosen region
    (Latin hypercube in the scaled bounding box, rejected outside the tube or the convex
    hull); for those points time is drawn uniformly over the data's span. Then, with
    ``refit``, the recovered model is refitted to the data with backward elimination of
    unsupported terms (:meth:`Recovery.refit`).

    Examples
    --------
    >>> rec = dl.recover(result, library=dl.polynomial_library(degree=2))  # doctest: +SKIP
    >>> rec.equations(uncertainty=True)                                     # doctest: +SKIP
    ['nn[0] = (-0.9 ± 0.0018)*x*y', 'nn[1] = (0.802 ± 0.0037)*x*y']
    >>> rec.regression.equations()        # the network alone               # doctest: +SKIP
    ['nn[0] = -0.945*x*y', 'nn[1] = 0.839*x*y']
    >>> refit = dl.fit(rec.to_model(), result.data)                        # doctest: +SKIP
    """
    model, data, y0 = _source_parts(source, data, y0)
    settings = _fit_settings(source, y0)
    if not model.networks:
        raise ModelError(f"model '{model.name}' has no networks: there is no learned term to "
                         "recover. recover() turns a fitted network back into equations; for "
                         "equations straight from data use dl.sindy_baseline(data, library)")
    opt = _as_optimizer(optimizer)
    if region not in _REGIONS:
        raise OptionError(f"region must be one of {list(_REGIONS)}, got {region!r}")
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not radius > 0:
        raise OptionError(f"radius must be a number > 0 (a fraction of each variable's range), "
                          f"got {radius!r}")
    for name, v, lo in (("n_trajectory", n_trajectory, 2), ("n_region", n_region, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise OptionError(f"{name} must be an integer >= {lo}, got {v!r}")
    outs = _select_outputs(model, outputs)
    variables = _default_variables(model, outs)
    allowed = {s.name: s for s in (*model.states, *model.inputs, model.time,
                                   *model.param_symbols)}
    terms = _library_terms(library, variables, allowed,
                           "the model's states, inputs, time and parameters")

    trajs, n_rows = _trajectories(model, data, t, y0, inputs, n_trajectory, method, rtol, atol)
    nu = len(model.inputs)
    T = np.concatenate([tr[0] for tr in trajs])
    Y = np.concatenate([tr[1] for tr in trajs])
    U = np.concatenate([tr[2] for tr in trajs]) if nu else None
    source_tag = np.array(["trajectory"] * T.size, dtype=object)
    if region != "trajectory" and n_region > 0:
        rng = np.random.default_rng(seed)
        P = np.column_stack([Y] + ([U] if nu else []))
        starts = np.cumsum([0] + [len(tr[0]) for tr in trajs[:-1]])
        R = _region_points(P, n_region, region, rng, radius, list(starts))
        TR = rng.uniform(T.min(), T.max(), n_region)
        T = np.concatenate([T, TR])
        Y = np.concatenate([Y, R[:, :model.n_states]])
        if nu:
            U = np.concatenate([U, R[:, model.n_states:]])
        source_tag = np.concatenate([source_tag, np.array(["region"] * n_region, dtype=object)])
    m = T.size
    Z_all = _network_outputs(model, T, Y, U)
    every = [o for net in model.networks for o in net.outputs]
    Z = Z_all[:, [every.index(o) for o in outs]]
    if not np.all(np.isfinite(Z)):
        raise DiscoveryError("the network outputs are not finite at some samples; check the "
                             "fitted weights")
    p = model.split_theta(model.theta0)[0]
    groups = [[model.time], list(model.states), list(model.param_symbols), list(model.inputs)]
    values = [T[None, :], Y.T, np.tile(p[:, None], (1, m)),
              U.T if nu else np.zeros((0, m))]
    Theta = _evaluate(terms, groups, values, m)

    import pandas as pd
    cols = {model.time.name: T}
    cols.update({s.name: Y[:, i] for i, s in enumerate(model.states)})
    if nu:
        cols.update({u.name: U[:, i] for i, u in enumerate(model.inputs)})
    cols.update({o.name: Z[:, i] for i, o in enumerate(outs)})
    cols["source"] = source_tag
    samples = pd.DataFrame(cols)
    n_eff = n_rows if n_effective is None else float(n_effective)
    rec = _regress(Theta, Z, terms, [o.name for o in outs], opt, n_eff, samples,
                   source_tag == "trajectory", model=model, output_symbols=list(outs),
                   library=_as_library(library), check_stability=region != "trajectory",
                   data=data, fit_settings=settings,
                   hybrid_loss=None if isinstance(source, HybridModel) else
                   _as_float(getattr(source, "loss", None)))
    if refit and data is not None and rec.coef.any():
        rec = rec.refit(z=z)
    return rec


def _regress(Theta, Z, terms, names, opt: STLSQ, n_eff, samples, on_traj,
             check_stability: bool = False, **extra):
    import pandas as pd
    m = Theta.shape[0]
    if m <= len(terms):
        warnings.warn(f"only {m} samples for {len(terms)} candidate terms; the regression is "
                      "underdetermined", DiscoveryWarning, stacklevel=3)
    res = opt.fit(Theta, Z, n_effective=n_eff)
    coef = res["coef"]
    stable = np.ones(len(names), bool)
    if check_stability and on_traj.sum() > len(terms):
        # the same regression on the trajectory samples alone: if the kept terms differ,
        # the answer depends on where the network is sampled and should not be trusted
        alone = opt.fit(Theta[on_traj], Z[on_traj], n_effective=n_eff)["coef"]
        stable = np.all((alone != 0) == (coef != 0), axis=0)
        for j in np.flatnonzero(~stable):
            other = [str(t) for t, c in zip(terms, alone[:, j]) if c != 0]
            warnings.warn(f"the terms recovered for {names[j]} depend on where the network is "
                          f"sampled: the trajectories alone give {other or ['nothing']}. The "
                          "network is probably extrapolating off its trajectories (try "
                          "region='trajectory' or a smaller radius) or the library columns are "
                          "nearly collinear there", DiscoveryWarning, stacklevel=3)
    # diagnostics
    s = np.sqrt(np.einsum("ij,ij->j", Theta, Theta) / m)
    live = s > 0
    sv = np.linalg.svd(Theta[:, live] / s[live], compute_uv=False) if live.any() else [1.0]
    cond = float(sv[0] / sv[-1]) if sv[-1] > 0 else math.inf
    score = _score(Theta, Z, coef, on_traj, names, res["thresholds"], stable)
    for name, r2 in zip(names, score["r2"]):
        if r2 < 0.9:
            warnings.warn(f"the recovered expression for {name} explains only R^2 = {r2:.3f} of "
                          "the learned term: the library lacks the right terms, the threshold is "
                          "too high, or the network has not learned a clean term (check that the "
                          "hybrid fit reaches the noise level). Refit the recovered model before "
                          "trusting it", DiscoveryWarning, stacklevel=3)
    if cond > 1e6:
        warnings.warn(f"the library columns are nearly collinear on the samples (condition "
                      f"number {cond:.2g}): terms can stand in for each other and the selected "
                      "ones may be arbitrary. Spread the samples (a wider region='tube'), add "
                      "experiments or shrink the library", DiscoveryWarning, stacklevel=3)
    zrms = np.sqrt(np.mean(Z * Z, axis=0))
    scale = s[:, None] / np.where(zrms > 0, zrms, 1.0)[None, :]
    path = pd.DataFrame([dict(output=name, **row) for name, p in zip(names, res["path"])
                         for row in p])
    return Recovery(outputs=list(names), terms=list(terms), coef=coef,
                    thresholds=np.asarray(res["thresholds"]), score=score, path=path,
                    samples=samples, condition_number=cond, optimizer=opt, scale=scale,
                    arrays=(Theta, Z, on_traj), **extra)


def _score(Theta, Z, coef, on_traj, names, thresholds, stable):
    """Fit quality per output of ``Theta @ coef`` against the sampled targets ``Z``."""
    import pandas as pd
    pred = Theta @ coef
    rows = []
    for j in range(len(names)):
        z, zh = Z[:, j], pred[:, j]
        rms = float(np.sqrt(np.mean(z * z)))
        rmse = float(np.sqrt(np.mean((z - zh) ** 2)))
        rows.append(dict(r2=_r2(z, zh), rmse=rmse, nrmse=rmse / rms if rms > 0 else 0.0,
                         r2_trajectory=_r2(z[on_traj], zh[on_traj]) if on_traj.any() else np.nan,
                         n_terms=int(np.count_nonzero(coef[:, j])),
                         threshold=float(thresholds[j]), stable=bool(stable[j])))
    return pd.DataFrame(rows, index=pd.Index(list(names), name="output"))


def _r2(z, zh) -> float:
    ss = float(np.sum((z - z.mean()) ** 2))
    res = float(np.sum((z - zh) ** 2))
    if ss == 0:
        return 1.0 if res == 0 else 0.0
    return 1.0 - res / ss


def sparse_regression(samples, targets, library=None, *, variables: Sequence | None = None,
                      optimizer: STLSQ | None = None,
                      n_effective: float | None = None) -> Recovery:
    """Sparse regression of given targets onto a library: the core of :func:`recover`.

    Parameters
    ----------
    samples : DataFrame or mapping name -> array, each of shape (m,)
        Values of the variables.
    targets : DataFrame, mapping name -> array (m,), or array (m,) / (m, q)
        What to explain; named ``"z"`` / ``"z0", "z1", ...`` when unnamed.
    library : Library or list of sympy expressions, optional
        Default ``polynomial_library(2)`` of ``variables``.
    variables : sequence of sympy.Symbol or str, optional
        The symbols of the sample columns (default: every column, as ``Symbol(name)``).
    optimizer : STLSQ, optional
    n_effective : float, optional
        Sample size for the information criteria (default ``m``).

    Returns
    -------
    Recovery
        Without a model (``to_model`` is not available).
    """
    import pandas as pd
    if isinstance(samples, pd.DataFrame):
        cols = {str(c): samples[c].to_numpy(float) for c in samples.columns}
    elif isinstance(samples, Mapping):
        cols = {str(k): np.asarray(v, float) for k, v in samples.items()}
    else:
        raise DataError("samples must be a DataFrame or a dict {name: values}")
    if variables is None:
        variables = [sp.Symbol(c) for c in cols]
    variables = _check_variables(variables, "sparse_regression") or []
    missing = [v.name for v in variables if v.name not in cols]
    if missing:
        raise DataError(f"samples lack column(s) {missing}")
    X = np.array([cols[v.name] for v in variables])
    if X.ndim != 2:
        raise DataError("sample columns must be 1-D arrays of equal length")
    m = X.shape[1]
    if isinstance(targets, pd.DataFrame):
        names, Z = [str(c) for c in targets.columns], targets.to_numpy(float)
    elif isinstance(targets, Mapping):
        names = [str(k) for k in targets]
        Z = np.column_stack([np.asarray(v, float) for v in targets.values()])
    else:
        Z = np.asarray(targets, float)
        Z = Z[:, None] if Z.ndim == 1 else Z
        names = ["z"] if Z.shape[1] == 1 else [f"z{i}" for i in range(Z.shape[1])]
    if Z.shape[0] != m:
        raise DataError(f"targets have {Z.shape[0]} rows but samples have {m}")
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(Z))):
        raise DataError("samples and targets must be finite (drop rows with NaN)")
    terms = _library_terms(library, variables, {v.name: v for v in variables},
                           "the sample variables")
    Theta = _evaluate(terms, [variables], [X], m)
    frame = pd.DataFrame({**{v.name: X[i] for i, v in enumerate(variables)},
                          **{n: Z[:, i] for i, n in enumerate(names)}})
    return _regress(Theta, Z, terms, names, _as_optimizer(optimizer),
                    m if n_effective is None else n_effective, frame, np.ones(m, bool),
                    library=_as_library(library))


def sindy_baseline(data, library=None, *, states: Sequence | None = None,
                   optimizer: STLSQ | None = None) -> Recovery:
    """Plain SINDy: regress finite-difference derivatives of the data onto a library.

    This is the baseline the UDE workflow is measured against: with noisy, sparse
    samples the derivatives are poor and so are the recovered equations.

    Parameters
    ----------
    data : Dataset or DataFrame
        Every state measured at every time (first column time for a DataFrame).
    library : Library or list of sympy expressions, optional
        Default ``polynomial_library(2)`` of the states.
    states : sequence of sympy.Symbol or str, optional
        The state symbols (pass ``model.states`` so that the expressions use the model's
        symbols); default every data column.
    optimizer : STLSQ, optional

    Returns
    -------
    Recovery
        Outputs ``"dx/dt"``, ...; ``to_model()`` gives the SINDy model.

    Notes
    -----
    Derivatives are second-order central differences (one-sided at the ends; non-uniform
    grids allowed), per experiment: :math:`\\dot x_i \\approx (x_{i+1} - x_{i-1}) /
    (t_{i+1} - t_{i-1})` on a uniform grid. Noise of size :math:`\\sigma` on samples
    :math:`h` apart gives derivative errors of size :math:`\\sigma/(\\sqrt 2 h)`.
    """
    import pandas as pd

    from dynlearn.data.dataset import as_dataset
    data = as_dataset(data)
    if states is None:
        names = list(dict.fromkeys(c for e in data for c in e.columns))
        states = [sp.Symbol(c) for c in names]
    states = _check_variables(states, "sindy_baseline") or []
    X, dX, T = [], [], []
    for e in data:
        missing = [s.name for s in states if s.name not in e.columns]
        if missing:
            raise DataError(f"experiment '{e.name}' lacks column(s) {missing}; SINDy needs every "
                            "state measured")
        Xe = np.column_stack([e.columns[s.name] for s in states])
        if not np.all(np.isfinite(Xe)):
            raise DataError(f"experiment '{e.name}' has missing values; SINDy needs every state "
                            "at every time (interpolate or drop rows first)")
        if Xe.shape[0] < 3:
            raise DataError(f"experiment '{e.name}' has {Xe.shape[0]} rows; finite differences "
                            "need at least 3")
        X.append(Xe)
        dX.append(np.gradient(Xe, e.t, axis=0, edge_order=2))
        T.append(e.t)
    X, dX, T = np.concatenate(X), np.concatenate(dX), np.concatenate(T)
    m = X.shape[0]
    terms = _library_terms(library, states, {s.name: s for s in states}, "the states")
    Theta = _evaluate(terms, [states], [X.T], m)
    outs = [f"d{s.name}/dt" for s in states]
    frame = pd.DataFrame({data.time_name: T, **{s.name: X[:, i] for i, s in enumerate(states)},
                          **{o: dX[:, i] for i, o in enumerate(outs)}})
    return _regress(Theta, dX, terms, outs, _as_optimizer(optimizer), m, frame,
                    np.ones(m, bool), states=list(states), kind="derivative",
                    library=_as_library(library))


# =====================================================================================
# Extrapolation
# =====================================================================================
def physics_only(model: HybridModel, name: str | None = None) -> HybridModel:
    """The model with every network output set to zero: the known physics alone."""
    subs = {o: sp.Integer(0) for net in model.networks for o in net.outputs}
    return HybridModel(states=model.states, rhs={s: e.xreplace(subs)
                                                 for s, e in zip(model.states, model.rhs)},
                       params=model.params, inputs=model.inputs, observables=model.observables,
                       time=model.time, name=name or f"{model.name}-physics")


def _reference_frame(reference, t, y0, method, rtol, atol):
    import pandas as pd

    from dynlearn.data.dataset import Dataset, Experiment
    from dynlearn.solve import Solution, simulate
    if isinstance(reference, HybridModel):
        if t is None:
            raise DataError("t is required when the reference is a model")
        return simulate(reference, t, y0, method="DOP853", rtol=min(rtol, 1e-10),
                        atol=min(atol, 1e-12)).to_frame()
    if isinstance(reference, Solution):
        return reference.to_frame()
    if isinstance(reference, Dataset):
        return reference[0].to_frame(reference.time_name)
    if isinstance(reference, Experiment):
        return reference.to_frame()
    if isinstance(reference, pd.DataFrame):
        return reference
    raise DataError("reference must be a HybridModel (the truth), a Solution, a Dataset or a "
                    f"DataFrame whose first column is time; got {type(reference).__name__}")


def compare_extrapolation(models: Mapping[str, HybridModel], t, y0, reference, *,
                          t_split: float | None = None, method: str = "RK45",
                          rtol: float = 1e-8, atol: float = 1e-10, inputs=None):
    """Simulate several models past the data and compare each with a reference.

    Parameters
    ----------
    models : mapping name -> HybridModel
        E.g. ``{"recovered": refit.model, "hybrid": result.model, "physics only":
        dl.physics_only(result.model)}``; each simulated at its ``theta0``.
    t : array_like
        Output times (default: the reference's times, for a data reference).
    y0 : array_like, shape (n_states,)
    reference : HybridModel, Solution, Dataset or DataFrame
        The truth: a model (simulated at tight tolerance) or held-out measurements (time
        column first, then columns named like states or observables).
    t_split : float, optional
        End of the training range: errors are reported separately for ``t <= t_split``
        (``rmse_within``) and ``t > t_split`` (``rmse_beyond``). Default: every time counts
        as beyond.
    method, rtol, atol, inputs
        Passed to :func:`dynlearn.simulate`.

    Returns
    -------
    pandas.DataFrame
        One row per model: ``rmse_within``, ``rmse_beyond``, ``max_error_beyond``,
        ``relative_beyond`` (RMSE over the RMS of the reference beyond ``t_split``),
        ``t_reached`` (the last output time reached: earlier than ``t[-1]`` when the model
        blows up) and ``success``. Times not reached count as infinite errors. RMSEs are over every
        compared column (states and observables present in the reference). The simulated
        trajectories are in ``df.attrs["trajectories"]``.
    """
    import pandas as pd

    from dynlearn.solve import simulate
    if not isinstance(models, Mapping) or not models:
        raise OptionError("models must be a non-empty dict {name: HybridModel}")
    ref = _reference_frame(reference, t, y0, method, rtol, atol)
    tcol = ref.columns[0]
    t = ref[tcol].to_numpy(float) if t is None else np.asarray(t, float)
    tref = ref[tcol].to_numpy(float)
    rows, trajs = {}, {}
    for name, model in models.items():
        if not isinstance(model, HybridModel):
            raise OptionError(f"models['{name}'] is a {type(model).__name__}, not a HybridModel")
        sol = simulate(model, t, y0, method=method, rtol=rtol, atol=atol, inputs=inputs,
                       throw=False)
        frame = sol.to_frame()
        trajs[name] = frame
        cols = [c for c in frame.columns[1:] if c in ref.columns]
        if not cols:
            raise DataError(f"model '{name}' has no state or observable named like a reference "
                            f"column {list(ref.columns[1:])}")
        # reference values at the model's times (interpolated for a data reference)
        R = np.column_stack([np.interp(t, tref, ref[c].to_numpy(float)) for c in cols])
        Yfull = np.full((t.size, len(cols)), np.nan)
        Yfull[:sol.t.size] = frame[cols].to_numpy(float)
        within = t <= t_split if t_split is not None else np.zeros(t.size, bool)
        beyond = ~within
        with np.errstate(all="ignore"):
            err = Yfull - R
            failed = ~np.all(np.isfinite(err), axis=1)
            err = np.where(np.isfinite(err), err, np.inf)
            rmse_in = float(np.sqrt(np.mean(err[within] ** 2))) if within.any() else np.nan
            rmse_out = float(np.sqrt(np.mean(err[beyond] ** 2))) if beyond.any() else np.nan
            max_out = float(np.max(np.abs(err[beyond]))) if beyond.any() else np.nan
            ref_rms = float(np.sqrt(np.mean(R[beyond] ** 2))) if beyond.any() else np.nan
        rows[name] = dict(rmse_within=rmse_in, rmse_beyond=rmse_out, max_error_beyond=max_out,
                          relative_beyond=rmse_out / ref_rms if ref_rms else np.nan,
                          t_reached=float(sol.t[-1]) if sol.t.size else float(t[0]),
                          success=bool(sol.success and not failed.any()))
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "model"
    out.attrs["trajectories"] = trajs
    return out
