"""Forward sensitivities that crawl give way to the adjoint (``PetabProblem(crawl_factor=)``):
when the sensitivities of a simulation take more than ``crawl_factor`` times its states'
right-hand-side evaluations, the gradient is taken by the adjoint, said by a warning and
``problem.gradient_switch``; the Fisher system keeps forward sensitivities, or, asked to
watch them (as the Fisher method of a fit does), gives up and the fit goes on with
BFGS updates of the adjoint gradient. A fit's starts evaluate copies of the problem
(``PetabProblem.copy``): a start's switch is its own, and the problem is left as it was.

A real crawl needs a large model (Smith_BMCSystBiol2013: 18,870 evaluations to t = 10.8
of 15 against 1,853 for the states); here the budget is made small enough that an
ordinary solve exceeds it."""

import warnings

import numpy as np
import pytest

pytest.importorskip("libsbml")
pytest.importorskip("petab")
pytest.importorskip("sbmlmath")

from test_petab_sensitivity_scale import chain_problem  # noqa: E402

import dynlearn.petab as dp  # noqa: E402
import dynlearn.petab.problem as problem_module  # noqa: E402
from dynlearn.errors import PetabError  # noqa: E402
from dynlearn.testing import central_difference  # noqa: E402


@pytest.fixture
def no_floor(monkeypatch):
    monkeypatch.setattr(problem_module, "CRAWL_FLOOR", 0)
    monkeypatch.setattr(problem_module, "CRAWL_WORK", 0.0)


def load(tmp_path, **options):
    return dp.load(chain_problem(tmp_path / "chain", 9, 1.0), rtol=1e-9, atol=1e-11,
                   **options)


def test_crawling_forward_sensitivities_switch_to_the_adjoint(tmp_path, no_floor):
    problem = load(tmp_path, crawl_factor=1.000001)
    reference = dp.load(tmp_path / "chain" / "problem.yaml", rtol=1e-9, atol=1e-11,
                        crawl_factor=None)
    x = np.asarray(problem.x_nominal) + 0.05
    f_ref, g_ref = reference.loss_and_grad(x)
    assert reference.gradient_switch is None
    with pytest.warns(problem_module.GradientSwitchWarning, match="condition 'c'"):
        f, g = problem.loss_and_grad(x)       # no evaluation before: the yardstick is taken
    assert "by the adjoint" in problem.gradient_switch
    assert f == pytest.approx(f_ref, rel=1e-10)
    np.testing.assert_allclose(g, g_ref, rtol=1e-5)
    fd = central_difference(problem.nllh, x, 1e-5)
    np.testing.assert_allclose(g, fd, rtol=1e-4, atol=1e-6 * np.abs(fd).max())
    # later gradients go to the adjoint at once, without another warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", problem_module.GradientSwitchWarning)
        _, g2 = problem.loss_and_grad(x)
        np.testing.assert_array_equal(g2, g)
        # the Fisher system needs dy/dP: forward sensitivities, no budget
        _, g3, A, _ = problem.fisher_system(x)
    np.testing.assert_allclose(g3, g_ref, rtol=1e-9)


def test_ordinary_solves_stay_forward(tmp_path):
    # the default factor and floor: forward sensitivities of this chain take a few times
    # the states' evaluations, far from the budget
    problem = load(tmp_path)
    assert problem.crawl_factor == problem_module.CRAWL_FACTOR
    x = np.asarray(problem.x_nominal)
    with warnings.catch_warnings():
        warnings.simplefilter("error", problem_module.GradientSwitchWarning)
        problem.nllh(x)
        problem.loss_and_grad(x)
    assert problem.gradient_switch is None


def test_no_switch_without_a_factor_or_with_the_adjoint_asked(tmp_path, no_floor):
    for options in (dict(crawl_factor=None), dict(crawl_factor=1.000001,
                                                 gradient="adjoint")):
        problem = dp.load(chain_problem(tmp_path / str(len(options) + len(str(options))),
                                        9, 1.0), rtol=1e-9, atol=1e-11, **options)
        with warnings.catch_warnings():
            warnings.simplefilter("error", problem_module.GradientSwitchWarning)
            problem.loss_and_grad(np.asarray(problem.x_nominal))
        assert problem.gradient_switch is None


