"""Multi-start fits of PEtab problems (dynlearn.petab.fitting): the Fisher trust-region
method recovers known parameters, the starts table is ordered with honest statuses, noise
parameters and priors are fitted, and the Fisher system is the gradient's."""

import math
import time

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("libsbml")
pytest.importorskip("petab")
pytest.importorskip("sbmlmath")

from petab_builders import Sbml, write_tsv, write_v1_yaml  # noqa: E402

import dynlearn.petab as dp  # noqa: E402
from dynlearn.errors import OptionError, SolveError  # noqa: E402
from dynlearn.optimizers import Status  # noqa: E402
from dynlearn.petab.fitting import (  # noqa: E402
    FisherSettings,
    available_optimizers,
    choose_optimizer,
    draw_starts,
    fit_one_start,
    fit_petab,
)

TRUE = {"k": 0.8, "kd": 0.3, "scale": 2.0}
TIMES = [0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0]


def _sbml(path):
    """A -> B at rate k A, B degraded at rate kd B; A(0) = 1, B(0) = 0."""
    return (Sbml("chain").species("A", 1.0).species("B", 0.0)
            .parameters({"k": 0.5, "kd": 0.5})
            .reaction("conv", "k * A", reactants=["A"], products=["B"])
            .reaction("deg", "kd * B", reactants=["B"]).write(path))


def _write(d, measurements, noise_b="0.1", prior=None, dist_b="normal"):
    """The problem in folder ``d``: obs_a = A (normal, sigma 0.05), obs_b = scale * B
    (normal, log-transformed, sigma ``noise_b``: a number or ``sigma_b``, estimated)."""
    _sbml(d / "model.xml")
    write_tsv(d / "conditions.tsv", {"conditionId": ["c1"], "conditionName": ["c1"]})
    write_tsv(d / "observables.tsv", {
        "observableId": ["obs_a", "obs_b"],
        "observableFormula": ["A", "scale * B"],
        "observableTransformation": ["lin", "log"],
        "noiseFormula": ["0.05", noise_b],
        "noiseDistribution": ["normal", dist_b],
    })
    rows = [dict(observableId=o, simulationConditionId="c1", time=t, measurement=1.0)
            for t in TIMES for o in ("obs_a", "obs_b") if not (o == "obs_b" and t == 0.0)]
    meas = pd.DataFrame(rows)
    if measurements is not None:
        meas["measurement"] = measurements
    write_tsv(d / "measurements.tsv", meas)
    par = pd.DataFrame({
        "parameterId": ["k", "kd", "scale", "sigma_b"],
        "parameterScale": ["log10", "log10", "lin", "log10"],
        "lowerBound": [1e-3, 1e-3, 0.1, 1e-3],
        "upperBound": [1e2, 1e2, 10, 10],
        "nominalValue": [TRUE["k"], TRUE["kd"], TRUE["scale"], 0.1],
        "estimate": [1, 1, 1, int(noise_b == "sigma_b")],
    })
    if prior is not None:
        par["objectivePriorType"] = ["", "", "parameterScaleNormal", ""]
        par["objectivePriorParameters"] = ["", "", f"{prior[0]};{prior[1]}", ""]
    write_tsv(d / "parameters.tsv", par)
    return write_v1_yaml(d)


def _assert_minimum(fun, f, x, prob, h=1e-3):
    """No step of ``h`` along a coordinate (within the bounds) lowers ``fun`` below ``f``
    by more than the solver's noise."""
    for e in np.eye(x.size) * h:
        for step in (e, -e):
            y = np.clip(x + step, prob.lower, prob.upper)
            assert fun(y) >= f - 1e-7


def _x_true(prob):
    return prob.to_scale(np.array([TRUE[n] for n in prob.x_names]))


@pytest.fixture(scope="module")
def exact(tmp_path_factory):
    """The problem with noise-free data simulated at TRUE."""
    d = tmp_path_factory.mktemp("fits")
    prob = dp.load(_write(d, None), rtol=1e-10, atol=1e-12)
    sim = prob.simulate(_x_true(prob))
    return dp.load(_write(d, sim), rtol=1e-10, atol=1e-12)


