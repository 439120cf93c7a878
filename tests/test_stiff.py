"""Stiff solves with sensitivities (issue: stiff models at AMICI-class speed)."""

import functools

import numpy as np
import pytest
import sympy as sp

import dynlearn as dl
from dynlearn.core.symbolic import CompiledExprs
from dynlearn.core.vectorfield import VectorField
from dynlearn.sensitivity.base import Problem
from dynlearn.sensitivity.choice import STIFF_FORWARD_LIMIT, default_sensitivity
from dynlearn.sensitivity.forward import compiled_sensitivity_rhs, jacobian_product
from dynlearn.testing import (
    central_difference,
    check_gradient,
    lotka_volterra_problem,
    lv_ude_problem,
    relative_error,
)


def test_lsoda_forward_sensitivities_of_a_large_augmented_system():
    """LSODA crashed inside scipy once the sensitivity system passed 60-80 components: it was
    handed a sparse Jacobian, which its Fortran core cannot take. Here 2 states x 90
    (89 parameters + 1) = 180 components."""
    model, data, theta = lv_ude_problem()
    theta = theta * 1.05
    ref = dl.loss_and_grad(model, data, theta, sensitivity=dl.ForwardSensitivity(),
                           method="DOP853", rtol=1e-12, atol=1e-12)[1]
    for sparse in (None, True):
        g = dl.loss_and_grad(model, data, theta, method="LSODA", rtol=1e-10, atol=1e-10,
                             sensitivity=dl.ForwardSensitivity(sparse_jacobian=sparse))[1]
        assert relative_error(g, ref) < 1e-5


class _Recording(dl.ForwardSensitivity):
    """Forward sensitivities that note the width of every system they solve."""

    def __init__(self):
        super().__init__()
        self.widths = []

    def trajectories(self, prob, wrt_y0=False):
        Y, S = super().trajectories(prob, wrt_y0)
        self.widths.append(S.shape[2])
        return Y, S


def test_initial_state_sensitivities_only_when_an_initial_state_is_estimated():
    """The fit's residual Jacobian carried d/dy0 always, so the system was n(1 + p + n)
    even with the initial state taken from the data."""
    model, data, _ = lotka_volterra_problem()
    n_free = model.theta0.size
    for y0, width in (("first", n_free), ("estimate", n_free + len(model.states))):
        sens = _Recording()
        result = dl.fit(model, data, y0=y0, sensitivity=sens, method="LSODA",
                        optimizer=dl.LevenbergMarquardt(max_iter=3), progress=False)
        assert sens.widths and set(sens.widths) == {width}, (y0, set(sens.widths))
        assert np.all(np.isfinite(result.x))


# --- fast paths of the stiff forward sensitivities -----------------------------------------
@functools.cache
def _chain(n: int):
    """A stiff mass-action chain ``A_i -> A_{i+1}`` (rates over three decades) with a
    bimolecular back reaction: n states, n log-rate parameters, Jacobian tridiagonal."""
    y = sp.symbols(f"y0:{n}")
    lk = sp.symbols(f"lk0:{n - 1}")
    lb = sp.Symbol("lb")
    rhs = {s: sp.S.Zero for s in y}
    for i in range(n - 1):
        r = sp.exp(lk[i]) * y[i] - sp.exp(lb) * y[i + 1] ** 2
        rhs[y[i]] -= r
        rhs[y[i + 1]] += r
    logk = np.log(10.0) * np.linspace(3.0, 0.0, n - 1)[np.argsort(np.arange(n - 1) % 3)]
    params = {s: float(v) for s, v in zip(lk, logk)}
    params[lb] = float(np.log(0.5))
    model = dl.HybridModel(states=list(y), params=params, rhs=rhs)
    t = np.concatenate([[0.0], np.logspace(-2, 1, 12)])
    y0 = np.zeros(n)
    y0[0] = 1.0
    sol = dl.simulate(model, t, y0, method="LSODA", rtol=1e-12, atol=1e-14)
    data = dl.Dataset.from_frame(sol.to_frame(), time=sol.time_name)
    theta = model.theta0 + 0.2 * np.cos(np.arange(model.theta0.size))
    return model, data, theta