@pytest.mark.parametrize("bad", [1.0, 0.5, -2.0])
def test_a_crawl_factor_must_exceed_one(tmp_path, bad):
    with pytest.raises(PetabError, match="crawl_factor"):
        load(tmp_path, crawl_factor=bad)


@pytest.fixture
def lsoda_sensitivities_fail(monkeypatch):
    """Every LSODA sensitivity solve fails (as at Fiedler's random starts); BDF's work."""
    from dynlearn.errors import SolveError
    from dynlearn.sensitivity.forward import ForwardSensitivity

    directional = ForwardSensitivity.directional

    def lsoda_fails(self, prob, *args, **kwargs):
        if prob.method == "LSODA":
            raise SolveError("LSODA: repeated convergence failures (injected)")
        return directional(self, prob, *args, **kwargs)

    monkeypatch.setattr(ForwardSensitivity, "directional", lsoda_fails)


def test_a_crawling_bdf_retry_switches_too(tmp_path, no_floor, lsoda_sensitivities_fail):
    """LSODA's sensitivity solve fails (as at Fiedler's random starts) and the BDF retry runs
    out of the crawl budget: the adjoint takes over, as for LSODA itself."""
    problem = load(tmp_path, crawl_factor=1.000001)
    x = np.asarray(problem.x_nominal)
    with pytest.warns(dp.GradientSwitchWarning):
        _, g = problem.loss_and_grad(x)
    assert problem.solver_fallbacks == {"sensitivities failed": 1}
    fd = central_difference(problem.nllh, x, 1e-5)
    np.testing.assert_allclose(g, fd, rtol=1e-4, atol=1e-6 * np.abs(fd).max())


def test_a_watched_fisher_system_gives_up_and_the_gradient_switches(tmp_path, no_floor):
    problem = load(tmp_path, crawl_factor=1.000001)
    x = np.asarray(problem.x_nominal) + 0.05
    _, g_ref, A_ref, _ = problem.fisher_system(x)      # unwatched: to the end, no switch
    assert problem.gradient_switch is None
    with pytest.warns(dp.GradientSwitchWarning):
        with pytest.raises(dp.SensitivityCrawlError, match="no Fisher system.*condition 'c'"):
            problem.fisher_system(x, watch=True)
    assert "by the adjoint" in problem.gradient_switch
    _, g = problem.loss_and_grad(x)                     # the adjoint's, at once
    np.testing.assert_allclose(g, g_ref, rtol=1e-5)
    with pytest.raises(dp.SensitivityCrawlError):      # profiled: the same watch
        problem.profiled_fisher_system(x, watch=True)
    _, _, A, _ = problem.fisher_system(x)               # still there, unwatched
    np.testing.assert_allclose(A, A_ref, rtol=1e-9, atol=1e-12 * np.abs(A_ref).max())


def test_a_fisher_fit_whose_sensitivities_crawl_goes_on_with_bfgs(tmp_path, no_floor):
    """Each start's Fisher system crawls at its first point: the start goes on with the
    trust-region method on BFGS updates of the adjoint gradient, and reaches the optimum
    the Fisher method finds where nothing crawls (L-BFGS-B stops on a plateau 210 above it
    from the first of these starts, 3.6 above it from the second)."""
    from dynlearn.petab.fitting import FISHER_THEN_SECANT

    reference = load(tmp_path, crawl_factor=None)
    x0 = np.asarray(reference.x_nominal)
    starts = np.vstack([x0 + 0.3, x0 - 0.3])
    ref = reference.fit(starts=starts)
    assert {r["optimizer"] for r in ref.runs} == {"fisher"}
    assert all(r["success"] for r in ref.runs)
    problem = dp.load(tmp_path / "chain" / "problem.yaml", rtol=1e-9, atol=1e-11,
                      crawl_factor=1.000001)
    with pytest.warns(dp.GradientSwitchWarning):
        fit = problem.fit(starts=starts)
    for r in fit.runs:
        assert r["optimizer"] == FISHER_THEN_SECANT
        assert "after 0 iterations on the Fisher information, on BFGS updates of the " \
            "adjoint gradient: no Fisher system" in r["message"]
        assert r["success"], r["message"]
        assert r["fun"] == pytest.approx(ref.fun, abs=1e-4)
        np.testing.assert_allclose(r["x"], ref.x, atol=1e-3)


