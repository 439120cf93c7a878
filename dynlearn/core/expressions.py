"""Safe parsing of equations written as text (model files, ``rhs={"x": "a*x"}``).

How it works
------------
Text is parsed by Python's :func:`ast.parse` in ``"eval"`` mode, which only builds a syntax
tree and runs nothing. The tree is then walked by :func:`parse_expression`, which knows a
short list of node types and builds the sympy expression itself:

* numbers (integers and reals; no complex numbers, strings or booleans);
* names declared by the model (states, parameters, inputs, time, networks) and the
  constants ``pi`` and ``E``;
* ``+ - * / **`` and unary ``-``/``+``;
* calls of whitelisted mathematical functions by plain name (``exp(x)``), positional
  arguments only;
* network outputs ``nn[0]`` where ``nn`` is a declared network and the index an integer.

Anything else (attribute access, other subscripts, keyword arguments, lambdas,
comprehensions, comparisons, strings, calls of anything but a whitelisted function) raises a
:class:`~dynlearn.ModelError` naming the equation, the construct and its column. Nothing from
the text is ever passed to ``eval``, ``exec`` or ``sympify``, so an equation such as
``__import__('os').system('...')`` is refused before anything happens.

Names declared by the model take precedence over the built-in constants, so a parameter may
be called ``E`` or ``gamma`` (which ``sympify`` would turn into functions). A parameter may
even be named like a Python keyword (``lambda``): such names are renamed token by token before
parsing. Python's parser normalises the identifiers in an equation (Unicode NFKC: the micro
sign becomes the Greek mu); declared names are matched in that form too
(:func:`normalize_name`), and :class:`~dynlearn.HybridModel` normalises names where they are
declared.

What every accepted equation guarantees
---------------------------------------
* Parsing takes time roughly linear in the length (at most :data:`MAX_LENGTH` characters):
  chains of ``+``/``-`` and of ``*``/``/`` are built in one step, not term by term, and
  ``Max``/``Min`` of many arguments skip sympy's pairwise simplification
  (:data:`MINMAX_SIMPLIFY_LIMIT`).
* Every constant sub-expression is a finite real number of magnitude at most
  :data:`MAX_NUMBER`: ``sqrt(-1)``, ``log(0)``, ``1/0``, ``1e400``, ``exp(1000)``,
  ``(-8)**(1/3)`` are refused, naming the sub-expression, instead of producing complex,
  infinite or NaN values when the model is solved (:func:`check_constants` does the same
  for expressions built with sympy).
* Nesting is at most :data:`MAX_DEPTH` levels, so the equation and its derivatives compile
  without exhausting Python's recursion limit.
"""

from __future__ import annotations

import ast
import io
import keyword
import math
import tokenize
import unicodedata
from collections.abc import Callable, Mapping, Sequence

import sympy as sp
from sympy.core.parameters import global_parameters

from dynlearn.core.neural import BaseNetwork
from dynlearn.errors import ModelError, ModelTypeError

__all__ = ["CONSTANTS", "FUNCTIONS", "MAX_DEPTH", "MAX_LENGTH", "MAX_NUMBER", "check_constants",
           "normalize_name", "parse_expression"]

#: Longest equation accepted, in characters (keeps parsing and sympy work bounded).
MAX_LENGTH = 10_000
#: Largest absolute numeric exponent in ``a**n``; guards against ``9**9**9``.
MAX_EXPONENT = 1_000
#: Deepest nesting accepted (calls, powers, signs, parentheses around sums and products; a
#: chain ``a + b - c + ...`` or ``a * b / c * ...`` counts once): every equation within it
#: compiles, with its derivatives, without exhausting Python's recursion limit.
MAX_DEPTH = 32
#: Largest magnitude of a constant in an equation (``exp(1000)``, ``1e400`` are refused).
MAX_NUMBER = 1e300
#: sympy simplifies ``Max``/``Min`` by comparing every pair of arguments symbolically
#: (quadratic in their number, and milliseconds per pair). It does so for calls of at most
#: this many arguments, and only until an equation has used this many arguments in such
#: calls: beyond, numbers are folded into one and repeated arguments dropped (linear time);
#: the values are the same either way.
MINMAX_SIMPLIFY_LIMIT = 8
MINMAX_SIMPLIFY_BUDGET = 64
# chains of these operators are built in one call (sympy's Add) or, when long, one Mul
_ADDITIVE = (ast.Add, ast.Sub)
_MULTIPLICATIVE = (ast.Mult, ast.Div)
# a product chain up to this long is built factor by factor (exactly as before: sympy
# distributes a number over a sum only in a two-factor product); longer ones in one Mul
_MUL_FOLD_LIMIT = 16


