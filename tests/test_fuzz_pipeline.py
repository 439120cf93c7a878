"""Property-based fuzzing of the whole pipeline (issue #12, "Done when").

Random equations, model files and CSV files are pushed through every stage a user's input
goes through: parse -> compile -> simulate -> one gradient, by the adjoint (discrete for
the explicit methods, continuous for the stiff ones) and by forward sensitivities. Model
files are read by :func:`dynlearn.io.load_model_file` and their data by the model file's
own CSV reading; CSV files by :meth:`dynlearn.Dataset.from_csv`. The only failure allowed
anywhere is a :class:`dynlearn.DynlearnError`: any other exception is a bug, and so is a
returned loss or gradient, or a successful solution, holding a NaN or an inf.

No example may run for long. That is enforced with the library's own limits, never with a
timed assert: each solve has a small evaluation budget (``max_nfev``), and every example
runs under a solve deadline (:func:`dynlearn.solve.deadline`), whose
:class:`~dynlearn.errors.TimeLimitError` is a DynlearnError like any other refusal.

Parsing and compiling are bounded by the parser's own limits (length, nesting), not by the
deadline.

The default run draws a small, bounded number of examples per property (the module takes
well under half a minute); the ``slow`` tests draw many more (``-m slow``). Run with
``--hypothesis-show-statistics`` to see how far the examples get (events "refused: ..." and
"gradient computed ...").
"""

from __future__ import annotations

import os
import string
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import dynlearn as dl
from dynlearn.core.expressions import FUNCTIONS
from dynlearn.io import load_model_file
from dynlearn.optimizers import Status
from dynlearn.solve import deadline

#: Seconds one example may spend in solves before its deadline refuses it.
EXAMPLE_SECONDS = 3.0
#: Right-hand-side evaluations one solve may take (the default is far larger).
FUZZ_NFEV = 20_000
#: Examples per property in the default run and under ``-m slow``.
QUICK, THOROUGH = 25, 400

STATES = ("x", "y")
PARAMS = ("a", "b")
T_OBS = np.array([0.0, 0.5, 1.0, 2.0])
SENSITIVITIES = (lambda: dl.Adjoint(), lambda: dl.ForwardSensitivity())


# --- the pipeline ---------------------------------------------------------------------------
def run_pipeline(model, data, method: str = "RK45") -> None:
    """simulate -> loss -> one gradient per sensitivity method. Every result returned must
    be finite; any failure must be a DynlearnError (the caller lets those through)."""
    y0 = np.ones(len(model.states))
    with deadline(time.time() + EXAMPLE_SECONDS):
        sol = dl.simulate(model, T_OBS, y0, method=method, max_nfev=FUZZ_NFEV, throw=False)
        if sol.success:
            assert np.all(np.isfinite(sol.y)), "a successful solution holds NaN/inf"
        for make in SENSITIVITIES:
            try:
                value, grad = dl.loss_and_grad(model, data, sensitivity=make(), method=method,
                                               max_nfev=FUZZ_NFEV)
            except dl.SolveError:
                continue           # a rejected point: what a fit would see
            assert np.isfinite(value), "a loss returned as NaN/inf"
            assert np.all(np.isfinite(grad)), f"a gradient returned with NaN/inf: {grad}"
            event(f"gradient computed ({type(make()).__name__})")


def only_dynlearn_errors(fn, *args) -> None:
    """Run ``fn``; a DynlearnError is an accepted refusal, anything else propagates (and
    fails the property)."""
    try:
        fn(*args)
    except dl.DynlearnError as exc:
        event(f"refused: {type(exc).__name__}")


def fuzz_settings(n: int, derandomize: bool = False):
    # one example can be slow on a loaded machine: the solve deadline bounds it, not hypothesis
    return settings(max_examples=n, deadline=None, database=None, derandomize=derandomize,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- strategies: equations --------------------------------------------------------------------
NUMBERS = st.one_of(
    st.integers(-5, 5).map(str),
    st.sampled_from(["0", "0.5", "1e-3", "2.5", "1e300", "1e400", "1e-320", "0.0", "3"]),
    st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False).map(repr),
)
LEAVES = st.one_of(st.sampled_from(STATES + PARAMS + ("t", "pi", "E")), NUMBERS)


