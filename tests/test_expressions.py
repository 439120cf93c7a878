"""The safe equation parser: what it accepts, and that it refuses everything else."""

import pytest
import sympy as sp

import dynlearn as dl
from dynlearn.core.expressions import FUNCTIONS, parse_expression

x, y, a, lam, t = sp.symbols("x y a lambda t")
NAMES = {"x": x, "y": y, "a": a, "t": t}


@pytest.fixture
def nn():
    return dl.MLP("nn", inputs=[x, y], outputs=2, hidden=[3], seed=0)


@pytest.mark.parametrize("text, expected", [
    ("a*x - y", a * x - y),
    ("-x**2 + 3", -x**2 + 3),
    ("x/2", x / 2),
    ("+x", x),
    ("exp(-a*t)*sin(x)", sp.exp(-a * t) * sp.sin(x)),
    ("sqrt(x) + log(y) + abs(a)", sp.sqrt(x) + sp.log(y) + sp.Abs(a)),
    ("max(x, y) + Min(x, 0)", sp.Max(x, y) + sp.Min(x, 0)),
    ("tanh(x) + cosh(y) + sinh(a) + tan(t) + cos(x)",
     sp.tanh(x) + sp.cosh(y) + sp.sinh(a) + sp.tan(t) + sp.cos(x)),
    ("sign(x)*pi + E", sp.sign(x) * sp.pi + sp.E),
    ("1.5e-3*x", sp.Float(1.5e-3) * x),
    ("x ** 0.5", x**sp.Float(0.5)),
])
def test_accepts_arithmetic_and_whitelisted_functions(text, expected):
    assert sp.simplify(parse_expression(text, NAMES) - expected) == 0


def test_heaviside_has_half_at_zero():
    e = parse_expression("Heaviside(x)", NAMES)
    assert e.subs(x, 0) == sp.Rational(1, 2)


def test_network_outputs(nn):
    e = parse_expression("a*x + nn[0] - nn[-1]", {**NAMES, "nn": nn})
    assert e == a * x + nn[0] - nn[1]


def test_declared_names_shadow_constants_and_sympy_functions():
    E, gamma, beta = sp.symbols("E gamma beta")
    e = parse_expression("E*gamma + beta", {"E": E, "gamma": gamma, "beta": beta})
    assert e.free_symbols == {E, gamma, beta}


def test_parameter_named_like_a_keyword():
    e = parse_expression("lambda*x", {"lambda": lam, "x": x})
    assert e == lam * x


@pytest.mark.parametrize("text, match", [
    ("__import__('os').system('touch /tmp/pwned')", r"attribute access \('\.system'\)"),
    ("x.__class__", r"attribute access \('\.__class__'\).*column 2"),
    ("x.__class__.__mro__[1].__subclasses__()", "attribute access"),
    ("(lambda: 1)()", "lambda"),
    ("lambda: 1", "lambda"),
    ("[i for i in (1, 2)]", "list comprehension"),
    ("'abc'", "string"),
    ("exec('1')", "function 'exec' is not allowed"),
    ("eval('1')", "function 'eval' is not allowed"),
    ("open('/etc/passwd')", "function 'open' is not allowed"),
    ("getattr(x, 'y')", "function 'getattr' is not allowed"),
    ("__builtins__", "reserved"),
    ("exp(x=1)", "keyword arguments"),
    ("exp(*x)", "starred"),
    ("x if a else y", "conditional"),
    ("x < y", "comparison"),
    ("x and y", "boolean operator"),
    ("x ^ 2", r"use \*\* for powers"),
    ("x % 2", "operator '%'"),
    ("x[0]", "not a network"),
    ("z + 1", r"unknown name 'z'; declared names are \['a', 't', 'x', 'y'\]"),
    ("f(x)", "function 'f' is not allowed"),
    ("x(1)", "not a function"),
    ("exp", "must be called"),
    ("exp(x, y)", "takes 1 argument"),
    ("1j*x", "complex"),
    ("True*x", "boolean"),
    ("9**9**9", "too large"),
    ("(10**200)**200", "too large"),
    ("x +", "invalid syntax"),
    ("x; import os", "invalid syntax"),
    ("", "empty"),
    ("x\n+ y", "one line"),
    ("(x := 1)", "assignment expression"),
    ("f'{x}'", "f-string"),
    ("{1: 2}", "dict"),
])
def test_refuses(text, match):
    with pytest.raises(dl.ModelError, match=match):
        parse_expression(text, NAMES, where="eq of 'x'")


