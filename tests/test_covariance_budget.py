"""The standard errors after a fit are bounded in time (issue #14): a Jacobian at the
optimum that takes too long is cut off and the result says why; nothing hangs.

No timed asserts: a fake slow Jacobian (solves in a loop, each checking the deadline) is
stopped by the budget, and the tests count calls and read messages."""

import time
from types import SimpleNamespace

import numpy as np
import pytest

import dynlearn as dl
import dynlearn.results.result as result_module
from dynlearn.objective.objective import FitObjective
from dynlearn.results.covariance import (
    COVARIANCE_JACOBIANS,
    COVARIANCE_MIN_SECONDS,
    covariance_budget,
    optimum_jacobian,
)
from dynlearn.solve import deadline
from dynlearn.testing import decay_model, lotka_volterra_data, lotka_volterra_fit_model

CAP = 100_000     # a fake Jacobian that is never stopped ends here, and the test fails


def slow_jacobian(calls):
    """A Jacobian that never finishes by itself: solves again and again (every solve checks
    the deadline in force), counting them."""
    model = decay_model()

    def jacobian(self, x):
        calls["jacobian"] += 1
        while calls["solves"] < CAP:
            calls["solves"] += 1
            dl.simulate(model, [0.0, 1.0], [1.0])
        raise AssertionError("the budget never stopped the Jacobian")
    return jacobian


def test_budget_from_the_fits_own_cost():
    run = SimpleNamespace(nfev=50, njev=10, ngev=0)
    other = SimpleNamespace(nfev=30, njev=0, ngev=30)
    # 40 derivative evaluations in 200 s: 5 s each
    assert covariance_budget(200.0, [run, other]) == pytest.approx(COVARIANCE_JACOBIANS * 5.0)
    # a quick fit gets the floor; derivative-free fits count their solves
    assert covariance_budget(0.1, [run]) == COVARIANCE_MIN_SECONDS
    free = SimpleNamespace(nfev=10, njev=0, ngev=0)
    assert covariance_budget(1000.0, [free]) == pytest.approx(COVARIANCE_JACOBIANS * 100.0)


def test_a_slow_jacobian_is_cut_off_at_its_budget():
    calls = {"jacobian": 0, "solves": 0}
    obj = SimpleNamespace(jacobian=lambda x: slow_jacobian(calls)(None, x))
    r, J, why = optimum_jacobian(obj, np.zeros(1), None, budget=0.2)
    assert r is None and J is None
    assert calls["jacobian"] == 1 and 0 < calls["solves"] < CAP
    assert "not computed within its time budget of 0.2 s" in why


def test_the_jacobian_the_optimizer_left_is_used_as_is():
    calls = {"jacobian": 0, "solves": 0}
    obj = SimpleNamespace(jacobian=lambda x: slow_jacobian(calls)(None, x))
    r0, J0 = np.ones(3), np.ones((3, 1))
    r, J, why = optimum_jacobian(obj, np.zeros(1), (r0, J0), budget=0.0)
    assert r is r0 and J is J0 and why == "" and calls["jacobian"] == 0


def test_the_users_max_time_is_the_limit_when_set():
    """Under a fit's max_time the deadline in force is kept (here already past), not the
    budget (here huge)."""
    calls = {"jacobian": 0, "solves": 0}
    obj = SimpleNamespace(jacobian=lambda x: slow_jacobian(calls)(None, x))
    with deadline(time.time() - 1.0):
        r, _, why = optimum_jacobian(obj, np.zeros(1), None, budget=1e9)
    assert r is None and calls["solves"] == 1
    assert "time limit (max_time) ran out" in why


def test_fit_returns_without_standard_errors_and_says_why(monkeypatch):
    """The whole path: L-BFGS-B leaves no Jacobian, the Jacobian at the optimum is slow,
    the fit still returns its best point with the loss, without standard errors, and the
    summary says why."""
    data = lotka_volterra_data(noise=0.05, seed=0)
    model = lotka_volterra_fit_model()
    reference = dl.fit(model, data, optimizer=dl.LBFGSB(), progress=False)
    assert np.all(np.isfinite(reference.params["stderr"]))
    calls = {"jacobian": 0, "solves": 0}
    monkeypatch.setattr(FitObjective, "jacobian", slow_jacobian(calls))
    # a budget already spent: the first solve of the Jacobian stops it
    monkeypatch.setattr(result_module, "covariance_budget", lambda elapsed, outcomes: -1.0)
    result = dl.fit(model, data, optimizer=dl.LBFGSB(), progress=False)
    assert calls["jacobian"] == 1 and calls["solves"] == 1
    assert result.loss == pytest.approx(reference.loss, rel=1e-9)
    np.testing.assert_allclose(result.params["value"], reference.params["value"], rtol=1e-9)
    assert result.params["stderr"].isna().all() and result.covariance is None
    text = result.summary()
    assert "standard errors n/a: the residual Jacobian at the optimum was not computed " \
           "within its time budget" in text