def normalize_name(name: str) -> str:
    """A declared name in the form Python's parser gives identifiers (Unicode NFKC): the
    micro sign ``\u00b5`` becomes the Greek ``\u03bc``, ligatures are split, etc. Names are
    normalised where they are declared, so that equations written with either form find
    them."""
    return name if name.isascii() else unicodedata.normalize("NFKC", name)


class _LinearMax(sp.Max):
    """sympy's ``Max``, simplified in linear time when it has many arguments (see
    :data:`MINMAX_SIMPLIFY_LIMIT`); prints, compiles and differentiates as ``Max``."""

    def __new__(cls, *args, **kwargs):
        return _minmax_new(cls, sp.Max, max, args, kwargs)


class _LinearMin(sp.Min):
    """sympy's ``Min``, simplified in linear time when it has many arguments."""

    def __new__(cls, *args, **kwargs):
        return _minmax_new(cls, sp.Min, min, args, kwargs)


_LinearMax.__name__ = "Max"     # printed (and so written to model files) as Max(...)
_LinearMin.__name__ = "Min"


def _minmax_new(cls, base, pick, args, kwargs):
    if not kwargs.get("evaluate", global_parameters.evaluate):
        return base.__new__(cls, *args, **kwargs)
    terms, numbers = [], []
    for a in map(sp.sympify, args):
        for b in (a.args if isinstance(a, base) else (a,)):
            (numbers if b.is_Number else terms).append(b)
    if numbers:
        terms.append(pick(numbers))
    terms = list(dict.fromkeys(terms))
    if len(terms) == 1:
        return terms[0]
    return base.__new__(cls, *terms, evaluate=False)



def _heaviside(x):
    # H(0) = 1/2, the convention that keeps the derivative symmetric; explicit so it never
    # depends on the sympy version's default.
    return sp.Heaviside(x, sp.Rational(1, 2))


# name -> (sympy callable, allowed numbers of arguments; None = one or more)
FUNCTIONS: dict[str, tuple[Callable, tuple[int, ...] | None]] = {
    "exp": (sp.exp, (1,)),
    "log": (sp.log, (1, 2)),
    "ln": (sp.log, (1,)),
    "sqrt": (sp.sqrt, (1,)),
    "cbrt": (sp.cbrt, (1,)),
    "sin": (sp.sin, (1,)),
    "cos": (sp.cos, (1,)),
    "tan": (sp.tan, (1,)),
    "asin": (sp.asin, (1,)),
    "acos": (sp.acos, (1,)),
    "atan": (sp.atan, (1,)),
    "atan2": (sp.atan2, (2,)),
    "sinh": (sp.sinh, (1,)),
    "cosh": (sp.cosh, (1,)),
    "tanh": (sp.tanh, (1,)),
    "asinh": (sp.asinh, (1,)),
    "acosh": (sp.acosh, (1,)),
    "atanh": (sp.atanh, (1,)),
    "abs": (sp.Abs, (1,)),
    "Abs": (sp.Abs, (1,)),
    "sign": (sp.sign, (1,)),
    "Heaviside": (_heaviside, (1,)),
    "heaviside": (_heaviside, (1,)),
    "max": (sp.Max, None),
    "Max": (sp.Max, None),
    "min": (sp.Min, None),
    "Min": (sp.Min, None),
    "erf": (sp.erf, (1,)),
    "erfc": (sp.erfc, (1,)),
}