def test_fisher_system_is_the_gradient_and_the_fisher_information(exact):
    x = _x_true(exact) + np.array([0.2, -0.3, 0.5])
    f, g, A, b = exact.fisher_system(x)
    f2, g2 = exact.loss_and_grad(x)
    assert f == f2
    np.testing.assert_allclose(g, g2, rtol=1e-12)
    np.testing.assert_allclose(A.T @ b, g, rtol=1e-10)
    # fixed normal noise: b are the weighted residuals, nllh = |b|^2 / 2 + const
    x2 = x + np.array([0.05, 0.0, -0.1])
    f_2, _, _, b2 = exact.fisher_system(x2)
    assert f_2 - f == pytest.approx(0.5 * (b2 @ b2 - b @ b), rel=1e-10)
    # A is the Jacobian of b (forward differences, on a direction)
    h = 1e-6
    v = np.array([0.3, -0.2, 0.4])
    _, _, _, bh = exact.fisher_system(x + h * v)
    np.testing.assert_allclose((bh - b) / h, A @ v, rtol=1e-4, atol=1e-4)


def test_multistart_fit_recovers_the_parameters(exact):
    fit = exact.fit(n_starts=3, seed=3)
    x_true = _x_true(exact)
    best = exact.nllh(x_true)      # noise-free data: the truth is the global minimum
    assert fit.fun == pytest.approx(exact.nllh(fit.x), abs=1e-9)
    assert fit.fun >= best - 1e-9
    assert fit.fun - best < 1e-6
    np.testing.assert_allclose(fit.x, x_true, atol=1e-4)
    assert fit.success
    # the starts table: best first, statuses honest
    funs = [r["fun"] for r in fit.runs]
    assert funs == sorted(funs)
    assert sorted(r["index"] for r in fit.runs) == [0, 1, 2]
    for r in fit.runs:
        assert r["optimizer"] == "fisher"
        assert (r["status"] == "converged") == Status(r["reason"]).converged
        assert r["status"] in ("converged", "not converged", "failed")
        assert r["fun"] <= exact.nllh(r["start"])
    assert fit.n_at_best(1e-6) >= 2
    # the same starts with L-BFGS-B end no lower
    lb = fit_petab(exact, starts=draw_starts(exact, 2, 3), optimizer="lbfgsb")
    assert lb.fun >= fit.fun - 1e-9


def test_out_of_iterations_and_time_are_not_convergence(exact):
    fit = exact.fit(n_starts=2, seed=1, maxiter=1)
    for r in fit.runs:
        assert r["status"] == "not converged" and r["reason"] == "max_iter"
        assert not r["success"]
    assert not fit.success
    fit = exact.fit(n_starts=3, seed=1, max_time=0.0)
    by_index = sorted(fit.runs, key=lambda r: r["index"])
    assert [r["status"] for r in by_index] == ["max_time", "not run", "not run"]
    # the first start evaluates its start point, no more: the point the fit reports
    assert by_index[0]["nit"] == 0 and by_index[0]["n_eval"] == 1
    assert by_index[0]["fun"] == pytest.approx(exact.nllh(by_index[0]["start"]), rel=1e-6)
    np.testing.assert_array_equal(fit.x, by_index[0]["start"])
    with pytest.raises(OptionError, match="optimizer"):
        exact.fit(n_starts=1, optimizer="newton")


def test_auto_takes_lbfgsb_for_laplace_noise(tmp_path, exact):
    assert choose_optimizer(exact) == "fisher"
    prob = dp.load(_write(tmp_path, None, dist_b="laplace"))
    assert choose_optimizer(prob) == "lbfgsb"
    fit = prob.fit(n_starts=1, maxiter=2)
    assert fit.runs[0]["optimizer"] == "lbfgsb"