def _call(name: str, arity_args):
    return f"{name}({', '.join(arity_args)})"


def _extend(children):
    binary = st.tuples(children, st.sampled_from(["+", "-", "*", "/", "**"]), children).map(
        lambda p: f"({p[0]} {p[1]} {p[2]})")
    unary = children.map(lambda c: f"-({c})")
    calls = []
    for name, (_, arities) in sorted(FUNCTIONS.items()):
        counts = arities if arities is not None else (1, 2, 3)
        for k in counts:
            calls.append(st.lists(children, min_size=k, max_size=k).map(
                lambda args, name=name: _call(name, args)))
    return st.one_of(binary, unary, st.one_of(calls))


EXPRESSIONS = st.recursive(LEAVES, _extend, max_leaves=8)


def build_model(eqs: dict[str, str], params: dict[str, float]):
    return dl.HybridModel(states=list(eqs), params=params, rhs=eqs)


def data_for(states, values=None) -> dl.Dataset:
    import pandas as pd
    cols = {s: (np.linspace(1.0, 0.5, T_OBS.size) if values is None else values)
            for s in states}
    return dl.Dataset.from_frame(pd.DataFrame({"t": T_OBS, **cols}))


def check_equations(case) -> None:
    ex, ey, a, b, method = case

    def pipeline():  # a and b appear in every model: unused parameters are refused
        model = build_model({"x": f"-a*x + {ex}", "y": f"-y + b*({ey})"}, {"a": a, "b": b})
        run_pipeline(model, data_for(STATES), method)
    only_dynlearn_errors(pipeline)


EQUATION_CASES = st.tuples(EXPRESSIONS, EXPRESSIONS,
                           st.sampled_from([0.5, -0.5, 0.0, 1.0, 3.0, 1e-8]),
                           st.sampled_from([0.5, -2.0, 1.0, 100.0]),
                           st.sampled_from(["RK45", "RK45", "Radau", "LSODA", "BDF"]))


# --- strategies: model files ------------------------------------------------------------------
def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


PARAM_ENTRIES = st.one_of(
    st.floats(-10, 10, allow_nan=False).map(repr),
    st.builds(lambda v, lo, hi, tr, fx: "{ " + ", ".join(
        p for p in (f"value = {v!r}", lo, hi, tr, fx) if p) + " }",
        st.floats(-10, 10, allow_nan=False),
        st.sampled_from(["", "min = 0.0", "min = 1e-5", "min = 2.0"]),
        st.sampled_from(["", "max = 10.0", "max = 0.1"]),
        st.sampled_from(["", 'transform = "log"', 'transform = "logit"', 'transform = "none"']),
        st.sampled_from(["", "fixed = true", "fixed = false"])),
)


@st.composite
def model_file_texts(draw) -> str:
    """A model file as a user could write it (two states, two parameters, optional initial,
    noise and fit tables); the mutations below break it in the ways files get broken."""
    ex, ey = draw(EXPRESSIONS), draw(EXPRESSIONS)
    lines = ["[model]", 'name = "fuzz"', 'states = ["x", "y"]', "", "[model.equations]",
             f"x = {_toml_str('-a*x + ' + ex)}", f"y = {_toml_str(f'-y + b*({ey})')}", "",
             "[model.params]"]
    for p in PARAMS:
        lines.append(f"{p} = {draw(PARAM_ENTRIES)}")
    if draw(st.booleans()):
        lines += ["", "[initial]", "values = { x = 1.0, y = 0.5 }",
                  f"estimate = {draw(st.sampled_from(['true', 'false']))}"]
    if draw(st.booleans()):
        sigma = draw(st.sampled_from(['0.1', '"estimate"', '{ x = 0.2, y = 0.3 }', '-1.0',
                                      '0.0']))
        lines += ["", "[noise]", f"sigma = {sigma}"]
    if draw(st.booleans()):
        loss = draw(st.sampled_from(["ls", "gaussian", "log"]))
        method = draw(st.sampled_from(["RK45", "Radau", "LSODA"]))
        lines += ["", "[fit]", f"loss = {_toml_str(loss)}", f"method = {_toml_str(method)}"]
    text = "\n".join(lines) + "\n"
    for _ in range(draw(st.integers(0, 2))):
        text = draw(mutation(text))
    return text