#: Named constants usable in equations (unless a declared name shadows them).
CONSTANTS: dict[str, sp.Expr] = {"pi": sp.pi, "E": sp.E}

_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}

# readable names for refused constructs
_REFUSED = {
    ast.Attribute: "attribute access",
    ast.Lambda: "a lambda",
    ast.ListComp: "a list comprehension",
    ast.SetComp: "a set comprehension",
    ast.DictComp: "a dict comprehension",
    ast.GeneratorExp: "a generator expression",
    ast.Compare: "a comparison",
    ast.BoolOp: "a boolean operator (and/or)",
    ast.IfExp: "a conditional expression (if/else)",
    ast.List: "a list",
    ast.Tuple: "a tuple",
    ast.Set: "a set",
    ast.Dict: "a dict",
    ast.JoinedStr: "an f-string",
    ast.Starred: "a starred expression",
    ast.NamedExpr: "an assignment expression (:=)",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Slice: "a slice",
}
_OPNAMES = {
    ast.Mod: "%", ast.FloorDiv: "//", ast.MatMult: "@", ast.BitXor: "^",
    ast.BitAnd: "&", ast.BitOr: "|", ast.LShift: "<<", ast.RShift: ">>",
    ast.Invert: "~", ast.Not: "not",
}


class _Refused(Exception):
    """Internal: a construct was refused at ``node``."""

    def __init__(self, message: str, node: ast.AST | None = None, col: int | None = None):
        super().__init__(message)
        self.col = col if col is not None else getattr(node, "col_offset", None)


def _is_network(obj) -> bool:
    return isinstance(obj, BaseNetwork)