def test_starts_through_a_map_executor_match_the_serial_fit(exact):
    serial = exact.fit(n_starts=2, seed=5, maxiter=3)
    mapped = exact.fit(n_starts=2, seed=5, maxiter=3, client=map)
    assert [r["index"] for r in mapped.runs] == [r["index"] for r in serial.runs]
    for a, b in zip(mapped.runs, serial.runs):
        np.testing.assert_array_equal(a["x"], b["x"])
        assert a["fun"] == b["fun"] and a["reason"] == b["reason"]


def test_estimated_noise_parameter_reaches_its_closed_form(tmp_path, exact):
    # noisy data for obs_b, its sigma estimated: at the optimum sigma_b is the RMS of the
    # log residuals (the closed form of the normal likelihood's minimum over sigma)
    sim = exact.simulate(_x_true(exact))
    rng = np.random.default_rng(0)
    is_b = exact.petab_problem.measurement_df["observableId"].to_numpy() == "obs_b"
    noisy = sim.copy()
    noisy[is_b] = sim[is_b] * np.exp(0.1 * rng.standard_normal(is_b.sum()))
    prob = dp.load(_write(tmp_path, noisy, noise_b="sigma_b"), rtol=1e-10, atol=1e-12)
    assert prob.x_names == ["k", "kd", "scale", "sigma_b"]
    fit = prob.fit(n_starts=3, seed=0)
    assert fit.success
    h = prob.simulate(fit.x)
    obs = prob.petab_problem.measurement_df["observableId"].to_numpy()
    rows = obs == "obs_b"
    rms = math.sqrt(np.mean((np.log(h[rows]) - np.log(noisy[rows])) ** 2))
    assert 10.0 ** fit.x[3] == pytest.approx(rms, rel=1e-5)
    _assert_minimum(lambda x: prob.nllh(x), fit.fun, fit.x, prob)


def test_priors_pull_the_estimate_and_are_reported(tmp_path, exact):
    sim = exact.simulate(_x_true(exact))
    prob = dp.load(_write(tmp_path, sim, prior=(1.0, 0.05)), rtol=1e-10, atol=1e-12)
    fit = prob.fit(n_starts=2, seed=0)
    assert fit.posterior and fit.success
    assert fit.fun == pytest.approx(prob.objective(fit.x)[0], rel=1e-10)
    assert fit.runs[0]["nllh"] == pytest.approx(prob.nllh(fit.x), abs=1e-8)
    # the prior (scale ~ N(1, 0.05)) pulls scale from 2 towards 1
    assert 1.0 < fit.x[2] < TRUE["scale"] - 0.05
    _assert_minimum(lambda x: prob.objective(x)[0], fit.fun, fit.x, prob)
    free = prob.fit(n_starts=2, seed=0, prior=False)
    assert not free.posterior
    assert free.x[2] == pytest.approx(TRUE["scale"], abs=1e-4)


class _Slowed:
    """``problem`` whose evaluations after the first wait ``pause`` seconds before they
    solve: a fit's deadline shorter than the pause passes between the optimizer's checks,
    so only the solve's own check can stop it."""

    def __init__(self, problem, pause: float):
        self.problem, self.pause, self.calls = problem, pause, 0
        self.x_names, self.lower, self.upper = problem.x_names, problem.lower, problem.upper
        self.priors = problem.priors

    def _wait(self):
        self.calls += 1
        if self.calls > 1:
            time.sleep(self.pause)

    def nllh(self, x):
        self._wait()
        return self.problem.nllh(x)

    def objective(self, x, prior=True):
        self._wait()
        return self.problem.objective(x, prior)

    def fisher_system(self, x):
        self._wait()
        return self.problem.fisher_system(x)


@pytest.mark.parametrize("optimizer", ["lbfgsb", "fisher"])
def test_a_solve_past_the_deadline_ends_the_start_at_its_best_point(exact, optimizer):
    x0 = _x_true(exact) + np.array([0.3, -0.2, 0.4])
    slowed = _Slowed(exact, pause=0.05)
    fit = fit_petab(slowed, starts=[x0, x0 + 0.1], optimizer=optimizer, max_time=0.01)
    first, second = sorted(fit.runs, key=lambda r: r["index"])
    assert first["status"] == "max_time" and first["reason"] == "max_time"
    assert second["status"] == "not run"
    # the best point evaluated, the start (the only one whose solve finished), is kept
    np.testing.assert_array_equal(fit.x, x0)
    assert fit.fun == pytest.approx(exact.nllh(x0), rel=1e-6)
    if optimizer == "lbfgsb":
        # no check of L-BFGS-B's own before its first iteration ends: the solve stopped it
        assert "during a solve" in first["message"]
        assert first["n_eval"] == 2 and first["nit"] == 0