def test_structural_jacobian_pattern_and_bandwidth():
    """The pattern holds every non-zero of df/dy at random points, including the entries
    a network feeds; the chain's Jacobian is tridiagonal."""
    model, _, _ = _chain(9)
    c = model.compiled
    assert c.jacobian_bandwidth() == (1, 1)
    x, y, z = sp.symbols("x y z")
    nn = dl.MLP("nn", inputs=[z], outputs=1, hidden=[3], seed=1)
    hyb = dl.HybridModel(states=[x, y, z], rhs={x: -x + nn[0], y: x - y, z: y})
    pat = hyb.compiled.jacobian_pattern()
    assert pat.tolist() == [[True, False, True], [True, True, False], [False, True, False]]
    assert hyb.compiled.jacobian_bandwidth() == (1, 2)
    rng = np.random.default_rng(0)
    vf = VectorField(model, model.theta0)
    for _ in range(5):
        J = vf.jac(0.0, rng.uniform(0.1, 2.0, 9))
        assert np.all(c.jacobian_pattern()[J != 0])


def test_one_call_rhs_and_jacobians_match_the_separate_functions():
    model, _, theta = _chain(9)
    vf = VectorField(model, theta)
    yv = np.linspace(0.1, 1.0, 9)
    f, J, Jt = vf.c.split_rhs_and_jacobians(
        vf.c.rhs_and_jacobians()([0.0], yv.tolist(), vf.pl, [], []))
    J2, Jt2 = vf.jac_and_theta_jac(0.0, yv)
    np.testing.assert_allclose(f, vf.fun(0.0, yv), rtol=1e-14)
    np.testing.assert_allclose(J, J2, rtol=1e-14)
    np.testing.assert_allclose(Jt, Jt2, rtol=1e-14)


def test_mostly_zero_compiled_outputs_scatter_into_place():
    """Outputs that are mostly structural zeros are compiled sparsely; one point and a
    batch both give the full array, with the zeros in place."""
    a, b = sp.symbols("a b")
    exprs = [0, a * b, 0, 0, sp.exp(a), 0]
    ce = CompiledExprs([[a, b]], exprs, (2, 3))
    np.testing.assert_allclose(ce([2.0, 3.0]), [[0, 6, 0], [0, np.exp(2.0), 0]])
    B = ce.batch(2, np.array([[2.0, 0.0], [3.0, 1.0]]))
    np.testing.assert_allclose(B[:, :, 1], [[0, 0, 0], [0, 1, 0]])
    np.testing.assert_allclose(B[:, :, 0], ce([2.0, 3.0]))
    assert CompiledExprs([[a]], [0, 0]).batch(3, np.ones(3)).tolist() == [[0] * 3] * 2
    # the compiled entries alone, at the positions ``nonzero`` names
    assert ce.nonzero.tolist() == [1, 4]
    np.testing.assert_allclose(ce.values([2.0, 3.0]), [6.0, np.exp(2.0)])
    dense = CompiledExprs([[a, b]], [a, b, a * b])
    assert dense.nonzero.tolist() == [0, 1, 2]
    np.testing.assert_allclose(dense.values([2.0, 3.0]), dense([2.0, 3.0]))
    assert CompiledExprs([[a]], [0, 0]).values([1.0]).size == 0


def _chain_with_a_constant_state(n: int):
    """``_chain(n)`` plus a state that never changes and scales the first rate: a zero
    equation (an ``f`` entry that is a structural zero)."""
    model, _, _ = _chain(n)
    c = sp.Symbol("c")
    rhs = {s: e.subs(model.states[0], c * model.states[0])
           for s, e in zip(model.states, model.rhs)}
    rhs[c] = sp.S.Zero
    return dl.HybridModel(states=[*model.states, c], params=dict(model.params), rhs=rhs)


