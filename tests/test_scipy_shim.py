"""scipy's private Runge-Kutta internals, as dynlearn.sensitivity.scipy_rk relies on them.

Each test names the attribute it checks: if a scipy release changes one, these fail first and
say which (the discrete adjoint would otherwise fail obscurely, or silently lose exactness).
"""

import numpy as np
import pytest
import scipy
from scipy.integrate import RK23, RK45, solve_ivp

from dynlearn.sensitivity import scipy_rk
from dynlearn.sensitivity.discrete import dense_output_weights
from dynlearn.sensitivity.scipy_rk import (
    RECORDING_SOLVERS,
    missing_internals,
    next_step_size,
    rk_step,
    tableau,
)

SCIPY = f"scipy {scipy.__version__}"


def lorenz(t, y):
    return np.array([10.0 * (y[1] - y[0]), y[0] * (28.0 - y[2]) - y[1],
                     y[0] * y[1] - 8.0 / 3.0 * y[2]]) + 0.1 * np.sin(t)


Y0 = np.array([1.0, 2.0, 20.0])
KW = dict(rtol=1e-5, atol=1e-7)


def run(solver, n=None):
    k = 0
    while solver.status == "running" and (n is None or k < n):
        solver.step()
        k += 1
    return solver


def test_every_internal_relied_on_exists():
    problems = missing_internals()
    assert problems == [], f"{SCIPY} changed internals dynlearn relies on: {problems}"


@pytest.mark.parametrize("method, scipy_cls", [("RK45", RK45), ("RK23", RK23)])
def test_tableau_class_attributes(method, scipy_cls):
    tab = tableau(RECORDING_SOLVERS[method])
    s = tab.n_stages
    assert s == scipy_cls.n_stages, f"{SCIPY}: {method}.n_stages"
    assert tab.A.shape == (s, s) and np.allclose(np.triu(tab.A), 0), \
        f"{SCIPY}: {method}.A is not an explicit (strictly lower triangular) Butcher matrix"
    assert np.allclose(tab.A.sum(axis=1), tab.C), f"{SCIPY}: {method}.A rows do not sum to C"
    assert tab.C[0] == 0 and tab.B.sum() == pytest.approx(1.0), f"{SCIPY}: {method}.B or .C"
    # the dense output at sigma = 1 is the step's end: P's rows sum to (B, 0)
    assert np.allclose(tab.P.sum(axis=1), np.append(tab.B, 0.0)), \
        f"{SCIPY}: {method}.P does not end the dense output at the step's end"


@pytest.mark.parametrize("method", ["RK45", "RK23"])
def test_recorded_steps_are_scipys_steps(method):
    # step the recording solver and scipy's own side by side: same steps, same states, and
    # the record (t_j, h_j, y_j, K_j) reproduces each step with scipy's rk_step bit for bit
    cls = RECORDING_SOLVERS[method]
    scipy_cls = {"RK45": RK45, "RK23": RK23}[method]
    rec = cls(lorenz, 0.0, Y0, 2.0, **KW)
    ref = scipy_cls(lorenz, 0.0, Y0, 2.0, **KW)
    while ref.status == "running":
        ref.step()
        rec.step()
        assert rec.t == ref.t and np.array_equal(rec.y, ref.y), \
            f"{SCIPY}: {method}._step_impl of the recording solver left other t/y than scipy's"
    T0, H, Y, K = rec.record()
    assert T0.size > 20 and np.array_equal(T0[1:], T0[:-1] + H[:-1]), \
        f"{SCIPY}: {method}._step_impl did not leave the accepted step in t"
    s = tableau(cls).n_stages
    assert K.shape == (T0.size, s + 1, 3), f"{SCIPY}: {method}().K has shape {K.shape[1:]}"
    for j in range(T0.size):
        Kj = np.empty((s + 1, 3))
        y1, f1 = rk_step(cls, lorenz, T0[j], Y[j], lorenz(T0[j], Y[j]), H[j], Kj)
        assert np.array_equal(Kj, K[j]), f"{SCIPY}: {method}().K is not the stage array"
        end = Y[j + 1] if j + 1 < T0.size else rec.y
        assert np.array_equal(y1, end), f"{SCIPY}: rk_step differs from {method}'s own step"
        assert np.array_equal(K[j, s], f1), f"{SCIPY}: {method}().K[-1] is not f(t_new, y_new)"


@pytest.mark.parametrize("method", ["RK45", "RK23"])
def test_dense_output_matches_scipys(method):
    cls = RECORDING_SOLVERS[method]
    rec = run(cls(lorenz, 0.0, Y0, 1.0, **KW))
    T0, H, Y, K = rec.record()
    t = np.linspace(0.013, 0.99, 37)
    ref = solve_ivp(lorenz, (0.0, 1.0), Y0, method=method, t_eval=t, **KW).y.T
    j, q = dense_output_weights(t, T0, H, tableau(cls).P)
    ours = Y[j] + H[j, None] * np.einsum("mi,min->mn", q, K[j])
    np.testing.assert_allclose(ours, ref, rtol=1e-13, atol=1e-13,
                               err_msg=f"{SCIPY}: {method}.P is not the dense-output matrix")


@pytest.mark.parametrize("method", ["RK45", "RK23"])
def test_restart_with_next_step_size_retraces_the_steps(method):
    # checkpointed discrete adjoints restart a solver from (t, y, h_abs) and must take the
    # very steps the original run took
    cls = RECORDING_SOLVERS[method]
    full = run(cls(lorenz, 0.0, Y0, 2.0, **KW))
    part = run(cls(lorenz, 0.0, Y0, 2.0, **KW), n=15)
    h = next_step_size(part)
    assert h is not None and h > 0, f"{SCIPY}: {method}().h_abs missing"
    rest = run(cls(lorenz, part.t, part.y, 2.0, first_step=min(h, 2.0 - part.t), **KW))
    a, b = full.record(), rest.record()
    n = b[0].size
    assert np.array_equal(a[0][15:], b[0]) and np.array_equal(a[1][15:], b[1]), \
        f"{SCIPY}: a {method} restarted with first_step=h_abs takes other steps"
    assert np.array_equal(a[3][15:15 + n], b[3])


def test_next_step_size_of_solvers_without_one():
    class NoStepSize:
        pass
    assert next_step_size(NoStepSize()) is None


def test_the_shim_is_the_only_user_of_scipy_internals():
    import pathlib
    root = pathlib.Path(scipy_rk.__file__).parents[1]
    users = []
    for path in root.rglob("*.py"):
        text = path.read_text()
        if path.name != "scipy_rk.py" and ("_ivp" in text.replace("solve_ivp", "")
                                           or "_step_impl" in text or ".h_abs" in text):
            users.append(str(path.relative_to(root)))
    assert users == []