def test_error_names_the_equation():
    with pytest.raises(dl.ModelError, match=r"^model\.toml, line 3: equation of 'x': "):
        parse_expression("x.real", NAMES, where="model.toml, line 3: equation of 'x'")


def test_network_errors(nn):
    names = {**NAMES, "nn": nn}
    with pytest.raises(dl.ModelError, match="must be indexed"):
        parse_expression("nn + x", names)
    with pytest.raises(dl.ModelError, match=r"2 output\(s\).*index 5 is out of range"):
        parse_expression("nn[5]", names)
    with pytest.raises(dl.ModelError, match="indexed by an integer"):
        parse_expression("nn[x]", names)
    with pytest.raises(dl.ModelError, match="indexed by an integer"):
        parse_expression("nn[0:1]", names)


def test_injection_has_no_effect(tmp_path):
    target = tmp_path / "pwned"
    attempts = [
        f"__import__('os').system('touch {target}')",
        f"exec(\"open('{target}', 'w')\")",
        f"open('{target}', 'w')",
        "__import__('os')",
        "().__class__.__bases__[0].__subclasses__()",
    ]
    for text in attempts:
        with pytest.raises(dl.ModelError):
            parse_expression(text, NAMES)
    assert not target.exists()


def test_too_long():
    with pytest.raises(dl.ModelError, match="characters long"):
        parse_expression("x+" * 6000 + "x", NAMES)


def test_deep_nesting_is_a_model_error():
    with pytest.raises(dl.ModelError):
        parse_expression("(" * 3000 + "x" + ")" * 3000, NAMES)


def test_non_string():
    with pytest.raises(dl.ModelError, match="expected the equation as a string"):
        parse_expression(3, NAMES)


def test_hybrid_model_accepts_string_equations():
    m = dl.HybridModel(["x"], {"x": "-a*x + sin(t)"}, params={"a": 1.0})
    assert m.rhs[0] == -sp.Symbol("a") * sp.Symbol("x") + sp.sin(sp.Symbol("t"))
    with pytest.raises(dl.ModelError, match="unknown name 'b'"):
        dl.HybridModel(["x"], {"x": "-b*x"}, params={"a": 1.0})


def test_function_table_maps_to_sympy():
    for name, (fun, nargs) in FUNCTIONS.items():
        args = [x] * (nargs[0] if nargs else 2)
        assert isinstance(fun(*args), sp.Basic), name


# --- issue #12: linear parsing, invalid constants, nesting, normalised names -------------------
LONG = {
    # Max of many powers took n^2.5 (5,000 characters: 4 minutes)
    "max": lambda n: "Max(" + ", ".join(f"x**{1 + i % 1000}" for i in range(n)) + ")",
    "sum": lambda n: " + ".join(f"a*x**{i}" for i in range(1, n + 1)),
    "difference": lambda n: " - ".join(f"x/{i}" for i in range(1, n + 1)),
    "product": lambda n: " * ".join(f"(x + {i})" for i in range(1, n + 1)),
    "sum of Min": lambda n: " + ".join(f"Min(x, {i})" for i in range(1, n + 1)),
}


@pytest.mark.parametrize("kind", sorted(LONG))
def test_parsing_is_roughly_linear(kind):
    import time
    n = 1
    while len(LONG[kind](n + 1)) <= 10_000:
        n += 1
    text = LONG[kind](n)
    assert 5_000 < len(text) <= 10_000
    t0 = time.perf_counter()
    parse_expression(text, NAMES)
    # 10,000 characters in well under a second on an idle machine; the bound leaves room
    # for a loaded one (it was minutes)
    assert time.perf_counter() - t0 < 5.0


def test_long_chains_build_what_term_by_term_building_builds():
    # a chain of + and - is built in one go; the result (down to the order in which sympy
    # adds floating-point numbers) is the one adding term by term gives
    text = "y + 0.1*x - (2.5 + x) + 1.3 - 0.7*x + (0.2 - y) + pi/3 - 1.1"
    e = parse_expression(text, NAMES)
    ref = y + sp.Float(0.1) * x - (sp.Float(2.5) + x) + sp.Float(1.3) - sp.Float(0.7) * x \
        + (sp.Float(0.2) - y) + sp.pi / 3 - sp.Float(1.1)
    assert sp.srepr(e) == sp.srepr(ref)
    # a short product is built factor by factor (sympy distributes a number over a sum only
    # in a two-factor product)
    assert parse_expression("2*(x + y)*a", NAMES) == 2 * (x + y) * a
    # Max/Min with many arguments: numbers folded, repeats dropped, the same values
    e = parse_expression("Max(" + ", ".join(["x", "1", "y", "x", "2"] * 4) + ")", NAMES)
    assert sorted(map(str, e.args)) == ["2", "x", "y"]
    f = sp.lambdify([x, y], e)
    assert f(0.5, 3.0) == 3.0 and f(0.5, 1.0) == 2.0
    assert str(e) == "Max(2, x, y)"   # written to model files as Max, read back as Max