def test_a_budget_far_shorter_than_one_solve_stops_that_solve(tmp_path):
    """RK23 at rtol 1e-13 takes ~0.7 s a solve here: a start given 0.2 s stops inside
    its first solve and returns (the status; no timing is asserted)."""
    prob = dp.load(_write(tmp_path, None), method="RK23", rtol=1e-13, atol=1e-14)
    x0 = _x_true(prob)
    run = fit_one_start((1, x0), prob, "fisher", 100, FisherSettings(), posterior=False,
                        max_time=0.2, deadline=time.time() + 0.2)
    assert run["status"] == "max_time" and run["reason"] == "max_time"
    assert "during a solve" in run["message"]
    assert not run["success"] and run["fun"] >= prob.nllh(x0) - 1e-6


class _NoFisher:
    """A problem with a likelihood and its gradient but no Fisher information (as a PEtab
    SciML problem)."""

    def __init__(self, problem):
        self.x_names, self.lower, self.upper = problem.x_names, problem.lower, problem.upper
        self.priors, self.nllh, self.objective = problem.priors, problem.nllh, problem.objective


def test_the_fisher_method_needs_the_fisher_information(exact):
    assert available_optimizers(exact) == ("fisher", "lbfgsb")
    plain = _NoFisher(exact)
    assert available_optimizers(plain) == ("lbfgsb",)
    assert choose_optimizer(plain) == "lbfgsb"
    with pytest.raises(OptionError, match="needs the problem's Fisher information"):
        fit_petab(plain, starts=[_x_true(exact)], optimizer="fisher")
    fit = fit_petab(plain, starts=[_x_true(exact) + 0.1], maxiter=2)
    assert fit.runs[0]["optimizer"] == "lbfgsb"


class _Plateau:
    """Least squares in ``x = (a, q)``: ``r = (a - 2, 1e3 (10**q - 1e-3))`` within
    ``a in [-5, 5]``, ``q in [-20, 8]``. Where ``10**q << 1e-3`` the data barely inform
    ``q`` (its curvature ~0), but its Gauss-Newton step is huge and carries it to the
    upper bound, where the objective is enormous: the case of the Fiedler starts that
    stopped "converged" at a large gradient (issue #15). No ODE: the stopping rules alone."""

    x_names = ["a", "q"]
    lower, upper = np.array([-5.0, -20.0]), np.array([5.0, 8.0])
    priors = None

    def _rj(self, x):
        a, q = x
        r = np.array([a - 2.0, 1e3 * (10.0 ** q - 1e-3)])
        return r, np.array([[1.0, 0.0], [0.0, 1e3 * np.log(10.0) * 10.0 ** q]])

    def nllh(self, x):
        r, _ = self._rj(x)
        return 0.5 * float(r @ r)

    def objective(self, x, prior=True):
        r, J = self._rj(x)
        return 0.5 * float(r @ r), J.T @ r

    def fisher_system(self, x):
        r, J = self._rj(x)
        return 0.5 * float(r @ r), J.T @ r, J, None


#: the Fisher method before the trust radius (its column scales and Nielsen's damping)
DAMPING = dict(trust_region="damping", secant_after=0)


def test_an_uninformed_parameter_does_not_stop_the_others():
    x0 = np.array([-4.0, -15.0])     # a far from its optimum (gradient 6), q on the plateau
    # the damping rule's column scales' floor alone (no trust region on the ranges, which
    # would walk q off the plateau: the next test)
    run = fit_one_start((1, x0), _Plateau(), "fisher", 500,
                        FisherSettings(step_bound=None, **DAMPING), posterior=False)
    assert run["status"] == "converged"
    assert run["x"][0] == pytest.approx(2.0, abs=1e-6)
    # q stays on its plateau (gradient ~1e-12 there): what is left is its residual's 0.5
    assert run["fun"] == pytest.approx(0.5, rel=1e-6)