def mutation(text: str):
    """One edit of the text: delete, duplicate or replace a span, or insert junk."""
    n = len(text)
    junk = st.one_of(st.text(max_size=6),
                     st.sampled_from(['"', "[", "]", "=", "\n", "nan", "inf", "1e999", "{",
                                      "}", ",", "[model]", "x = 1", '"\u00b5"', "\u00b5",
                                      "__import__('os')", "'''", "#"]))

    @st.composite
    def edit(draw):
        i = draw(st.integers(0, n))
        j = draw(st.integers(i, min(n, i + 12)))
        kind = draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
        if kind == "delete":
            return text[:i] + text[j:]
        if kind == "duplicate":
            return text[:j] + text[i:j] + text[j:]
        piece = draw(junk)
        return text[:i] + piece + (text[i:] if kind == "insert" else text[j:])
    return edit()


def check_model_file(text: str) -> None:
    def pipeline():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.toml"
            path.write_text(text, encoding="utf-8")
            mf = load_model_file(path)
            csv = Path(tmp) / "data.csv"
            csv.write_text("t,x,y\n0,1,0.5\n0.5,0.8,0.6\n1,0.6,0.55\n2,0.4,0.5\n")
            data = mf.read_data(csv)
        model = mf.model
        method = mf.fit.get("method", "RK45")
        run_pipeline(model, data, method)
    only_dynlearn_errors(pipeline)


# --- strategies: CSV files --------------------------------------------------------------------
HEADER_NAMES = st.one_of(
    st.sampled_from(["x", "y", "\u00b5", "x_sigma"]),
    st.sampled_from(["t", "x", "y", " x", "x ", "t ", "", "x.1", "\u00b5", "\u03bc",
                     "\u00e9t\u00e9", "x_sigma", "run", "\ufb01sh", "Unnamed: 0", '"x"',
                     "x,y", "nan"]),
    st.text(string.ascii_letters + "\u00b5\u03bc\u00e9 _.", min_size=1, max_size=4),
)
CELLS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "nan", "NaN", "inf", "-inf", "1e300", "-1e300", "1e999", "abc", " 1",
                     "1,5", "0x10", "\u00b5", "TRUE", "1e-320"]),
    st.integers(-3, 10).map(str),
)


@st.composite
def csv_texts(draw) -> tuple[str, str]:
    """``(text, separator)``: a header of possibly repeated, empty, padded or unicode names,
    rows of possibly missing, non-numeric, NaN, inf or huge values, times in any order."""
    sep = draw(st.sampled_from([",", ",", ";", "\t"]))
    names = ["t"] + draw(st.lists(HEADER_NAMES, min_size=0, max_size=3))
    if draw(st.booleans()):
        names = draw(st.permutations(names))
    n_rows = draw(st.integers(0, 6))
    times = draw(st.one_of(
        st.just([str(i) for i in range(n_rows)]),
        st.just([str(0.5 * i * i) for i in range(n_rows)]),
        st.lists(CELLS, min_size=n_rows, max_size=n_rows)))
    # half of the files hold only plain numbers (their faults are in the header and the
    # times), so that they get as far as a gradient
    values = draw(st.sampled_from([st.floats(0, 2).map(repr),
                                   st.one_of(CELLS, st.floats(0, 2).map(repr))]))
    rows = []
    for i in range(n_rows):
        width = len(names) + draw(st.sampled_from([0, 0, 0, -1, 1]))
        cells = draw(st.lists(values, min_size=width, max_size=width))
        if cells and "t" in names:
            k = names.index("t")
            if k < len(cells):
                cells[k] = times[i]
        rows.append(sep.join(cells))
    text = "\n".join([sep.join(names)] + rows)
    if draw(st.booleans()):
        text += "\n"
    return text, sep


def check_csv(case) -> None:
    text, sep = case

    def pipeline():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "d.csv"
            path.write_text(text, encoding="utf-8")
            data = dl.Dataset.from_csv(path, sep=sep)
        names = sorted({c for e in data for c in e.columns})
        states = [n for n in names if n.isidentifier()] or ["x"]
        model = dl.HybridModel(states=states, params={"a": 0.5},
                               rhs={s: f"-a*{s}" for s in states})
        run_pipeline(model, data)
    only_dynlearn_errors(pipeline)