def test_sensitivity_products_dense_and_sparse_against_finite_differences():
    """``compiled_sensitivity_rhs``' dense and sparse products (``ForwardSensitivity(
    product=...)``) give the same right-hand side to rounding, and sensitivities along
    directions that mix several parameters each (and the initial state) that match central
    differences of the solve; ``auto`` takes one of the two, to the bit."""
    model = _chain_with_a_constant_state(9)
    n = model.n_states
    t = np.logspace(-2, 1, 5)
    y0 = np.r_[1.0, np.full(n - 2, 0.05), 1.3]
    theta = model.theta0 + 0.1
    rng = np.random.default_rng(5)
    Dtheta = rng.standard_normal((theta.size, 3))
    Dtheta[:, 2] = 0.0
    D0 = np.zeros((n, 3))
    D0[n - 1, 2] = 1.0                       # the constant state's initial value
    vf = VectorField(model, theta)
    q = 3
    z = np.r_[y0, rng.standard_normal(n * q)]
    rhs = {p: compiled_sensitivity_rhs(vf, q, Dtheta, p) for p in ("dense", "sparse", "auto")}
    out = {p: fn(0.3, z) for p, fn in rhs.items()}
    np.testing.assert_allclose(out["dense"], out["sparse"], rtol=1e-13, atol=1e-13)
    assert any(np.array_equal(out["auto"], out[p]) for p in ("dense", "sparse"))
    assert np.all(out["dense"][n - 1::n][1:] == out["dense"][n - 1])  # no forcing on c

    def states(s):
        return dl.simulate(model, t, y0 + D0 @ s, theta=theta + Dtheta @ s, method="LSODA",
                           rtol=1e-12, atol=1e-14, t0=0.0).y

    fd = central_difference(states, np.zeros(3), step=1e-6, relative=False)
    S = {}
    for p in ("dense", "sparse"):
        prob = Problem(VectorField(model, theta), 0.0, t, y0, obs_loss=None,
                       method="LSODA", rtol=1e-11, atol=1e-13)
        _, S[p] = dl.ForwardSensitivity(product=p).directional(prob, Dtheta, D0)
        err = relative_error(S[p], fd)
        print(f"{p}: {err:.1e} against finite differences")
        assert err < 1e-5, (p, err)
    assert relative_error(S["dense"], S["sparse"]) < 1e-8
    with pytest.raises(ValueError, match="product"):
        dl.ForwardSensitivity(product="fast")


def test_auto_product_is_dense_for_small_products_of_a_sparse_jacobian(monkeypatch):
    """A 21-state chain's Jacobian is sparse (under a quarter non-zero), but its product
    with 3 directions is small: ``auto`` forms it densely, and sparsely once the product
    exceeds ``DENSE_PRODUCT_LIMIT``; both to rounding of each other."""
    import dynlearn.sensitivity.forward as forward_module

    model = _chain_with_a_constant_state(20)
    n = model.n_states
    vf = VectorField(model, model.theta0 + 0.1)
    assert 4 * np.count_nonzero(vf.c.jacobian_pattern()) <= n * n
    rng = np.random.default_rng(2)
    q = 3
    Dtheta = rng.standard_normal((model.theta0.size, q))
    z = np.r_[rng.uniform(0.1, 1.0, n), rng.standard_normal(n * q)]
    out = {p: compiled_sensitivity_rhs(vf, q, Dtheta, p)(0.3, z)
           for p in ("dense", "sparse", "auto")}
    np.testing.assert_array_equal(out["auto"], out["dense"])
    monkeypatch.setattr(forward_module, "DENSE_PRODUCT_LIMIT", 0)
    np.testing.assert_array_equal(compiled_sensitivity_rhs(vf, q, Dtheta, "auto")(0.3, z),
                                  out["sparse"])
    np.testing.assert_allclose(out["dense"], out["sparse"], rtol=1e-12,
                               atol=1e-12 * np.abs(out["sparse"]).max())


def test_lsoda_banded_sensitivities_against_finite_differences_and_radau():
    """A 9-state stiff chain (9 x 10 = 90 components: past the symbolic system, so the
    one-call right-hand side, and LSODA's banded Jacobian; Radau takes the sparse block
    Jacobian): the gradient agrees with 4th-order central finite differences and with
    Radau at tight tolerance."""
    model, data, theta = _chain(9)
    err_fd = check_gradient(model, data, theta, dl.ForwardSensitivity(), method="LSODA",
                            rtol=1e-10, atol=1e-12)
    ref = dl.loss_and_grad(model, data, theta, sensitivity=dl.ForwardSensitivity(),
                           method="Radau", rtol=1e-11, atol=1e-13)[1]
    g = dl.loss_and_grad(model, data, theta, sensitivity=dl.ForwardSensitivity(),
                         method="LSODA", rtol=1e-10, atol=1e-12)[1]
    print(f"LSODA banded: {err_fd:.1e} against finite differences, "
          f"{relative_error(g, ref):.1e} against Radau")
    assert err_fd < 1e-5, err_fd
    assert relative_error(g, ref) < 1e-6, relative_error(g, ref)


