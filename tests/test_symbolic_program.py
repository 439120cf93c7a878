"""Jacobians compiled through shared subexpressions (dynlearn.core.symbolic.jacobian_program,
``CompiledExprs(..., wrt=...)``): the same values as differentiating each entry directly."""

import numpy as np
import pytest
import sympy as sp

import dynlearn as dl
from dynlearn.core.symbolic import CompiledExprs, derivative, jacobian_exprs, jacobian_program

x, y, z, u = sp.symbols("x y z u")
k1, k2, ka, kb, kc, n = sp.symbols("k1 k2 ka kb kc n")
STATES = [x, y, z, u]
PARAMS = [k1, k2, ka, kb, kc, n]


def nested_rhs():
    """Rate laws as SBML models write them: a product of saturating factors shared by
    several equations with different stoichiometric coefficients (Laske's release rate), an
    assignment rule used inside another, a Hill term with a parameter exponent, a function,
    mass action, and a state that appears in nothing (zero columns)."""
    sat = x / (ka + x) * y / (kb + y) * z / (kc + z) * (u + 2) / (u + 3) * k1 * u
    rule = k2 * x * y / (1 + x)                     # an assignment rule ...
    hill = rule * y ** n / (ka ** n + y ** n)       # ... used inside another
    return [-500.0 * sat + 0.1 * k2 * y,
            -433.0 * sat - hill + sp.exp(-k2 * z) * x,
            37.0 * sat + hill - 2.0 * k1 * x * z,
            1.0 * sat - sp.sqrt(k1 * u + z) + rule]


def points(rng, m=6):
    """States and parameters of order one, where no entry is a near-cancellation."""
    return [(list(rng.uniform(0.5, 2.0, 4)), list(rng.uniform(0.5, 2.0, 6))) for _ in range(m)]


def test_program_equals_the_direct_sympy_derivatives():
    rhs = nested_rhs()
    direct = (rhs + [sp.diff(e, s) for e in rhs for s in STATES]
              + [sp.diff(e, p) for e in rhs for p in PARAMS])
    ref = sp.lambdify([STATES, PARAMS], direct, modules="math")
    compiled = CompiledExprs([STATES, PARAMS], rhs, wrt=[STATES, PARAMS])
    assert compiled.shape == (len(direct),)
    rng = np.random.default_rng(1)
    pts = points(rng)
    for ys, ps in pts:
        want = np.array(ref(ys, ps), dtype=float)
        got = compiled(ys, ps)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
        # structural zeros stay exact zeros (d/dn of the equations without n, ...)
        assert np.all(got[want == 0] == 0)
    # the batched (numpy) version gives the same
    Y = np.array([p[0] for p in pts]).T
    P = np.array([p[1] for p in pts]).T
    batch = compiled.batch(len(pts), Y, P)
    for j, (ys, ps) in enumerate(pts):
        np.testing.assert_allclose(batch[:, j], np.array(ref(ys, ps), dtype=float),
                                   rtol=1e-12, atol=0)


def test_jacobian_only_and_its_shape():
    rhs = nested_rhs()
    J = CompiledExprs([STATES, PARAMS], rhs, (4, 4), wrt=[STATES], values=False)
    ref = sp.lambdify([STATES, PARAMS], [[sp.diff(e, s) for s in STATES] for e in rhs],
                      modules="math")
    for ys, ps in points(np.random.default_rng(2)):
        np.testing.assert_allclose(J(ys, ps), np.array(ref(ys, ps), dtype=float),
                                   rtol=1e-12, atol=0)


def test_the_shared_rate_law_is_differentiated_once():
    # per entry, each of the 4 x 10 derivatives of the seven-factor product is a product of
    # the others, which common-subexpression elimination cannot share; through the
    # program the product's derivatives are formed once and each entry scales them
    rhs = nested_rhs()
    wrt = [STATES, PARAMS]
    prog = jacobian_program(rhs, wrt)
    assigns, outs = prog.cse(prog.outputs)
    program_ops = sum(sp.count_ops(e) for _, e in assigns) + sum(sp.count_ops(e) for e in outs)

    def cse_ops(exprs):
        repl, red = sp.cse(exprs)
        return sum(sp.count_ops(e) for _, e in repl) + sum(sp.count_ops(e) for e in red)

    # against sympy.diff of each entry (222 against 317 operations when written) and
    # jacobian_exprs, the per-entry path CompiledModel took before (445)
    assert program_ops < 0.8 * cse_ops(rhs + [sp.diff(e, s) for w in wrt for e in rhs
                                              for s in w])
    assert program_ops < 0.6 * cse_ops(rhs + [d for w in wrt for row in jacobian_exprs(rhs, w)
                                              for d in row])