def test_a_crawl_at_a_trial_point_rejects_the_trial(tmp_path):
    """The Fisher system crawls at the first trial point evaluated with it: that trial is
    rejected as one that cannot be solved, and the start goes on with the Fisher
    information to the optimum."""
    from dynlearn.petab.fitting import FisherSettings, _Budget, _fisher_run, _Objective

    problem = load(tmp_path, crawl_factor=None)
    x0 = np.asarray(problem.x_nominal) + 0.3
    lo, hi = np.asarray(problem.lower), np.asarray(problem.upper)
    settings = FisherSettings()
    reference = _fisher_run(_Objective(problem, posterior=False), x0, lo, hi, 200, settings,
                            _Budget(None))
    obj = _Objective(problem, posterior=False)
    system = obj.system
    crawled = []

    def first_trial_crawls(x, trial=False):
        if trial and not crawled:
            crawled.append(np.array(x))
            fisher_system = problem.fisher_system

            def crawl(x, watch=False):
                assert watch
                raise dp.SensitivityCrawlError("no Fisher system: injected")
            problem.fisher_system = crawl
            try:
                return system(x, trial=True)
            finally:
                problem.fisher_system = fisher_system
        return system(x, trial=trial)

    obj.system = first_trial_crawls
    x, f, status, message, _ = _fisher_run(obj, x0, lo, hi, 200, settings, _Budget(None))
    assert crawled, "no trial point was evaluated with its Fisher system"
    assert status.converged and not obj.secant, message
    assert f == pytest.approx(reference[1], abs=1e-4)


def test_a_copy_evaluates_on_its_own_and_counts_with_the_original(tmp_path, no_floor,
                                                                   request):
    problem = load(tmp_path, crawl_factor=1.000001)
    x = np.asarray(problem.x_nominal) + 0.05
    twin = problem.copy()
    with pytest.warns(dp.GradientSwitchWarning):
        twin.loss_and_grad(x)
    assert "by the adjoint" in twin.gradient_switch
    assert problem.gradient_switch is None and problem._state_nfev is None
    # the compiled model is shared, the counters too
    assert twin.model is problem.model and twin.solver_fallbacks is problem.solver_fallbacks
    request.getfixturevalue("lsoda_sensitivities_fail")     # from here on
    other = problem.copy()
    other.crawl_factor = None
    other.loss_and_grad(x)
    assert problem.solver_fallbacks == {"sensitivities": 1}


def test_a_fit_leaves_the_problem_as_it_was(tmp_path, no_floor):
    """Every start switches to the adjoint on its own (the L-BFGS-B fit, where the switch
    lasts): a start's crawl does not decide for the starts after it, and the caller's
    problem keeps its settings (before, the first start's switch was left on the problem
    and the second start never warned)."""
    problem = load(tmp_path, crawl_factor=1.000001)
    x0 = np.asarray(problem.x_nominal)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fit = problem.fit(starts=np.vstack([x0 + 0.3, x0 - 0.3]), optimizer="lbfgsb",
                          maxiter=30)
    switches = [w for w in seen if issubclass(w.category, dp.GradientSwitchWarning)]
    assert len(switches) == 2
    assert problem.gradient_switch is None and problem.fallback_method == "BDF"
    assert all(np.isfinite(r["fun"]) for r in fit.runs)


def test_starts_on_threads_give_the_serial_result(tmp_path, no_floor):
    """Two starts at once on threads of this process, each crawling into the BFGS fallback
    of the Fisher method: the runs of a serial fit, iteration for iteration."""
    from concurrent.futures import ThreadPoolExecutor

    problem = load(tmp_path, crawl_factor=1.000001)
    x0 = np.asarray(problem.x_nominal)
    starts = np.vstack([x0 + 0.3, x0 - 0.3, x0 + 0.1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dp.GradientSwitchWarning)
        serial = problem.fit(starts=starts)
        with ThreadPoolExecutor(2) as pool:
            threaded = problem.fit(starts=starts, client=pool.map)
    for a, b in zip(serial.runs, threaded.runs):
        assert (a["index"], a["nit"], a["n_eval"], a["optimizer"]) == \
            (b["index"], b["nit"], b["n_eval"], b["optimizer"])
        np.testing.assert_array_equal(a["x"], b["x"])
    assert problem.gradient_switch is None