def test_the_trust_region_walks_off_the_plateau():
    # with the default trust region the steps along q are bounded, the model predicts
    # them well once q's residual grows, and q reaches its optimum -3 (objective 0); the
    # trust radius alone (no bound on the ranges) does the same, the damping rule's column
    # scales alone do not (the test above)
    x0 = np.array([-4.0, -15.0])
    for settings in (FisherSettings(), FisherSettings(**DAMPING),
                     FisherSettings(step_bound=None)):
        run = fit_one_start((1, x0), _Plateau(), "fisher", 500, settings, posterior=False)
        assert run["status"] == "converged"
        assert run["x"] == pytest.approx([2.0, -3.0], abs=1e-5)
        assert run["fun"] < 1e-9


def test_steps_shortened_by_the_damping_are_not_convergence():
    # without the floor on the column scales (the method before issue #15) q's rejected
    # steps grow the damping until a's steps lower the objective by less than ftol: the
    # model still promises a decrease of ~18, so the start must not be called converged
    x0 = np.array([-4.0, -15.0])
    run = fit_one_start((1, x0), _Plateau(), "fisher", 500,
                        FisherSettings(scale_floor=0.0, step_bound=None, **DAMPING),
                        posterior=False)
    assert run["fun"] > 10.0
    assert run["status"] == "not converged" and run["reason"] == Status.STALLED.value
    assert not run["success"]
    assert "still promises a decrease" in run["message"]


class _Recording(_Plateau):
    """:class:`_Plateau` counting its solves: every point asked for, and which of them
    came with sensitivities (``fisher_system``)."""

    def __init__(self):
        self.points, self.sens = [], []

    def nllh(self, x):
        self.points.append(np.array(x, dtype=float))
        self.sens.append(False)
        return super().nllh(x)

    def fisher_system(self, x):
        self.points.append(np.array(x, dtype=float))
        self.sens.append(True)
        return super().fisher_system(x)


def test_one_sensitivity_solve_per_accepted_step():
    prob = _Recording()
    run = fit_one_start((1, np.array([-4.0, -15.0])), prob, "fisher", 500, FisherSettings(),
                        posterior=False)
    assert run["reason"] == Status.CONVERGED_GTOL.value
    assert run["n_sens"] == sum(prob.sens) and run["n_eval"] == len(prob.points)
    # the start, then one per accepted step (the last iteration only tests convergence),
    # and at most one polishing step at the end; every trial point, accepted or not,
    # first without sensitivities
    assert run["n_sens"] - run["nit"] in (0, 1)
    assert run["n_eval"] - run["n_sens"] >= run["nit"] - 1
    assert not any(a and b for a, b in zip(prob.sens[1:-1], prob.sens[2:-1]))


def test_the_first_step_stays_in_the_trust_region():
    # a's Gauss-Newton step from -4 is 6 (to its optimum 2) of a range of 10: the first
    # trial may move it by 0.1 of the range at most; the region then grows with the
    # accepted steps the model predicted well, so the start still converges
    x0 = np.array([-4.0, -15.0])
    for bound in (0.1, 0.02):
        prob = _Recording()
        run = fit_one_start((1, x0), prob, "fisher", 500, FisherSettings(step_bound=bound),
                            posterior=False)
        width = prob.upper - prob.lower
        first = np.abs(prob.points[1] - x0) / width
        assert first.max() <= bound * (1 + 1e-12)
        assert first.max() >= bound / 4     # the damping raised just enough (by 4s)
        assert run["status"] == "converged"
        assert run["x"][0] == pytest.approx(2.0, abs=1e-6)
        moves = [np.max(np.abs(b - a) / width) for a, b in zip(prob.points, prob.points[1:])]
        assert max(moves) > 2 * bound        # grown beyond the first region
    prob = _Recording()
    fit_one_start((1, x0), prob, "fisher", 500, FisherSettings(step_bound=None),
                  posterior=False)
    assert np.abs(prob.points[1] - x0)[0] == pytest.approx(6.0, rel=1e-2)   # no bound