def test_a_long_sum_is_not_too_deeply_nested():
    # the syntax tree of a + b + c + ... is as deep as the sum is long
    text = " + ".join(f"{i}*x" for i in range(1, 1200))
    assert len(text) < 10_000
    assert parse_expression(text, NAMES) == sum(range(1, 1200)) * x


@pytest.mark.parametrize("text, culprit", [
    ("sqrt(-1)*x", "sqrt(-1)"), ("log(-1) + x", "log(-1)"), ("log(0)*x", "log(0)"),
    ("x + 1/0", "1/0"), ("1e400*x", "1e400"), ("exp(1000)*x", "exp(1000)"),
    ("pi**999 + x", "pi**999"), ("(-8)**(1/3)*x", "(-8)**(1/3)"), ("acosh(0) + x", "acosh(0)"),
    ("asin(2)*x", "asin(2)"), ("x*atan2(0, 0)", "atan2(0, 0)"), ("1e200*1e200*x", "1e200"),
    ("x/(pi - pi)", "pi - pi"), ("(-2.5)**0.5*x", "(-2.5)**0.5"),
])
def test_invalid_constants_are_refused_naming_the_sub_expression(text, culprit):
    with pytest.raises(dl.ModelError) as err:
        parse_expression(text, NAMES, where="rhs of 'x'")
    msg = str(err.value)
    assert culprit in msg and "rhs of 'x'" in msg
    assert "not a real number" in msg or "not a finite number" in msg or "too large" in msg


def test_valid_constants_are_kept():
    for text in ("exp(-1000)*x", "log(2)*x", "sqrt(2) - x", "1e300*x", "0**2 + x", "acosh(1)*x",
                 "atan2(0, 1) + x", "E**2*x", "(-8)**2*x", "(-8)**(-1)*x"):
        parse_expression(text, NAMES)


def test_nesting_beyond_the_limit_is_refused_with_its_depth():
    from dynlearn.core.expressions import MAX_DEPTH
    ok = "exp(" * (MAX_DEPTH - 1) + "x" + ")" * (MAX_DEPTH - 1)
    parse_expression(ok, NAMES)
    deep = "exp(" * MAX_DEPTH + "x" + ")" * MAX_DEPTH
    with pytest.raises(dl.ModelError, match=f"nested {MAX_DEPTH + 1} levels deep"):
        parse_expression(deep, NAMES)
    with pytest.raises(dl.ModelError, match="nested"):
        parse_expression("-" * 200 + "x", NAMES)


def test_declared_names_match_their_normalised_form():
    # Python's parser turns the micro sign (U+00B5) into mu (U+03BC) in equations; a name
    # declared with either is found
    micro, mu = "\u00b5", "\u03bc"
    m = sp.Symbol(micro)
    assert parse_expression(f"{micro}*x", {"x": x, micro: m}) == m * x
    assert parse_expression(f"{mu}*x", {"x": x, micro: m}) == m * x


# --- issue 13: parse errors point at the user's column ------------------------------------------
@pytest.mark.parametrize("text, column", [
    ("-k*x $ 2", "at column 6"),
    ("-k*x + (x", "at column 8"),                      # the bracket never closed
    ("-k*x + x**", r"at the end \(column 11"),        # Python gives no offset here
    ("lambda*x $ 2", "at column 10"),                  # a keyword-named parameter, renamed
    ("lambda  *  lambda*x + y", r"\(column 23\)"),      # ... twice, spacing kept
    ("lambda + lambda + (x", "at column 19"),          # renamed although tokenizing fails
    ("α*x + y", r"\(column 7\)"),                      # characters, not UTF-8 bytes
    ("α + x.real", r"\(column 6\)"),
])
def test_parse_errors_point_at_the_right_column(text, column):
    x, k, lam, alpha = sp.symbols("x k lambda α")
    names = {"x": x, "k": k, "lambda": lam, "α": alpha}
    with pytest.raises(dl.ModelError, match=column) as info:
        parse_expression(text, names)
    assert repr(text) in str(info.value)
