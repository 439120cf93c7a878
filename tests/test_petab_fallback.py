"""A failed LSODA solve of a PEtab problem is tried again with the fallback method (BDF),
for plain solves and solves with sensitivities; without a fallback the failure is raised."""

import numpy as np
import pytest

pytest.importorskip("libsbml")
pytest.importorskip("petab")
pytest.importorskip("sbmlmath")

from petab_builders import Sbml, write_v1_problem  # noqa: E402

import dynlearn.petab as dp  # noqa: E402
import dynlearn.petab.problem as problem_module  # noqa: E402
from dynlearn.errors import SolveError  # noqa: E402
from dynlearn.sensitivity.forward import ForwardSensitivity  # noqa: E402
from dynlearn.testing import central_difference  # noqa: E402


@pytest.fixture
def yaml_path(tmp_path):
    sbml = (Sbml("decay").species("x", 2.0).parameter("k", 0.7)
            .reaction("r", "k * x", reactants=["x"]))
    times = [0.5, 1.0, 2.0, 4.0]
    return write_v1_problem(
        tmp_path, sbml,
        conditions={"conditionId": ["c"]},
        observables={"observableId": ["o"], "observableFormula": ["x"],
                     "noiseFormula": ["0.1"]},
        measurements={"observableId": ["o"] * 4, "simulationConditionId": ["c"] * 4,
                      "time": times, "measurement": list(2.0 * np.exp(-0.7 * np.array(times))
                                                         + [0.05, -0.03, 0.02, 0.01])},
        parameters={"parameterId": ["k"], "parameterScale": ["log10"], "lowerBound": [1e-3],
                    "upperBound": [1e3], "nominalValue": [0.5], "estimate": [1]})


@pytest.fixture
def lsoda_fails(monkeypatch):
    """Every LSODA solve of the PEtab module fails, as at Fiedler_BMCSystBiol2016's random
    starts ("repeated convergence failures"); the other methods run as usual."""
    calls = {"LSODA": 0, "other": 0}
    plain, directional = problem_module.solve_observed, ForwardSensitivity.directional

    def failing_plain(vf, t0, times, y0, method, *args, **kwargs):
        if method == "LSODA":
            calls["LSODA"] += 1
            raise SolveError("LSODA: repeated convergence failures (injected)")
        calls["other"] += 1
        return plain(vf, t0, times, y0, method, *args, **kwargs)

    def failing_directional(self, prob, *args, **kwargs):
        if prob.method == "LSODA":
            calls["LSODA"] += 1
            raise SolveError("LSODA: repeated convergence failures (injected)")
        calls["other"] += 1
        return directional(self, prob, *args, **kwargs)

    monkeypatch.setattr(problem_module, "solve_observed", failing_plain)
    monkeypatch.setattr(ForwardSensitivity, "directional", failing_directional)
    return calls


def test_failed_lsoda_solves_are_retried_with_bdf(yaml_path, lsoda_fails):
    x = np.array([np.log10(0.6)])
    reference = dp.load(yaml_path, method="BDF", rtol=1e-10, atol=1e-12)
    f_ref, g_ref = reference.loss_and_grad(x)
    f_plain = reference.nllh(x)
    problem = dp.load(yaml_path, rtol=1e-10, atol=1e-12)          # LSODA, fallback BDF
    assert problem.method == "LSODA" and problem.fallback_method == "BDF"
    f = problem.nllh(x)
    f2, g = problem.loss_and_grad(x)
    assert problem.solver_fallbacks == {"plain": 1, "sensitivities": 1}
    # the same solves as BDF's own (the plain solve and the one with sensitivities take
    # different steps, hence two references)
    assert f == pytest.approx(f_plain, rel=1e-12) and f2 == pytest.approx(f_ref, rel=1e-12)
    np.testing.assert_allclose(g, g_ref, rtol=1e-9)
    # and the gradient is the likelihood's (central differences through the fallback)
    fd = central_difference(problem.nllh, x, 1e-5)
    np.testing.assert_allclose(g, fd, rtol=1e-5)


def test_without_a_fallback_the_failure_is_raised(yaml_path, lsoda_fails):
    problem = dp.load(yaml_path, fallback_method=None)
    with pytest.raises(SolveError, match="repeated convergence failures"):
        problem.nllh(problem.x_nominal)
    assert lsoda_fails["other"] == 0 and not problem.solver_fallbacks


def test_a_failed_retry_is_counted_and_raised(yaml_path, monkeypatch, lsoda_fails):
    def always_fails(self, prob, *args, **kwargs):
        raise SolveError(f"{prob.method}: step size too small (injected)")

    problem = dp.load(yaml_path)
    monkeypatch.setattr(ForwardSensitivity, "directional", always_fails)
    with pytest.raises(SolveError, match="LSODA: step size too small.*tried again with "
                       "BDF, which failed too: BDF: step size too small"):
        problem.loss_and_grad(problem.x_nominal)
    assert problem.solver_fallbacks == {"sensitivities failed": 1}


def test_a_fit_falls_back_at_its_first_point_only(yaml_path, lsoda_fails):
    """In a fit, only a start's first point is retried with BDF (so that the start has a
    point); later points LSODA cannot solve are rejected trials, not slow retries."""
    problem = dp.load(yaml_path)
    fit = problem.fit(starts=[[np.log10(0.6)]], maxiter=20)
    assert problem.solver_fallbacks == {"sensitivities": 1}
    assert problem.fallback_method == "BDF"          # restored after the fit
    run = fit.runs[0]
    # the start was evaluated (by BDF) and then ended on the trials it could not solve
    assert np.isfinite(run["fun"]) and run["status"] != "failed"
    assert run["n_eval"] > 1


def test_an_evaluation_runs_on_one_blas_thread(yaml_path, monkeypatch):
    """PEtab solves run with one BLAS thread (dynlearn.fitting.threads): OpenBLAS's threads
    on LSODA's small LUs lose much on shared cores."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not any(i["user_api"] == "blas" for i in threadpoolctl.threadpool_info()):
        pytest.skip("no BLAS library that threadpoolctl can control")
    seen = []
    plain = problem_module.solve_observed

    def recording(*args, **kwargs):
        seen.append(max(i["num_threads"] for i in threadpoolctl.threadpool_info()
                        if i["user_api"] == "blas"))
        return plain(*args, **kwargs)

    monkeypatch.setattr(problem_module, "solve_observed", recording)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        problem = dp.load(yaml_path)
        problem.nllh(problem.x_nominal)
        after = max(i["num_threads"] for i in threadpoolctl.threadpool_info()
                    if i["user_api"] == "blas")
    assert seen and set(seen) == {1}
    assert after == 2          # restored after the evaluation


def test_a_solve_that_used_up_its_budget_is_not_retried(yaml_path, monkeypatch):
    """LSODA stopped by its evaluation budget met a solution that blows up or oscillates
    fast, not a Newton failure: BDF is not given another budget. A real solve here, with
    the budget made smaller than the decay needs."""
    import dynlearn.solve as solve_module
    monkeypatch.setattr(solve_module, "MAX_NFEV", 5)
    problem = dp.load(yaml_path)
    for evaluate in (problem.nllh, lambda x: problem.loss_and_grad(x)):
        with pytest.raises(SolveError, match=r"stopped after 5 right-hand-side evaluations "
                           r"\(max_nfev\)") as info:
            evaluate(problem.x_nominal)
        assert "tried again" not in str(info.value)
        assert info.value.solver_message == solve_module.BUDGET_EXHAUSTED
    assert not problem.solver_fallbacks