def test_initial_state_sensitivities_through_the_one_call_path():
    """dy/d[theta, y0] of the 9-state chain against central differences of the solve."""
    model, data, theta = _chain(9)
    t = np.logspace(-2, 1, 6)
    y0 = np.r_[1.0, np.full(8, 0.05)]
    vf = VectorField(model, theta)
    prob = Problem(vf, 0.0, t, y0, obs_loss=None, method="LSODA", rtol=1e-11, atol=1e-13)
    Y, S = dl.ForwardSensitivity().trajectories(prob, wrt_y0=True)
    assert S.shape == (6, 9, 9 + 9)

    def states(th, y):
        return dl.simulate(model, t, y, theta=th, method="LSODA", rtol=1e-12, atol=1e-14,
                           t0=0.0).y

    fd = central_difference(lambda z: states(z[:9], z[9:]), np.r_[theta, y0], step=1e-6,
                            relative=False)
    print(f"dy/d[theta, y0]: {relative_error(S, fd):.1e} against finite differences")
    assert relative_error(S, fd) < 1e-5, relative_error(S, fd)


def test_default_gradient_is_forward_sensitivities_for_stiff_methods_with_few_parameters():
    """With a stiff method the continuous adjoint costs 12-44 forward solves against 1.4-16
    for forward sensitivities up to 100 parameters (benchmarks/bench_stiff.py), so those
    are the default there; the adjoint stays the default elsewhere."""
    model, data, theta = lotka_volterra_problem()
    for method in ("LSODA", "Radau", "BDF"):
        o = dl.Objective(model, data, method=method)
        assert isinstance(o.sensitivity, dl.ForwardSensitivity), method
    assert isinstance(dl.Objective(model, data).sensitivity, dl.Adjoint)
    assert isinstance(default_sensitivity("LSODA", STIFF_FORWARD_LIMIT + 1), dl.Adjoint)
    g = dl.loss_and_grad(model, data, theta, method="LSODA", rtol=1e-10, atol=1e-10)[1]
    ref = dl.loss_and_grad(model, data, theta, method="Radau", rtol=1e-12, atol=1e-12,
                           sensitivity=dl.ForwardSensitivity())[1]
    assert relative_error(g, ref) < 1e-6


def test_sparse_jacobian_product_matches_the_dense_one():
    """The fixed-pattern sparse product used for sparse Jacobians equals ``ST @ J.T``
    (and a dense pattern takes the dense product)."""
    rng = np.random.default_rng(1)
    n, q = 12, 5
    pattern = np.eye(n, dtype=bool) | (rng.uniform(size=(n, n)) < 0.1)
    assert 4 * pattern.sum() <= n * n
    product = jacobian_product(pattern)
    for _ in range(2):     # the pattern's values are refreshed on every call
        J = np.where(pattern, rng.standard_normal((n, n)), 0.0)
        ST = rng.standard_normal((q, n))
        np.testing.assert_allclose(product(J, ST), ST @ J.T, rtol=1e-13, atol=1e-13)
    full = np.ones((n, n), dtype=bool)
    J = rng.standard_normal((n, n))
    np.testing.assert_allclose(jacobian_product(full)(J, ST), ST @ J.T, rtol=1e-13)


def test_lsoda_continuous_adjoint_of_a_large_backward_system():
    """The continuous adjoint handed LSODA a sparse Jacobian once its backward system passed
    60 components (2 states + 89 parameters here) and crashed inside scipy."""
    model, data, theta = lv_ude_problem()
    theta = theta * 1.05
    ref = dl.loss_and_grad(model, data, theta, sensitivity=dl.ForwardSensitivity(),
                           method="DOP853", rtol=1e-12, atol=1e-12)[1]
    g = dl.loss_and_grad(model, data, theta, method="LSODA", rtol=1e-10, atol=1e-10,
                         sensitivity=dl.Adjoint(kind="continuous"))[1]
    assert relative_error(g, ref) < 1e-5


