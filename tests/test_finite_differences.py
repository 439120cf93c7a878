"""Finite differences on each parameter's own scale (issue #14): rates of 1e-7 and 1e3 in
one model, log-transformed and zero-bounded parameters, and bounds no evaluation crosses."""

import numpy as np
import pandas as pd
import pytest
import sympy as sp

import dynlearn as dl
import dynlearn.sensitivity.finite_difference as fd_module
from dynlearn.testing import relative_error

TOL = dict(method="DOP853", rtol=1e-12, atol=1e-14)


def two_scale_model(k1=1e-7, k2=1e3, **spec):
    """``x' = -1e6 k1 x``, ``y' = 1e-3 k2 (x - y)``: rates 1e-7 and 1e3 whose effects are
    both of order one."""
    x, y, a, b = sp.symbols("x y k1 k2")
    return dl.HybridModel(states=[x, y], rhs={x: -1e6 * a * x, y: 1e-3 * b * (x - y)},
                          params={a: dl.Parameter(k1, **spec), b: dl.Parameter(k2, **spec)})


@pytest.fixture(scope="module")
def data():
    t = np.linspace(0.0, 5.0, 11)
    truth = two_scale_model()
    sim = dl.simulate(truth, t, y0=[1.0, 0.2], **TOL)
    df = pd.DataFrame({"t": t, "x": sim.y[:, 0] * 1.03, "y": sim.y[:, 1] * 0.98 + 0.01})
    return dl.Dataset.from_frame(df, time="t")


@pytest.mark.parametrize("spec", [{}, {"transform": "log"}, {"min": 0.0}],
                         ids=["identity", "log", "zero-bounded"])
@pytest.mark.parametrize("order", [2, 4])
def test_rates_of_very_different_sizes(data, spec, order):
    model = two_scale_model(**spec)
    theta = np.array([1.3e-7, 0.8e3])
    exact = dl.loss_and_grad(model, data, theta, sensitivity=dl.ForwardSensitivity(), **TOL)[1]
    fd = dl.loss_and_grad(model, data, theta, sensitivity=dl.FiniteDifference(order=order),
                          **TOL)[1]
    # the gradient in k1 is ~1e10 times the one in k2: compare entry by entry
    assert np.max(np.abs(fd - exact) / np.abs(exact)) < 1e-5
    assert relative_error(fd, exact) < 1e-5


def test_a_step_in_physical_units_fails_there(data):
    """What the relative step mends: a step of ``1e-6 * max(1, |k|)`` (the physical-units
    rule, still what :meth:`derivatives` does without scales) moves k1 = 1.3e-7 to
    -8.7e-7, a growing x, and the difference means nothing (with the 4th-order default
    step of 1e-3 the solve itself fails)."""
    model = two_scale_model()
    theta = np.array([1.3e-7, 0.8e3])
    obj = dl.Objective(model, data, sensitivity=dl.ForwardSensitivity(), **TOL)
    exact = obj.value_and_grad(theta)[1]
    _, g, _ = dl.FiniteDifference(order=2).derivatives(obj.value, theta)
    assert abs(g[0] - exact[0]) > 10 * abs(exact[0])


def test_no_evaluation_outside_the_bounds(data, monkeypatch):
    """At (and next to) a bound the stencil turns one-sided; the gradient still matches."""
    seen = []
    solve = fd_module.solve_observed

    def recording(vf, *args, **kw):
        seen.append(np.array(vf.theta))
        return solve(vf, *args, **kw)

    monkeypatch.setattr(fd_module, "solve_observed", recording)
    lo, hi = np.array([1e-7, 500.0]), np.array([2e-7, 1e3])
    x, y, a, b = sp.symbols("x y k1 k2")
    for theta in ([1e-7, 1e3], [1.0000001e-7, 999.9999], [1.5e-7, 700.0]):
        for spec in ({}, {"transform": "log"}):
            model = dl.HybridModel(
                states=[x, y], rhs={x: -1e6 * a * x, y: 1e-3 * b * (x - y)},
                params={a: dl.Parameter(1.5e-7, min=lo[0], max=hi[0], **spec),
                        b: dl.Parameter(700.0, min=lo[1], max=hi[1], **spec)})
            for order in (2, 4):
                seen.clear()
                g = dl.loss_and_grad(model, data, theta, dl.FiniteDifference(order=order),
                                     **TOL)[1]
                assert len(seen) >= 2 * order
                used = np.array(seen)
                assert np.all(used >= lo) and np.all(used <= hi), (theta, spec, order)
                exact = dl.loss_and_grad(model, data, theta, dl.ForwardSensitivity(), **TOL)[1]
                assert np.max(np.abs(g - exact) / np.abs(exact)) < 1e-5


def test_initial_states_on_their_own_scale():
    """Initial states of 1e-9 (a concentration in mol/L) and 0 get relative steps too."""
    x, y, k = sp.symbols("x y k")
    model = dl.HybridModel(states=[x, y], rhs={x: -k * x, y: k * x - 0.3 * y}, params={k: 0.7})
    t = np.linspace(0.0, 4.0, 9)
    sim = dl.simulate(model, t, y0=[2e-9, 0.0], **TOL)
    data = dl.Dataset.from_frame(pd.DataFrame({"t": t, "x": sim.y[:, 0] * 1.1,
                                               "y": sim.y[:, 1] * 0.9}), time="t")
    obj = dl.Objective(model, data, y0=[2e-9, 0.0], **TOL)
    for sens in (dl.ForwardSensitivity(), dl.FiniteDifference(order=2),
                 dl.FiniteDifference(order=4)):
        obj = dl.Objective(model, data, y0=[2e-9, 0.0], sensitivity=sens, **TOL)
        if isinstance(sens, dl.ForwardSensitivity):
            _, g_ref, (gy_ref,) = obj.value_and_grad(wrt_y0=True)
            continue
        _, g, (gy,) = obj.value_and_grad(wrt_y0=True)
        assert relative_error(g, g_ref) < 1e-6
        assert np.max(np.abs(gy - gy_ref) / np.abs(gy_ref)) < 1e-5


@pytest.mark.parametrize("order", [2, 4])
def test_derivatives_one_sided_and_in_log(order):
    """The stencils themselves: one-sided ones are exact for polynomials of degree <= order,
    log coordinates return derivatives in x, and bounds hold for every evaluation."""
    fd = dl.FiniteDifference(step=1e-2, order=order)
    evaluated = []

    def f(v):
        evaluated.append(v.copy())
        return v[0] ** 2 - 3.0 * v[0] + v[1] ** 2 + 2.0 * v[1] * v[2]

    x = np.array([1.0, 0.5, 4.0])
    lower = np.array([1.0, 0.0, -np.inf])
    upper = np.array([np.inf, 0.5 + 1e-5, np.inf])
    f0, g, c = fd.derivatives(f, x, curvature=True, lower=lower, upper=upper,
                              log=[False, False, True])
    assert f0 == f(x)
    np.testing.assert_allclose(g, [-1.0, 9.0, 1.0], rtol=1e-9 if order == 4 else 1e-3)
    np.testing.assert_allclose(c[:2], [2.0, 2.0], rtol=1e-6)
    assert abs(c[2]) < 1e-4
    used = np.array(evaluated)
    assert np.all(used >= lower) and np.all(used <= upper)
    # the third coordinate moved by relative steps (the log scale)
    third = np.unique(used[:, 2])
    assert np.allclose(np.sort(np.abs(np.log(third / 4.0)))[1:3], 1e-2)


def test_invalid_step():
    with pytest.raises(dl.OptionError):
        dl.FiniteDifference(step=0.0)