def test_kinks_through_shared_subexpressions_follow_the_derivative_rules():
    # sqrt(Max(x, 0)) is shared by two equations, so it is differentiated once and used by
    # the chain rule: where Max is constant its derivative is 0, and the term is 0 even
    # where d sqrt/d(.) is infinite, as derivative() does it
    a = sp.sqrt(sp.Max(x, 0))
    exprs = [a * k1 + y, a * y, sp.Max(x, y) ** 2 * sp.Abs(x - y),
             sp.Piecewise((x * y, x > 0), (y ** 2, True)) * a]
    compiled = CompiledExprs([[x, y], [k1]], exprs, wrt=[[x, y], [k1]])
    ref = CompiledExprs([[x, y], [k1]], exprs + [derivative(e, s) for e in exprs
                                                 for s in (x, y)]
                        + [derivative(e, k1) for e in exprs])
    pts = [[-1.0, 2.0], [0.0, 0.0], [0.25, 0.25], [0.3, -1.0], [2.0, 3.0]]
    for p in pts:
        got = compiled(p, [1.5])
        assert np.all(np.isfinite(got)), p
        np.testing.assert_array_equal(got, ref(p, [1.5]))
    X = np.array(pts).T
    K = np.full((1, len(pts)), 1.5)
    np.testing.assert_array_equal(compiled.batch(len(pts), X, K), ref.batch(len(pts), X, K))
    # d/dx sqrt(Max(x, 0)) * k1 at x = -1 and 0: zero, not nan
    assert compiled([-1.0, 2.0], [1.5])[4] == 0.0
    assert compiled([0.0, 0.0], [1.5])[4] == 0.0


def test_hybrid_model_compiled_jacobians_equal_sympy():
    # what the stiff sensitivities call every step: [f, df/dy, df/dtheta] in one call
    m = dl.HybridModel(
        states=["A", "B", "C"],
        params={"k": 2.0, "Ka": 0.7, "Kb": 1.3, "v": 0.9},
        rhs={"A": "-3*k*A*B*C/((Ka + A)*(Kb + B)*(1 + C)) + v",
             "B": "-k*A*B*C/((Ka + A)*(Kb + B)*(1 + C)) - 0.5*B",
             "C": "2*k*A*B*C/((Ka + A)*(Kb + B)*(1 + C)) - exp(-v*C)*C"})
    c = m.compiled
    f, J, Jt = c.split_rhs_and_jacobians(
        c.rhs_and_jacobians()([0.0], [0.8, 1.1, 0.6], [2.0, 0.7, 1.3, 0.9], [], []))
    Y = list(m.states)
    P = list(m.param_symbols)
    sub = dict(zip(Y, [0.8, 1.1, 0.6])) | dict(zip(P, [2.0, 0.7, 1.3, 0.9]))
    rhs = sp.Matrix(list(m.rhs))
    free = [P[i] for i in c.free]
    want_J = np.array(rhs.jacobian(Y).evalf(30, subs=sub), dtype=float)
    want_Jt = np.array(rhs.jacobian(free).evalf(30, subs=sub), dtype=float)
    np.testing.assert_allclose(f, np.array(rhs.evalf(30, subs=sub), dtype=float).ravel(),
                               rtol=1e-13)
    np.testing.assert_allclose(J, want_J, rtol=1e-12)
    np.testing.assert_allclose(Jt, want_Jt, rtol=1e-12)
    np.testing.assert_allclose(c.f_y([0.0], [0.8, 1.1, 0.6], [2.0, 0.7, 1.3, 0.9], [], []),
                               want_J, rtol=1e-12)


def test_only_symbols_are_differentiated_for():
    with pytest.raises(TypeError):
        jacobian_program([x * y], [[x + y]])


def test_lambdified_pickles_and_compiles_once_per_process():
    """``Lambdified`` travels as its expression (the standard pickle cannot send what
    ``lambdify`` generates) and is compiled again at its first call, once per process: a
    second unpickled copy finds the first one's function."""
    import pickle

    from dynlearn.core.symbolic import Lambdified, MaxPick

    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(sp.lambdify([x, y], x * y, modules="numpy"))
    f = Lambdified([x, y], [sp.exp(-x) * y, MaxPick(x, y, 1, 2)], namespace=True, cse=True)
    point = (np.array([0.5, 3.0]), np.array([2.0, 1.0]))
    want = f(*point)
    first, second = (pickle.loads(pickle.dumps(f)) for _ in range(2))
    assert first._fn is None
    for got, w in zip(first(*point), want):
        np.testing.assert_array_equal(got, w)
    assert second._cached() is first._fn