# --- the properties ---------------------------------------------------------------------------
def _property(strategy, check, n: int):
    # every run draws the same examples (a test that passes or fails by the draw is no
    # test); DYNLEARN_FUZZ_RANDOM=1 explores afresh (fuzzing by hand, not in CI)
    @fuzz_settings(n, derandomize=os.environ.get("DYNLEARN_FUZZ_RANDOM") != "1")
    @given(strategy)
    def prop(case):
        check(case)
    return prop


test_fuzz_equations = _property(EQUATION_CASES, check_equations, QUICK)
test_fuzz_model_files = _property(model_file_texts(), check_model_file, QUICK)
test_fuzz_csv_files = _property(csv_texts(), check_csv, QUICK)

test_fuzz_equations_thorough = pytest.mark.slow(
    _property(EQUATION_CASES, check_equations, THOROUGH))
test_fuzz_model_files_thorough = pytest.mark.slow(
    _property(model_file_texts(), check_model_file, THOROUGH))
test_fuzz_csv_files_thorough = pytest.mark.slow(_property(csv_texts(), check_csv, THOROUGH))


# --- bugs the fuzzing found, each at its cause ------------------------------------------------
def test_a_huge_constant_is_refused_naming_its_value():
    """``sinh(1e300)`` is refused as too large; writing its value into the message went
    through sympy's ``Float.__format__`` and raised ``decimal.InvalidOperation``."""
    with pytest.raises(dl.ModelError, match=r"'sinh\(1e300\)' is too large"):
        dl.HybridModel(states=["x"], params={"a": 1.0}, rhs={"x": "-a*x + sinh(1e300)"})
    import sympy as sp
    x = sp.Symbol("x")
    with pytest.raises(dl.ModelError, match="is too large"):
        dl.HybridModel(states=[x], rhs={x: -x + sp.sinh(sp.Float(1e300))})


@pytest.mark.parametrize("call", ["erfc(1e300)", "-(erfc(1e300))"])
def test_a_constant_call_that_mpmath_cannot_evaluate_is_refused(call):
    """Found by the fuzz module in CI: sympy evaluates a call of a constant at once, and
    mpmath's erfc overflows (OverflowError: int too large to convert to float) for 1e300.
    It is refused, naming the function and the column."""
    with pytest.raises(dl.ModelError, match=r"'erfc' of these arguments cannot be evaluated"
                       r".*\(column \d+\)"):
        dl.HybridModel(states=["x"], params={"a": 1.0}, rhs={"x": f"-a*x + {call}"})


def test_data_too_large_to_square_is_a_data_error():
    """A CSV value of -1.2e155 made every loss ``inf`` (the squares overflow), returned as
    a loss and a fit that "converged"; it is refused, naming the value and its row."""
    import pandas as pd
    data = dl.Dataset.from_frame(pd.DataFrame({"t": [0.0, 1.0], "x": [1.0, -1.2e155]}))
    model = dl.HybridModel(states=["x"], params={"a": 0.5}, rhs={"x": "-a*x"})
    for call in (lambda: dl.loss(model, data), lambda: dl.loss_and_grad(model, data),
                 lambda: dl.loss(model, data, loss="gaussian"),
                 lambda: dl.fit(model, data, progress=False)):
        with pytest.raises(dl.DataError, match=r"x=-1.2e\+155 at t=1 \(row 2\): too large"):
            call()
    # large values that square safely are data like any other
    ok = dl.Dataset.from_frame(pd.DataFrame({"t": [0.0, 1.0], "x": [1e100, 2e100]}))
    assert np.isfinite(dl.loss(dl.HybridModel(states=["x"], params={"a": 0.5},
                                              rhs={"x": "a*x"}), ok, y0=[1e100]))


def test_a_loss_that_overflows_is_a_solve_error_never_returned():
    """Finite predictions (x = e^400 t) so far from the data that the squares overflow were
    returned as a loss of ``inf``; now a SolveError (a rejected point inside a fit)."""
    import pandas as pd
    data = dl.Dataset.from_frame(pd.DataFrame({"t": [0.0, 1.0], "x": [1.0, 1.0]}))
    model = dl.HybridModel(states=["x"], params={"a": 400.0}, rhs={"x": "a*x"})
    with pytest.raises(dl.SolveError, match="loss is not finite"):
        dl.loss(model, data)
    for sens in (dl.Adjoint(), dl.ForwardSensitivity()):
        with pytest.raises(dl.SolveError, match="loss is not finite"):
            dl.loss_and_grad(model, data, sensitivity=sens)