def _rename_keywords(text: str, names: Mapping[str, object]
                     ) -> tuple[str, dict[str, str], list[tuple[int, int, int, int]]]:
    """Rename declared names that are Python keywords (``lambda`` -> ``lambda_kw_``).

    Returns the renamed source, the map back from alias to name, and the renamed spans
    ``(start, end)`` in the source followed by ``(start, end)`` in ``text`` (character
    columns of the one line), for :func:`_text_column` to point into the user's text.
    """
    kws = {n for n in names if keyword.iskeyword(n)}
    if not kws:
        return text, {}, []
    alias = {}
    for k in kws:
        a = f"{k}_kw_"
        while a in names:
            a += "_"
        alias[k] = a
    toks = []
    try:      # the names before a tokenizing error (an unclosed bracket) are renamed too
        toks.extend(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        pass      # ast reports the syntax error
    # replace the names where they stand (untokenize would respace the text, and every
    # column reported after it would be off)
    pieces, spans, pos, shift = [], [], 0, 0
    for t in toks:
        if t.type == tokenize.NAME and t.string in alias and t.start[0] == 1:
            start, end = t.start[1], t.end[1]
            new = alias[t.string]
            pieces += [text[pos:start], new]
            spans.append((start + shift, start + shift + len(new), start, end))
            shift += len(new) - (end - start)
            pos = end
    pieces.append(text[pos:])
    return "".join(pieces), {a: k for k, a in alias.items()}, spans


def _text_column(col: int, source: str, spans: Sequence[tuple[int, int, int, int]],
                 in_bytes: bool = False) -> int:
    """The 0-based character column in the user's text of column ``col`` of the parsed
    ``source`` (``in_bytes``: ``col`` counts UTF-8 bytes, as ``ast`` node offsets do)."""
    if in_bytes:
        col = len(source.encode("utf-8")[:col].decode("utf-8", errors="ignore"))
    shift = 0
    for s_start, s_end, t_start, t_end in spans:
        if col < s_start:
            break
        if col < s_end:           # inside a renamed name: its start
            return t_start
        shift = s_end - t_end     # the source runs ahead of the text by this much
    return col - shift


def parse_expression(text: str, names: Mapping[str, object], where: str = "expression"
                     ) -> sp.Expr:
    """Parse one equation into a sympy expression, allowing only declared names.

    Parameters
    ----------
    text : str
        The equation's right-hand side, e.g. ``"alpha*hare - beta*hare*lynx"``.
    names : mapping str -> sympy.Basic or network
        Declared names: states, parameters, inputs and time map to their sympy symbols;
        a network's name maps to the network object, whose outputs are written
        ``name[i]``.
    where : str
        What is being parsed, for error messages (e.g. ``"model.toml, line 3: equation of
        'hare'"``).

    Returns
    -------
    sympy.Expr

    Raises
    ------
    ModelError
        On a syntax error, an unknown name, a function outside :data:`FUNCTIONS` or any
        construct other than arithmetic, whitelisted calls and network outputs.

    Examples
    --------
    >>> import sympy as sp
    >>> x, a = sp.symbols("x a")
    >>> parse_expression("a*x - exp(-x)**2", {"x": x, "a": a})
    a*x - exp(-2*x)
    """
    if not isinstance(text, str):
        raise ModelTypeError(f"{where}: expected the equation as a string, got "
                             f"{type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ModelError(f"{where}: equation is {len(text)} characters long; the limit is "
                         f"{MAX_LENGTH}")
    if not text.strip():
        raise ModelError(f"{where}: the equation is empty")
    if "\n" in text.strip() or "\r" in text:
        raise ModelError(f"{where}: an equation must fit on one line")
    source, unalias, spans = _rename_keywords(text.strip(), names)
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        msg = exc.msg or "invalid syntax"
        if exc.offset and 0 < exc.offset <= len(source):
            col = f" at column {_text_column(exc.offset - 1, source, spans) + 1}"
        else:     # Python gives no offset when the text ends too early
            col = f" at the end (column {len(text.strip()) + 1}: the equation is incomplete)"
        raise ModelError(f"{where}: {msg}{col} in {text.strip()!r}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ModelError(f"{where}: cannot parse {text.strip()!r}: "
                         f"{str(exc) or type(exc).__name__}") from None
    depth = _nesting_depth(tree.body)
    if depth > MAX_DEPTH:
        raise ModelError(f"{where}: the equation is nested {depth} levels deep; the limit is "
                         f"{MAX_DEPTH} (define intermediate states or split the expression)")
    if not all(k.isascii() for k in names):
        names = {normalize_name(k): v for k, v in names.items()}
    builder = _Builder(names, unalias, source)
    try:
        expr = builder.build(tree.body)
    except _Refused as exc:
        col = f" (column {_text_column(exc.col, source, spans, in_bytes=True) + 1})" \
            if exc.col is not None else ""
        raise ModelError(f"{where}: {exc}{col} in {text.strip()!r}") from None
    except RecursionError:
        raise ModelError(f"{where}: the equation is nested too deeply") from None
    except (TypeError, ValueError, ArithmeticError) as exc:
        # sympy refusing an operation, e.g. a function given a network object
        raise ModelError(f"{where}: invalid expression {text.strip()!r}: {exc}") from None
    if isinstance(expr, sp.Basic) and not isinstance(expr, sp.Expr):
        raise ModelError(f"{where}: {text.strip()!r} is not a scalar expression")
    return expr


def _nesting_depth(root: ast.AST) -> int:
    """How deeply the expression nests (iteratively: the tree of a long sum is deep, but
    a chain of ``+``/``-`` or of ``*``/``/`` counts as one level, as it is built in one go)."""
    deepest = 0
    stack = [(root, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, ast.expr):
                continue
            chained = (isinstance(node, ast.BinOp) and child is node.left
                       and isinstance(child, ast.BinOp)
                       and _chain_kind(child.op) is not None
                       and _chain_kind(child.op) == _chain_kind(node.op))
            stack.append((child, d if chained else d + 1))
    return deepest


def _chain_kind(op: ast.operator):
    if isinstance(op, _ADDITIVE):
        return "+"
    if isinstance(op, _MULTIPLICATIVE):
        return "*"
    return None


def _constant_problem(value: sp.Expr) -> str | None:
    """Why a constant (sub-)expression cannot be used in an equation, or None when it can:
    it must be a finite real number of magnitude at most :data:`MAX_NUMBER`."""
    if value.is_Integer or value.is_Rational or value.is_Float:
        v = value
    else:
        if value.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
            return "is not a finite number"
        if value.is_extended_real is False:
            return "is not a real number"
        try:
            v = sp.N(value, 15)
        except (TypeError, ValueError, ArithmeticError, RecursionError):
            return "cannot be evaluated as a number"
        if not v.is_Float and not v.is_Integer and not v.is_Rational:
            return "is not a real number" if v.has(sp.I) else "is not a finite number"
    if v is sp.nan or not v.is_finite:
        return "is not a finite number"
    if abs(v) > MAX_NUMBER:
        return f"is too large (magnitude over {MAX_NUMBER:g})"
    return None


def _negative_base_problem(base: sp.Expr, exp_: sp.Expr) -> str | None:
    """Why ``base ** exp_`` cannot be used, when a negative constant is raised to a power that
    varies (``(-2)**a``): it is complex at every non-integer exponent, and so is its
    derivative in the exponent (``log`` of a negative number) at every exponent."""
    if (isinstance(base, sp.Expr) and base.is_number and base.is_extended_negative
            and isinstance(exp_, sp.Expr) and exp_.free_symbols):
        return (f"the negative number {base!s} raised to the varying power {exp_!s} is not "
                "a real number for non-integer powers; write the sign and the magnitude "
                "apart (e.g. -(2**a) instead of (-2)**a)")
    return None


def check_constants(expr: sp.Expr, where: str = "expression") -> sp.Expr:
    """``expr`` if every constant in it is a finite real number of magnitude at most
    :data:`MAX_NUMBER`, else a ModelError naming the offending sub-expression.

    :func:`parse_expression` checks each constant sub-expression of an equation as it is
    built; this checks an expression built with sympy (``sp.sqrt(-1)``, ``sp.log(0)*x``,
    ``sp.exp(1000)``), whose maximal constant sub-expressions it visits.
    """
    stack = [expr]
    while stack:
        e = stack.pop()
        if not isinstance(e, sp.Expr):
            stack.extend(a for a in e.args if isinstance(a, sp.Basic))
            continue
        if not e.free_symbols:
            problem = _constant_problem(e)
            if problem is not None:
                raise ModelError(f"{where}: the constant {e!s} {problem}")
            continue
        if e.is_Pow and (problem := _negative_base_problem(*e.args)) is not None:
            raise ModelError(f"{where}: {problem}")
        stack.extend(e.args)
    return expr


class _Builder:
    """Walks an ``ast`` tree and builds the sympy expression (refusing all else)."""

    def __init__(self, names: Mapping[str, object], unalias: Mapping[str, str],
                 source: str = ""):
        self.names = names
        self.unalias = unalias
        self.source = source
        self.minmax_args = 0   # arguments of Max/Min calls simplified by sympy so far

    def declared(self) -> str:
        plain = sorted(n for n, v in self.names.items() if not _is_network(v))
        nets = sorted(n for n, v in self.names.items() if _is_network(v))
        out = f"declared names are {plain}"
        if nets:
            out += f" and networks {nets} (used as {nets[0]}[0], ...)"
        return out

    def build(self, node: ast.AST):
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            what = _REFUSED.get(type(node), f"'{type(node).__name__}'")
            raise _Refused(f"{what} is not allowed in an equation; use numbers, declared "
                           "names, + - * / **, math functions and network outputs like nn[0]",
                           node)
        out = method(node)
        if isinstance(out, sp.Expr) and not isinstance(out, sp.Symbol):
            # a constant (sub-)expression: refuse it now, naming it, rather than let it
            # produce nan/inf/complex values (or crash) when the model is solved; in a sum
            # or product, the number sympy folded the constant terms or factors into
            text = None
            if out.is_number:
                problem = _constant_problem(out)
            else:
                problem = None
                if out.is_Add or out.is_Mul:
                    for a in out.args:
                        if a.is_number and (problem := _constant_problem(a)) is not None:
                            text = f"the constant {a!s} in"
                            break
            if problem is not None:
                segment = ast.get_source_segment(self.source, node) or str(out)
                if text is not None:
                    raise _Refused(f"{text} {segment!r} {problem}", node)
                raise _Refused(f"{segment!r} {problem}" + (f" (it evaluates to {out!s})"
                                                           if str(out) != segment else ""), node)
        return out

    # leaves ------------------------------------------------------------------------------
    def _Constant(self, node: ast.Constant):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            kind = {str: "a string", bytes: "a bytes literal", complex: "a complex number",
                    bool: "a boolean"}.get(type(v), repr(v))
            raise _Refused(f"{kind} is not allowed in an equation", node)
        return sp.Integer(v) if isinstance(v, int) else sp.Float(v)

    def _Name(self, node: ast.Name):
        name = self.unalias.get(node.id, node.id)
        if name.startswith("__"):
            raise _Refused(f"name '{name}' is not allowed (names starting with '__' are "
                           "reserved)", node)
        if name in self.names:
            obj = self.names[name]
            if _is_network(obj):
                raise _Refused(f"network '{name}' must be indexed by an output, e.g. "
                               f"{name}[0]", node)
            return obj
        if name in CONSTANTS:
            return CONSTANTS[name]
        if name in FUNCTIONS:
            raise _Refused(f"function '{name}' must be called, e.g. {name}(x)", node)
        raise _Refused(f"unknown name '{name}'; {self.declared()}", node)

    # operators ---------------------------------------------------------------------------
    def _chain(self, node: ast.BinOp) -> list[tuple[type, ast.AST]]:
        """The operands of a left-associated chain of ``+``/``-`` (or ``*``/``/``) with
        the operator before each (the first's is that of the chain's kind), left to right."""
        kind = _chain_kind(node.op)
        out = []
        while isinstance(node, ast.BinOp) and _chain_kind(node.op) == kind:
            out.append((type(node.op), node.right))
            node = node.left
        out.append((ast.Add if kind == "+" else ast.Mult, node))
        out.reverse()
        return out

    def _BinOp(self, node: ast.BinOp):
        op = type(node.op)
        if op in _ADDITIVE:
            # built in one Add, linear in the number of terms and without recursing along
            # the chain; a term that is itself a sum is spliced in place, so that sympy
            # adds the numbers in the same order as adding term by term would (floating-
            # point sums depend on the order)
            terms = []
            for o, n in self._chain(node):
                v = self.build(n)
                v = -v if o is ast.Sub else v
                if isinstance(v, sp.Add):
                    terms.extend(v.args)
                else:
                    terms.append(v)
            return sp.Add(*terms)
        if op in _MULTIPLICATIVE:
            factors = [(self.build(n), o) for o, n in self._chain(node)]
            if len(factors) <= _MUL_FOLD_LIMIT:
                out = factors[0][0]
                for v, o in factors[1:]:
                    out = _BINOPS[o](out, v)
                return out
            return sp.Mul(*[sp.Pow(v, -1) if o is ast.Div else v for v, o in factors])
        if op is ast.Pow:
            base, exp_ = self.build(node.left), self.build(node.right)
            if isinstance(exp_, sp.Number):
                # bound sympy's exact arithmetic: 9**9**9 would otherwise run for ages
                if abs(exp_) > MAX_EXPONENT:
                    raise _Refused(f"exponent {exp_!s} is too large (limit {MAX_EXPONENT})",
                                   node.right)
                if (isinstance(base, sp.Number) and base != 0
                        and float(abs(exp_)) * abs(math.log10(abs(float(base)))) > 300):
                    raise _Refused("a number in this equation is too large (over 1e300)",
                                   node)
            problem = _negative_base_problem(base, exp_)
            if problem is not None:
                raise _Refused(problem, node)
            return base ** exp_
        if op in _BINOPS:
            return _BINOPS[op](self.build(node.left), self.build(node.right))
        sym = _OPNAMES.get(op, type(node.op).__name__)
        hint = "; use ** for powers" if op is ast.BitXor else ""
        raise _Refused(f"operator '{sym}' is not allowed{hint}", node)

    def _UnaryOp(self, node: ast.UnaryOp):
        if isinstance(node.op, ast.USub):
            return -self.build(node.operand)
        if isinstance(node.op, ast.UAdd):
            return self.build(node.operand)
        sym = _OPNAMES.get(type(node.op), type(node.op).__name__)
        raise _Refused(f"operator '{sym}' is not allowed", node)

    def _Attribute(self, node: ast.Attribute):
        # point at the dot before the attribute, not at the start of the object
        col = node.end_col_offset - len(node.attr) - 1 if node.end_col_offset else None
        raise _Refused(f"attribute access ('.{node.attr}') is not allowed in an equation",
                       node, col)

    # calls and network outputs -----------------------------------------------------------
    def _Call(self, node: ast.Call):
        if isinstance(node.func, ast.Attribute):
            return self._Attribute(node.func)
        if not isinstance(node.func, ast.Name):
            what = _REFUSED.get(type(node.func), "an expression")
            raise _Refused(f"only whitelisted functions may be called, by name; calling "
                           f"{what} is not allowed", node.func)
        name = self.unalias.get(node.func.id, node.func.id)
        if name in self.names:
            role = "network" if _is_network(self.names[name]) else "symbol"
            raise _Refused(f"'{name}' is a declared {role}, not a function; it cannot be "
                           "called", node)
        if name not in FUNCTIONS:
            raise _Refused(f"function '{name}' is not allowed; allowed functions are "
                           f"{sorted(FUNCTIONS)}", node)
        if node.keywords:
            raise _Refused(f"keyword arguments are not allowed (in the call of '{name}')",
                           node.keywords[0].value)
        fun, nargs = FUNCTIONS[name]
        n = len(node.args)
        if (nargs is None and n < 1) or (nargs is not None and n not in nargs):
            want = "at least 1" if nargs is None else " or ".join(map(str, nargs))
            raise _Refused(f"function '{name}' takes {want} argument(s), got {n}", node)
        args = [self.build(a) for a in node.args]
        if fun is sp.Max or fun is sp.Min:
            if n > MINMAX_SIMPLIFY_LIMIT or self.minmax_args + n > MINMAX_SIMPLIFY_BUDGET:
                fun = _LinearMax if fun is sp.Max else _LinearMin
            else:
                self.minmax_args += n
        try:
            return fun(*args)
        except (ArithmeticError, ValueError) as exc:
            # sympy evaluates calls of constants at once; mpmath can fail there (erfc(1e300)
            # overflows inside mpmath)
            raise _Refused(f"'{name}' of these arguments cannot be evaluated "
                           f"({type(exc).__name__}: {exc})", node) from None

    def _Subscript(self, node: ast.Subscript):
        if not isinstance(node.value, ast.Name):
            raise _Refused("only network outputs may be indexed, as name[i]", node)
        name = self.unalias.get(node.value.id, node.value.id)
        obj = self.names.get(name)
        if not _is_network(obj):
            what = "a declared symbol, not a network" if name in self.names else "not a network"
            raise _Refused(f"'{name}' is {what}; only network outputs can be indexed, as "
                           "nn[0]", node)
        idx = node.slice
        sign = 1
        if isinstance(idx, ast.UnaryOp) and isinstance(idx.op, ast.USub):
            sign, idx = -1, idx.operand
        if not (isinstance(idx, ast.Constant) and type(idx.value) is int):
            raise _Refused(f"network '{name}' must be indexed by an integer, e.g. {name}[0]",
                           node.slice)
        i = sign * idx.value
        if not -obj.n_outputs <= i < obj.n_outputs:
            raise _Refused(f"network '{name}' has {obj.n_outputs} output(s) (indices 0.."
                           f"{obj.n_outputs - 1}); index {i} is out of range", node.slice)
        return obj[i]