def test_directional_sensitivities_equal_the_chain_rule_through_all_of_them():
    """``ForwardSensitivity.directional`` integrates ``dy/dx = dy/dtheta Dtheta + dy/dy0 D0``
    directly (what dl.petab needs: n (1 + k) components instead of n (1 + n_theta + n)).
    Against the full ``dy/d[theta, y0]`` and the chain rule, for the stiff 9-state chain
    with LSODA (banded Jacobian) and BDF (sparse), including a direction that moves
    nothing (left out of the system, zero in the result) and one that moves only y0; and
    for the 3-state chain, small enough for the compiled symbolic system."""
    t = np.logspace(-2, 1, 6)
    rng = np.random.default_rng(3)
    k = 4
    for n in (9, 3):
        model, data, theta = _chain(n)
        y0 = np.r_[1.0, np.full(n - 1, 0.05)]
        Dtheta = rng.standard_normal((n, k))
        D0 = np.zeros((n, k))
        D0[0, 1], D0[n - 1, 2] = 0.7, -0.2
        Dtheta[:, 2] = 0.0          # moves y0 only
        Dtheta[:, 3] = 0.0          # moves nothing
        for method in ("LSODA", "BDF"):
            vf = VectorField(model, theta)
            prob = Problem(vf, 0.0, t, y0, obs_loss=None, method=method, rtol=1e-11,
                           atol=1e-13)
            Yf, Sf = dl.ForwardSensitivity().trajectories(prob, wrt_y0=True)
            ref = Sf[:, :, :n] @ Dtheta + Sf[:, :, n:] @ D0
            Y, S = dl.ForwardSensitivity().directional(prob, Dtheta, D0)
            assert S.shape == (6, n, k)
            assert np.all(S[:, :, 3] == 0.0)
            err = relative_error(S, ref)
            print(f"n = {n}, {method}: directional vs chain rule {err:.1e}, states "
                  f"{relative_error(Y, Yf):.1e}")
            assert err < 1e-7, (n, method, err)
            assert relative_error(Y, Yf) < 1e-9


def test_directional_sensitivities_without_initial_state_directions_match_differences():
    """``directional`` with ``D0`` omitted against central differences of the solve along
    each direction (LSODA, the 9-state chain)."""
    model, data, theta = _chain(9)
    t = np.logspace(-2, 1, 5)
    y0 = np.r_[1.0, np.full(8, 0.05)]
    Dtheta = np.random.default_rng(4).standard_normal((9, 2))
    prob = Problem(VectorField(model, theta), 0.0, t, y0, obs_loss=None, method="LSODA",
                   rtol=1e-11, atol=1e-13)
    _, S = dl.ForwardSensitivity().directional(prob, Dtheta)

    def states(th):
        return dl.simulate(model, t, y0, theta=th, method="LSODA", rtol=1e-12, atol=1e-14,
                           t0=0.0).y

    fd = central_difference(lambda s: states(theta + Dtheta @ s), np.zeros(2), step=1e-6,
                            relative=False)
    print(f"directional: {relative_error(S, fd):.1e} against finite differences")
    assert relative_error(S, fd) < 1e-5, relative_error(S, fd)


def test_symbolic_jacobian_skips_only_entries_without_the_symbol():
    """``jacobian_exprs`` differentiates only where the expression holds the symbol: the
    result equals sympy's full Jacobian, kinks included, and zeros are exact zeros."""
    from dynlearn.core.symbolic import jacobian_exprs

    x, y, z, p = sp.symbols("x y z p")
    exprs = [p * x * y, sp.Max(x, 0) * z, sp.exp(-p) + y ** 2, sp.S(3)]
    wrt = [x, y, z, p]
    J = jacobian_exprs(exprs, wrt)
    full = sp.Matrix(exprs).jacobian(sp.Matrix(wrt))
    for i in range(len(exprs)):
        for j in range(len(wrt)):
            if i == 1 and j == 0:    # the kink rule's pick instead of sympy's Heaviside
                continue
            assert sp.simplify(J[i][j] - full[i, j]) == 0, (i, j, J[i][j])
    assert J[3] == [0, 0, 0, 0] and J[0][2] == 0 and J[2][0] == 0
    assert J[1][0] != 0
