"""Compiling sympy expressions into fast numerical functions, and differentiating them.

Each list of expressions is compiled twice, once per use:

* a *scalar* function for the solver's hot path: arguments are Python lists of floats and
  the code uses the ``math`` module (sub-microsecond for small models, about three times
  faster than numpy scalars);
* a *batch* function over many points at once (numpy, broadcasting), used by the adjoint
  sweeps that evaluate Jacobians at every stage of every step in one call.

Both come from ``sympy.lambdify`` with common-subexpression elimination. Only sympy
expression objects are compiled, never user strings (see :mod:`dynlearn.io` for parsing).

Jacobians that the solvers call every step (``df/dy``, ``df/dtheta``, and the three with
``f`` in one call) are compiled by :func:`jacobian_program` (``CompiledExprs(..., wrt=...)``):
the chain rule through the equations' shared subexpressions, so that a rate law shared by
many equations is differentiated once instead of in every entry.

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
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import sympy as sp
from scipy import special

from dynlearn.errors import ModelError

__all__ = ["KINK_FUNCTIONS", "LAMBDIFIED_CACHE_SIZE", "NAMESPACES", "CompiledExprs",
           "JacobianProgram", "Lambdified", "MaxPick", "MinPick", "derivative",
           "jacobian_exprs", "jacobian_program"]


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


class JacobianProgram:
    """Straight-line code for expressions and their Jacobians that keeps the expressions'
    shared subexpressions when differentiating (see :func:`jacobian_program`).

    Attributes
    ----------
    defs : list of (sympy.Symbol, sympy.Expr)
        Assignments in the order they are evaluated: the common subexpressions of the
        expressions, the partial derivatives of each with respect to what it is built of,
        and their total derivatives with respect to the ``wrt`` symbols.
    outputs : list of sympy.Expr
        The results, in terms of the arguments and the symbols of ``defs``.
    """

    def __init__(self, defs: list, outputs: list):
        self.defs = defs
        self.outputs = outputs

    def cse(self, exprs: Sequence[sp.Expr]) -> tuple[list, list]:
        """Assignments computing ``exprs`` (some of :attr:`outputs`, e.g. the non-zero
        ones), and ``exprs`` in terms of them: the ``cse`` argument of ``sympy.lambdify``.

        The assignments are ``defs`` with the common subexpressions of all of them and of
        ``exprs`` taken out (the partial derivatives of different subexpressions share
        factors), ordered so that each comes after those it uses."""
        exprs = list(exprs)
        names = [s for s, _ in self.defs]
        repl, reduced = sp.cse([e for _, e in self.defs] + exprs,
                               symbols=sp.numbered_symbols("x"))
        nd = len(names)
        assigns = dict(repl)
        assigns.update(zip(names, reduced[:nd]))
        # an assignment of a symbol or a number (a derivative equal to another one) costs
        # a Python statement per call: use its value in place
        alias: dict = {}
        for s, e in list(assigns.items()):
            if e.is_Atom:
                while e in alias:
                    e = alias[e]
                alias[s] = e
                del assigns[s]
        reduced = reduced[nd:]
        if alias:
            # chains (a -> b -> c) resolved at the end: b's own entry may come later
            for s in alias:
                e = alias[s]
                while e in alias:
                    e = alias[e]
                alias[s] = e
            memo: dict = {}
            assigns = {s: _rename(e, alias, memo) for s, e in assigns.items()}
            reduced = [_rename(e, alias, memo) for e in reduced]
        roots = sorted({u for e in reduced for u in e.free_symbols if u in assigns},
                       key=sp.default_sort_key)
        order = _schedule(assigns, roots)
        # an assignment used once is written where it is used: the same operations in the
        # same order, one Python statement fewer per call (the chain rule leaves many)
        uses: dict = {}
        for e in [e for _, e in order] + reduced:
            for u in sp.preorder_traversal(e):    # every occurrence, x*x counts twice
                if u.is_Symbol and u in assigns:
                    uses[u] = uses.get(u, 0) + 1
        once = {s for s, _ in order if uses.get(s) == 1}
        if once:
            table: dict = {}
            memo = {}
            kept = []
            for s, e in order:
                e = _rename(e, table, memo)
                if s in once:
                    table[s] = e
                else:
                    kept.append((s, e))
            order = kept
            reduced = [_rename(e, table, memo) for e in reduced]
        return order, reduced


def _schedule(assigns: dict, roots: list) -> list:
    """The assignments of ``assigns`` (symbol -> expression) that ``roots`` need, as a
    list in which each comes after those whose symbols it uses (a depth-first topological
    order, without recursion). Assignments nothing needs are left out: the values of the
    common subexpressions when only derivatives are asked for, say."""
    out = []
    done = set()
    for root in roots:
        if root in done:
            continue
        stack = [(root, False)]
        while stack:
            s, expanded = stack.pop()
            if s in done:
                continue
            if expanded:
                done.add(s)
                out.append((s, assigns[s]))
                continue
            stack.append((s, True))
            for u in sorted(assigns[s].free_symbols, key=sp.default_sort_key,
                            reverse=True):
                if u in assigns and u not in done:
                    stack.append((u, False))
    return out


#: products of at least this many factors that depend on the symbols differentiated for
#: are evaluated as a tree of pairwise products by :func:`jacobian_program`: the k - 1
#: products of k - 2 factors each that the derivatives need directly cost more than the
#: tree's ~k log2(k) from five factors on (a mass-action term k x y has three)
_TREE_FACTORS = 5


def _worth_chaining(e: sp.Expr, wset: set) -> bool:
    """Whether :func:`jacobian_program` differentiates the shared subexpression ``e`` once
    and uses its derivatives (the chain rule), rather than differentiating it where it is
    used: a function (``exp``, ``Piecewise``, ``Max``, ...), a power other than an integer
    power of a symbol, or a product of three or more factors one of which is such a node
    or a sum (a saturating rate law: each derivative of it is again a long product), that
    depends on the symbols ``wset`` differentiated for (a switch in time alone, say, has
    no derivative to share)."""
    if e.is_Atom or e.is_Add or not isinstance(e, sp.Expr) or not e.free_symbols & wset:
        return False
    if e.is_Pow:
        return not (e.base.is_Atom and e.exp.is_Integer)
    if e.is_Mul:
        factors = [a for a in e.args if not a.is_Number]
        return len(factors) >= 3 and any(
            _worth_chaining(a, wset) or (a.is_Add and a.free_symbols & wset) for a in factors)
    return True


def jacobian_program(exprs: Sequence[sp.Expr], wrt: Sequence[Sequence[sp.Symbol]],
                     values: bool = True) -> JacobianProgram:
    """``exprs`` (when ``values``) followed by their Jacobians with respect to each sequence
    of symbols in ``wrt`` (row-major, ``d exprs[i] / d w[j]``), as a program that
    differentiates through the expressions' common subexpressions.

    Differentiating each expression whole (:func:`jacobian_exprs`) repeats what the
    expressions share in every derivative: a rate law of seven saturating factors appears in
    ten equations, and each of its derivatives is again a product of sixteen factors, which
    ``cse`` cannot share because each leaves out a different one. Here the expressions are
    first split into their common subexpressions ``w_k = e_k(args, w_1..w_{k-1})``; each
    ``w_k`` gets its partial derivatives with respect to what it is built of and, by the
    chain rule, its total derivative ``dw_k/ds = sum_u (de_k/du) (du/ds)`` with respect to
    each symbol ``s`` it depends on, as one more assignment; an output's derivative is then
    a short sum over the ``w_k`` it uses. The result is mathematically that of
    :func:`jacobian_exprs` (the same rules, :func:`derivative`'s at kinks), in another
    order of operations.

    Where a total derivative can be exactly zero on a region through a kink function or
    ``Piecewise`` (``d Max(h, 0) / dh`` for ``h < 0``), the terms using it are zero there
    even where the partial derivative multiplying it is infinite, as in
    :func:`derivative`'s chain rule.

    Parameters
    ----------
    exprs : sequence of sympy.Expr
        The expressions.
    wrt : sequence of sequences of sympy.Symbol
        Symbols to differentiate with respect to, one sequence per Jacobian.
    values : bool
        Whether the outputs start with ``exprs`` themselves.

    Returns
    -------
    JacobianProgram
        Its ``outputs`` are ``exprs`` (if ``values``), then each Jacobian flattened.
    """
    exprs = [sp.sympify(e) for e in exprs]
    wrt = [[sp.sympify(s) for s in w] for w in wrt]
    if not all(s.is_Symbol for w in wrt for s in w):
        raise TypeError("jacobian_program differentiates with respect to symbols only")
    wset = {s for w in wrt for s in w}
    order = {s: i for i, s in enumerate(dict.fromkeys(s for w in wrt for s in w))}
    # common subexpressions, of which only those worth differentiating once are kept
    # (_worth_chaining); the others (mass-action terms k x y, and sums of them that
    # several equations share) are put back where they are used, rebuilt as sympy
    # would build them, and differentiated there as jacobian_exprs does: the chain rule
    # through them would add a statement and a product per derivative (1.3 times the
    # time on the 124-state Lang model's Jacobian), and the final cse shares what repeats.
    # Without any such node (mass action throughout) the expressions are used as they are:
    # the cse would cost a large model minutes and keep nothing.
    repl: list = []
    reduced = exprs
    if any(_worth_chaining(node, wset) for e in exprs for node in sp.preorder_traversal(e)):
        repl, reduced = sp.cse(exprs, symbols=sp.numbered_symbols("w"))
        inline: dict = {}
        kept = []
        for w, e in repl:
            e = e.xreplace(inline) if inline else e
            if _worth_chaining(e, wset):
                kept.append((w, e))
            else:
                inline[w] = e
        repl = kept
        if inline:
            reduced = [e.xreplace(inline) for e in reduced]
    defs: list = []
    deps: dict = {}          # w_k -> the wrt symbols it depends on
    total_of: dict = {}      # (w_k, s) -> dw_k/ds (a symbol of defs, or a number)
    maybe_zero: set = set()  # total derivatives that can be exactly zero through a kink
    partials: dict = {}      # (e, u) -> de/du (a symbol of defs, or an atom)
    rules: dict = {}
    dnames = sp.numbered_symbols("d")
    pnames = sp.numbered_symbols("p")

    dep_memo: dict = {}

    def depends(e):
        """the wrt symbols e depends on, directly or through the assignments so far"""
        out = dep_memo.get(e)
        if out is None:
            out = set()
            for u in e.free_symbols:
                if u in wset:
                    out.add(u)
                elif u in deps:
                    out |= deps[u]
            out = dep_memo[e] = frozenset(out)
        return out

    def partial(e, u):
        key = (e, u)
        out = partials.get(key)
        if out is None:
            if e.has(*KINK_FUNCTIONS):
                out = derivative(e, u)
            else:
                rule = rules.get(u)
                if rule is None:
                    rule = rules[u] = _PlainDerivative(u)
                out = rule(e)
            if not out.is_Atom:
                name = next(pnames)
                defs.append((name, out))
                out = name
            partials[key] = out
        return out

    symbols_of: dict = {}

    def total(e, s):
        """de/ds: the chain rule over the symbols of e that carry s, and whether it may be
        exactly zero through a kink."""
        terms = []
        masked = False
        symbols = symbols_of.get(e)
        if symbols is None:
            symbols = symbols_of[e] = sorted(e.free_symbols, key=sp.default_sort_key)
        for u in symbols:
            if u == s:
                du = sp.S.One
            else:
                du = total_of.get((u, s))
                if du is None:
                    continue
            p = partial(e, u)
            if p == 0:
                continue
            term = du if p == 1 else (p if du == 1 else sp.Mul(p, du, evaluate=False))
            if du in maybe_zero:
                # zero wherever du is, even where p is infinite (as _chain does)
                term = sp.Piecewise((term, sp.Ne(du, 0)), (0, True))
                masked = True
            terms.append(term)
        out = _plain_add(terms)
        return out, masked or (out != 0 and out.has(*_MAYBE_ZERO)) or (
            e.has(*_MAYBE_ZERO) and not e.is_Atom)

    def assign(w, e):
        """w = e, with dw/ds for every s that e depends on"""
        defs.append((w, e))
        deps[w] = depends(e)
        for s in sorted(deps[w], key=order.get):
            d, zero = total(e, s)
            if d == 0:
                continue
            if not d.is_Atom:
                name = next(dnames)
                defs.append((name, d))
                d = name
            total_of[(w, s)] = d
            if zero and not d.is_Number:
                maybe_zero.add(d)

    tnames = sp.numbered_symbols("m")
    memo = {}

    def split_products(e):
        """e with each product of _TREE_FACTORS or more factors that depend on the wrt
        symbols evaluated as a balanced tree of pairwise products, one assignment each:
        then its derivative with respect to a symbol in one factor costs a product per
        level of the tree (~log2 k), not one of the other k - 1 factors."""
        if e.is_Atom or not depends(e):
            return e
        out = memo.get(e)
        if out is not None:
            return out
        args = [split_products(a) for a in e.args]
        if e.is_Mul:
            const = [a for a in args if not depends(a)]
            level = [a for a in args if depends(a)]
            if len(level) >= _TREE_FACTORS:
                while len(level) > 1:
                    pairs = []
                    for i in range(0, len(level) - 1, 2):
                        t = next(tnames)
                        assign(t, sp.Mul(level[i], level[i + 1], evaluate=False))
                        pairs.append(t)
                    if len(level) % 2:
                        pairs.append(level[-1])
                    level = pairs
                args = const + level
        if all(n is o for n, o in zip(args, e.args)):
            out = e
        elif e.is_Add or e.is_Mul or e.is_Pow:
            out = e.func(*args, evaluate=False) if len(args) > 1 else args[0]
        else:
            out = e.func(*args)
        memo[e] = out
        return out

    for w, e in repl:
        assign(w, split_products(e))
    reduced = [split_products(e) for e in reduced]
    outputs = list(reduced) if values else []
    for group in wrt:
        for e in reduced:
            dep = depends(e)
            outputs.extend(total(e, s)[0] if s in dep else sp.S.Zero for s in group)
    return JacobianProgram(defs, outputs)


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


#: how many compiled functions of unpickled :class:`Lambdified` a process keeps (least
#: recently used out first)
LAMBDIFIED_CACHE_SIZE = 4096
_LAMBDIFIED: OrderedDict[str, Callable] = OrderedDict()
_LAMBDIFIED_LOCK = threading.Lock()


class Lambdified:
    """``sympy.lambdify(args, expr)`` that can be pickled.

    The function ``lambdify`` generates belongs to no module, so the standard ``pickle``
    cannot send it (a process pool's ``map``, ``multiprocessing``; Dask's cloudpickle can).
    This keeps the arguments and the expression, travels without the function, and
    compiles it again on its first call after unpickling, once per process: a process
    pool's ``map`` sends the same object with every task, and the tasks after the first
    find its function in the process's cache (:data:`LAMBDIFIED_CACHE_SIZE` functions,
    keyed by an identity drawn when the object is made; its copies share it, and nothing
    in it changes after).

    Parameters
    ----------
    args, expr
        As for ``sympy.lambdify``.
    modules : {"numpy", "math"}
        The module the generated code calls.
    namespace : bool
        Also dynlearn's own functions for that module (:data:`NAMESPACES`).
    cse : bool
        Common-subexpression elimination (``sympy.lambdify(cse=True)``).
    """

    def __init__(self, args, expr, modules: str = "numpy", namespace: bool = False,
                 cse: bool = False):
        self._spec = (args, expr, modules, namespace, cse)
        self._key = uuid.uuid4().hex
        self._fn = self._compile()

    def _compile(self):
        args, expr, modules, namespace, cse = self._spec
        return sp.lambdify(args, expr, cse=cse,
                           modules=[NAMESPACES[modules], modules] if namespace else modules)

    def _cached(self):
        with _LAMBDIFIED_LOCK:
            fn = _LAMBDIFIED.get(self._key)
            if fn is not None:
                _LAMBDIFIED.move_to_end(self._key)
                return fn
        fn = self._compile()            # outside the lock: compiling takes a while
        with _LAMBDIFIED_LOCK:
            _LAMBDIFIED[self._key] = fn
            while len(_LAMBDIFIED) > LAMBDIFIED_CACHE_SIZE:
                _LAMBDIFIED.popitem(last=False)
        return fn

    def __call__(self, *args):
        fn = self._fn
        if fn is None:
            fn = self._fn = self._cached()
        return fn(*args)

    def __getstate__(self):
        return {"spec": self._spec, "key": self._key}

    def __setstate__(self, state):
        self._spec, self._key = state["spec"], state["key"]
        self._fn = None


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
    wrt : sequence of sequences of sympy.Symbol, optional
        When given, the outputs are ``exprs`` (if ``values``) followed by their Jacobian
        with respect to each sequence, flattened row-major, compiled through the shared
        subexpressions by :func:`jacobian_program` (the symbols must be in ``groups``).
    values : bool
        With ``wrt``: whether the outputs start with ``exprs`` themselves.

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
    cannot collide with generated code. The new names sort as the old ones do, so products
    and sums rebuilt under them stay in sympy's canonical order, where ``cse`` finds
    their common factors.

    A point where the ``math`` module refuses (the square root of a state that a trial step
    pushed below zero, a division by zero, a power that would be complex) is evaluated with
    numpy instead, giving ``nan``/``inf``: the solver then rejects the step, or dynlearn's
    checks (:mod:`dynlearn.solve`) turn it into a :class:`~dynlearn.SolveError`.
    """

    def __init__(self, groups: Sequence[Sequence[sp.Symbol]], exprs: Sequence[sp.Expr],
                 shape: tuple[int, ...] | None = None,
                 wrt: Sequence[Sequence[sp.Symbol]] | None = None, values: bool = True):
        exprs = [sp.sympify(e) for e in exprs]
        # symbols renamed in the order sympy sorts them, so that rebuilding products and
        # sums unevaluated under the new names (_rename) leaves them in sympy's canonical
        # order: cse matches common factors of products only in that order (renaming
        # in group order hid the seven-factor rate law shared by ten of Laske's equations)
        everything = {s for group in groups for s in group}
        ranks = {s: i for i, s in enumerate(sorted(everything, key=sp.default_sort_key))}
        width = len(str(len(ranks)))
        rename = {s: sp.Symbol(f"a{i:0{width}d}") for s, i in ranks.items()}
        arg_groups = [[rename[s] for s in group] for group in groups]
        program = None
        if wrt is not None:
            memo: dict = {}
            try:
                clean = [_rename(e, rename, memo) for e in exprs]
                program = jacobian_program(clean, [[rename.get(s, s) for s in w] for w in wrt],
                                           values=values)
            except RecursionError:
                raise ModelError("an equation is nested too deeply to compile; simplify it "
                                 "or split it with intermediate states") from None
            exprs = program.outputs
        self.shape = tuple(shape) if shape is not None else (len(exprs),)
        self.size = len(exprs)
        self.is_zero = all(e == 0 for e in exprs)
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
            if program is None:
                memo = {}
                clean = [_rename(e, rename, memo) for e in exprs]
                # one common-subexpression elimination for both versions (it is most of
                # the compile time of a large model)
                shared = _once(lambda e: sp.cse(e, list=False))
            else:
                clean = exprs
                shared = _once(lambda e: program.cse(e))
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

    @property
    def nonzero(self) -> np.ndarray:
        """Positions in the flattened outputs of the entries that are compiled, in the
        order :meth:`values` returns them: every entry, or only those not structurally
        zero when at least half the outputs are (the others are zero at every point)."""
        if self._index is not None:
            return self._index
        return np.arange(self.size if self._scalar is not None else 0)

    def values(self, *args) -> np.ndarray:
        """The compiled entries (:attr:`nonzero`) at one point, flat, without scattering
        them into the full shape: for callers that gather from them with index maps of
        their own (the forward-sensitivity right-hand side)."""
        if self._scalar is None:
            return np.zeros(0)
        try:
            return np.fromiter(self._scalar(*args), dtype=float)
        except (ValueError, OverflowError, ZeroDivisionError, TypeError):
            # the math module raises where numpy returns nan/inf (sqrt of a state that a
            # trial step pushed below zero, 1/0), and Python's ** returns a complex number
            # for a negative base and a fractional exponent (TypeError here): evaluate
            # with numpy so the solver sees a non-finite value and rejects the step instead
            # of the whole solve crashing
            with np.errstate(all="ignore"):
                vals = self._batch(*[np.asarray(a, dtype=float) for a in args])
                return np.array([float(v) for v in vals], dtype=float)

    def __call__(self, *args) -> np.ndarray:
        """Evaluate at one point; arguments are lists (or 1-D arrays) per group."""
        if self._scalar is None:
            return np.zeros(self.shape)
        out = self.values(*args)
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