def test_a_fit_from_a_start_whose_residuals_overflow_says_so():
    """The same start in a fit: Levenberg-Marquardt's cost ``r @ r`` was ``inf`` (with a
    dozen RuntimeWarnings) and the fit reported "converged: gradient below gtol" with
    status failed. Now the point is rejected, naming the overflow, with no warning."""
    import warnings

    import pandas as pd
    data = dl.Dataset.from_frame(pd.DataFrame({"t": [0.0, 0.5, 1.0], "x": [1.0, 1.5, 2.0]}))
    model = dl.HybridModel(states=["x"], rhs={"x": "a*x"},
                           params={"a": dl.Parameter(400.0, min=0.0, max=1000.0)})
    for opt in (dl.LevenbergMarquardt(), dl.GaussNewton(), dl.Adam(5), dl.LBFGSB()):
        with warnings.catch_warnings():
            warnings.filterwarnings("error", category=RuntimeWarning)
            r = dl.fit(model, data, optimizer=opt, progress=False)
        assert not r.success and r.status is Status.FAILED, opt
        if not isinstance(opt, dl.LBFGSB):     # scipy's own message for L-BFGS-B
            assert "overflow" in r.message, (opt, r.message)


def test_radau_step_matrix_overflow_is_a_solve_error():
    """``y' = -y - 2e300``: Radau's step size underflowed, ``I/h - J`` overflowed, and
    scipy's LU raised a raw ValueError ("array must not contain infs or NaNs")."""
    model = dl.HybridModel(states=["y"], params={"b": -2.0}, rhs={"y": "-y + b*1e300"})
    for method in ("Radau", "BDF"):
        with pytest.raises(dl.SolveError):
            dl.simulate(model, [0, 0.5, 1], [1.0], method=method)
    with pytest.raises(dl.SolveError, match="step matrix is not finite"):
        dl.simulate(model, [0, 0.5, 1], [1.0], method="Radau")


@pytest.mark.parametrize("rhs, sens, method", [
    ({"x": "a*acos(x)"}, dl.Adjoint(kind="discrete"), "RK45"),
    ({"x": "-a*x - min(exp(y), min(x, 6.44))", "y": "-y + acos(y)"},
     dl.Adjoint(kind="continuous"), "LSODA"),
    ({"x": "a*acos(x)"}, dl.ForwardSensitivity(), "RK45")])
def test_a_gradient_through_an_infinite_jacobian_warns_nothing(rhs, sens, method):
    """``acos`` at 1 has an infinite derivative: the adjoints' ``J^T lam`` was NaN with a
    RuntimeWarning from dynlearn (an error in this suite) before the non-finite gradient
    was refused. Now only the refusal: a SolveError."""
    import warnings

    model = dl.HybridModel(states=list(rhs), params={"a": 0.5}, rhs=rhs)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=RuntimeWarning, module="dynlearn")
        with pytest.raises(dl.SolveError, match="not finite|non-finite"):
            dl.loss_and_grad(model, data_for(list(rhs)), sensitivity=sens, method=method)


def test_a_solution_stuck_at_the_edge_of_the_domain_stops_at_once():
    """``x' = -a x - sqrt(log(x))`` from x = 1: every step that moves x below 1 is NaN, so
    the explicit methods crept on in steps too small to change x until the evaluation
    budget ran out (1,000,000 evaluations, 24-35 s), then said "this looks stiff". Now the
    guard counts the non-finite derivatives it samples and stops early, saying why."""
    from dynlearn.solve import MAX_NFEV, SolveGuard
    model = dl.HybridModel(states=["x"], params={"a": 0.5}, rhs={"x": "-a*x - sqrt(ln(x))"})
    for method in ("RK45", "RK23", "DOP853"):
        with pytest.raises(dl.SolveError, match="stuck .* not finite") as err:
            dl.simulate(model, [0, 1, 2], [1.0], method=method)
        assert "max_nfev" not in str(err.value)
        assert err.value.t < 1e-6
    # stopped after a few thousand evaluations, far from the budget
    guard = SolveGuard("RK45")
    assert guard.NON_FINITE_CHECKS * guard.CHECK_EVERY < MAX_NFEV / 100


