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