class _NoPlainSolve(_Recording):
    """:class:`_Recording` whose solves without sensitivities always fail (as LSODA's can
    near a point where the solve with sensitivities, under its own error control, works)."""

    def nllh(self, x):
        super().nllh(x)
        raise SolveError("repeated convergence failures")


def test_a_trial_whose_plain_solve_fails_is_tried_with_sensitivities():
    prob = _NoPlainSolve()
    run = fit_one_start((1, np.array([-4.0, -15.0])), prob, "fisher", 500,
                        FisherSettings(step_bound=None), posterior=False)
    assert run["status"] == "converged"
    assert run["x"][0] == pytest.approx(2.0, abs=1e-6)
    # every trial failed without sensitivities, then was solved with them at that point
    plain = [i for i, s in enumerate(prob.sens) if not s]
    assert plain
    for i in plain:
        assert prob.sens[i + 1]
        assert np.array_equal(prob.points[i + 1], prob.points[i])


def test_a_rejected_step_shrinks_the_trust_radius_to_a_quarter():
    # the radius rule: after a rejected trial the next trial from the same point is at
    # most a quarter of its length (parameters' own scales), whatever the damping it needs
    prob = _Recording()
    run = fit_one_start((1, np.array([-4.0, -15.0])), prob, "fisher", 500,
                        FisherSettings(step_bound=None), posterior=False)
    assert run["status"] == "converged"
    pairs = 0
    base = prob.points[0]
    for i in range(1, len(prob.points) - 1):
        if prob.sens[i]:
            base = prob.points[i]
            continue
        if not prob.sens[i + 1]:        # trial i rejected, trial i + 1 from the same point
            first = np.linalg.norm(prob.points[i] - base)
            second = np.linalg.norm(prob.points[i + 1] - base)
            assert second <= 0.25 * first * (1 + 1e-3)
            pairs += 1
    assert pairs >= 1


def test_both_trust_regions_follow_a_curved_valley():
    # Rosenbrock's function as least squares, r = (10 (y - x^2), 1 - x): the valley the
    # Gauss-Newton model follows only in short steps; both rules reach (1, 1)
    class Valley(_Plateau):
        x_names = ["x", "y"]
        lower, upper = np.array([-5.0, -5.0]), np.array([5.0, 5.0])

        def _rj(self, x):
            a, b = x
            return (np.array([10.0 * (b - a * a), 1.0 - a]),
                    np.array([[-20.0 * a, 10.0], [-1.0, 0.0]]))

    for settings in (FisherSettings(), FisherSettings(**DAMPING)):
        run = fit_one_start((1, np.array([-1.2, 1.0])), Valley(), "fisher", 500, settings,
                            posterior=False)
        assert run["status"] == "converged"
        assert run["x"] == pytest.approx([1.0, 1.0], abs=1e-6)


@pytest.mark.parametrize("bad", [dict(trust_region="dogleg"), dict(secant_after=-1),
                                 dict(secant_after=2.5)])
def test_fisher_settings_are_checked(bad):
    with pytest.raises(OptionError, match="FisherSettings"):
        FisherSettings(**bad)


@pytest.mark.slow
def test_starts_in_a_process_pool_match_the_serial_fit(exact):
    """The problem travels to other processes with the standard pickle (a process pool's
    map: no Dask, no cloudpickle); its compiled functions are compiled again there."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    serial = exact.fit(n_starts=2, seed=5, maxiter=20)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        pooled = exact.fit(n_starts=2, seed=5, maxiter=20, client=pool.map)
    for a, b in zip(pooled.runs, serial.runs):
        assert a["index"] == b["index"] and a["reason"] == b["reason"]
        # compiled anew from the unpickled equations: equal to the solver's tolerance
        np.testing.assert_allclose(a["x"], b["x"], rtol=1e-6, atol=1e-8)
        assert a["fun"] == pytest.approx(b["fun"], rel=1e-9)