def test_a_parameter_at_a_pole_of_its_derivative_is_a_solve_error():
    """``a*cbrt(b)`` at b = 0: d/db = a / (3 b^(2/3)) has only parameters in it, and the
    batched derivative got them as Python floats, whose 1/0 raised ZeroDivisionError in the
    discrete adjoint (found by the model-file fuzzing). Now inf, and the gradient is refused."""
    model = dl.HybridModel(states=["x", "y"], params={"a": 0.5, "b": 0.0},
                           rhs={"x": "-a*x", "y": "-y + a*cbrt(b)"})
    for sens in (dl.Adjoint(), dl.ForwardSensitivity()):
        with pytest.raises(dl.SolveError, match="not finite|non-finite"):
            dl.loss_and_grad(model, data_for(["x", "y"]), sensitivity=sens)
    # the batched derivative gives what the one-point one gives
    import sympy as sp

    from dynlearn.core.symbolic import CompiledExprs, derivative
    a, b, x = sp.symbols("a b x")
    c = CompiledExprs([[x], [a, b]], [derivative(a * sp.cbrt(b), b)])
    assert c.batch(1, np.array([[1.0]]), [2.0, 0.0])[0, 0] == np.inf == c([1.0], [2.0, 0.0])[0]


@pytest.mark.parametrize("power", ["asin(-1) ** a", "Min(-1) ** a", "Min(-1) ** x", "(-2)**b"])
def test_a_negative_constant_to_a_varying_power_is_refused(power):
    """Found by the thorough model-file fuzz in CI: ``(-pi/2)**a`` was accepted, its value is
    real at a = 0, but its derivative in ``a`` holds ``log(-pi/2)``, a complex number, and
    the gradient crashed with a TypeError. Such a power is complex at every non-integer
    exponent: refused when the equation is read (and for sympy-built equations), naming it."""
    text = ('[model]\nname = "fuzz"\nstates = ["x", "y"]\n\n[model.equations]\n'
            f'x = "-a*x + x"\ny = "-y + b*({power})"\n\n[model.params]\na = 0.0\nb = 1.0\n')
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.toml"
        path.write_text(text)
        with pytest.raises(dl.ModelError, match=r"negative number .* raised to the varying "
                                                r"power .* is not a real number"):
            load_model_file(path)
    x, a = sp.symbols("x a")
    with pytest.raises(dl.ModelError, match="raised to the varying power a"):
        dl.HybridModel(states=[x], rhs={x: -x + sp.Integer(-2) ** a}, params={a: 0.5})
    # a negative base to a constant integer power, and a positive base to any power, stay
    dl.HybridModel(states=[x], rhs={x: -x + (-2) ** 2 * a + 2 ** a}, params={a: 0.5})


def test_a_condition_on_a_parameter_beside_one_on_a_state_compiles_batched():
    """Found by the thorough equation fuzz: the derivative of ``Heaviside(Min(a, 2.5, x))``
    in ``a`` is a Piecewise whose conditions join a test on the parameter ``a`` (a scalar in
    batched code) and one on the state ``x`` (an array over the batch) with And/Or; sympy
    prints those as ``logical_and.reduce((p, q))``, which stacked them into a ragged array
    and raised ValueError in the discrete adjoint's batched parameter products."""
    case = ("-(-(Heaviside(Min(1e-3, -3.482459688040536e-291, y))))",
            "-(-(Heaviside(Min(a, 2.5, x))))", -0.5, 0.5, "RK45")
    ex, ey, a, b, method = case
    model = build_model({"x": f"-a*x + {ex}", "y": f"-y + b*({ey})"}, {"a": a, "b": b})
    value, grad = dl.loss_and_grad(model, data_for(STATES), method=method,
                                   sensitivity=dl.Adjoint())
    ref = dl.loss_and_grad(model, data_for(STATES), method=method,
                           sensitivity=dl.ForwardSensitivity())[1]
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=1e-8)
