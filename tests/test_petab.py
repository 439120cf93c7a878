"""dl.petab on small PEtab problems written here (an SBML file made with libsbml, tables made
with pandas), against likelihoods computed by hand from the analytic solution."""

import math

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("libsbml")
pytest.importorskip("petab")
pytest.importorskip("sbmlmath")

from petab_builders import Sbml, write_tsv, write_v1_yaml  # noqa: E402

import dynlearn.petab as dp  # noqa: E402
from dynlearn.errors import DynlearnError, PetabError  # noqa: E402
from dynlearn.testing import central_difference  # noqa: E402

K_TRUE, A0_C1, A0_C2, VOL = 0.7, 2.0, 3.5, 2.5


def _sbml(path, event=False):
    """A -> B with rate k*A*V (so d[A]/dt = -k [A] in concentration), compartment size V;
    B starts at b0 (an initial assignment). C is made at rate kp from t = tau on (a
    time-triggered piecewise) and degraded at rate kd."""
    model = (Sbml("conversion", size=VOL).species("A", 1.0).species("B", 0.0)
             .species("C", 0.0)
             .parameters({"k": 0.1, "b0": 0.25, "kp": 1.0, "kd": 1.0, "tau": 1.0})
             .initial_assignment("B", "b0")
             .reaction("conv", "k * A * cell", reactants=["A"], products=["B"])
             .reaction("make_c", "piecewise(kp, time > tau, 0) * cell", products=["C"])
             .reaction("drop_c", "kd * C * cell", reactants=["C"])
             # an assignment rule the observables use: the total
             .assignment_rule("total", "A + B"))
    if event:
        model.event("dose", "A == 0.5", {"A": "A + 1"})    # an equality: not supported
    return model.write(path)


def _write_problem(d, event=False):
    _sbml(d / "model.xml", event=event)
    write_tsv(d / "conditions.tsv", {"conditionId": ["c1", "c2"], "A": [A0_C1, "a0_c2"],
                                     "b0": [0.25, 0.5]})
    write_tsv(d / "observables.tsv", {
        "observableId": ["obs_b", "obs_tot", "obs_c"],
        "observableFormula": ["observableParameter1_obs_b * B", "total + offset", "C"],
        "observableTransformation": ["lin", "log", "lin"],
        "noiseFormula": ["noiseParameter1_obs_b", "0.1", "0.2"],
        "noiseDistribution": ["normal", "laplace", "normal"],
    })
    rows = []
    rng = np.random.default_rng(1)
    # replicates at t = 1 and measurements at t = 0; "c2>c1" is c1 after preequilibration
    # in c2 (A is reset by c1's table entry, B keeps its steady state 0.5 + a0_c2)
    for cond, times in (("c1", [0.0, 0.5, 1.0, 1.0, 3.0]), ("c2", [0.0, 1.0, 2.0, 2.0]),
                        ("c2>c1", [0.0, 1.5])):
        pre, _, cond = cond.rpartition(">")
        for t in times:
            rows.append(dict(observableId="obs_b", preequilibrationConditionId=pre,
                             simulationConditionId=cond,
                             measurement=float(rng.uniform(0.2, 3)), time=t,
                             observableParameters="scale" if cond == "c1" else 1.5,
                             noiseParameters="sigma_b"))
            rows.append(dict(observableId="obs_tot", preequilibrationConditionId=pre,
                             simulationConditionId=cond,
                             measurement=float(rng.uniform(1.5, 4)), time=t,
                             observableParameters="", noiseParameters=""))
            rows.append(dict(observableId="obs_c", preequilibrationConditionId=pre,
                             simulationConditionId=cond,
                             measurement=float(rng.uniform(0, 2)), time=t,
                             observableParameters="", noiseParameters=""))
    # steady-state data (time inf)
    for obs in ("obs_c", "obs_tot"):
        rows.append(dict(observableId=obs, preequilibrationConditionId="",
                         simulationConditionId="c2", measurement=float(rng.uniform(1, 3)),
                         time=math.inf, observableParameters="", noiseParameters=""))
    write_tsv(d / "measurements.tsv", rows)
    write_tsv(d / "parameters.tsv", {
        "parameterId": ["k", "a0_c2", "scale", "sigma_b", "offset", "kp", "tau", "kd"],
        "parameterScale": ["log10", "lin", "log", "lin", "lin", "log", "lin", "lin"],
        "lowerBound": [1e-3, 0.1, 0.1, 0.01, -1, 0.01, 0.1, 0.1],
        "upperBound": [1e3, 10, 10, 10, 1, 10, 5, 5],
        "nominalValue": [K_TRUE, A0_C2, 1.2, 0.3, 0.05, 0.9, 1.2, 0.8],
        "estimate": [1, 1, 1, 1, 0, 1, 1, 0],
    })
    return write_v1_yaml(d)


@pytest.fixture(scope="module")
def problem_path(tmp_path_factory):
    return _write_problem(tmp_path_factory.mktemp("petab"))


@pytest.fixture(scope="module")
def prob(problem_path):
    return dp.load(problem_path)


def _c(t, c0, kp, tau, kd=0.8):
    """C(t): decay from c0 until tau, then relaxation to kp / kd."""
    if t <= tau:
        return c0 * math.exp(-kd * t)
    return kp / kd + (c0 * math.exp(-kd * tau) - kp / kd) * math.exp(-kd * (t - tau))


def _by_hand(path, k, a0_c2, scale, sigma_b, kp, tau, offset=0.05):
    """The PEtab negative log-likelihood from the analytic solution."""
    meas = pd.read_csv(path.parent / "measurements.tsv", sep="\t")
    a0 = {"c1": A0_C1, "c2": a0_c2}
    b0 = {"c1": 0.25, "c2": 0.5}
    total, sims = 0.0, []
    for _, r in meas.iterrows():
        c, t, y = r["simulationConditionId"], r["time"], r["measurement"]
        A = a0[c] * math.exp(-k * t)
        B = b0[c] + a0[c] - A
        C = _c(t, 0.0, kp, tau) if t < math.inf else kp / 0.8
        if isinstance(r["preequilibrationConditionId"], str):
            # steady state of the preequilibration: all of A converted to B, C at kp / kd
            pre = r["preequilibrationConditionId"]
            B = b0[pre] + a0[pre] + a0[c] - A
            C = _c(t, kp / 0.8, kp, tau)
        if r["observableId"] == "obs_c":
            h = C
            total += 0.5 * math.log(2 * math.pi * 0.2 ** 2) + 0.5 * ((h - y) / 0.2) ** 2
        elif r["observableId"] == "obs_b":
            s = scale if c == "c1" else 1.5
            h = s * B
            total += 0.5 * math.log(2 * math.pi * sigma_b ** 2) + 0.5 * ((h - y) / sigma_b) ** 2
        else:
            h = A + B + offset
            total += math.log(2 * 0.1) + abs(math.log(h) - math.log(y)) / 0.1 + math.log(y)
        sims.append(h)
    return total, np.array(sims)


def test_parameters_and_scales(prob):
    assert prob.x_names == ["k", "a0_c2", "scale", "sigma_b", "kp", "tau"]
    assert prob.x_scales == ["log10", "lin", "log", "lin", "log", "lin"]
    np.testing.assert_allclose(prob.x_nominal, [math.log10(K_TRUE), A0_C2, math.log(1.2), 0.3,
                                                math.log(0.9), 1.2])
    np.testing.assert_allclose(prob.lower, [-3, 0.1, math.log(0.1), 0.01, math.log(0.01), 0.1])


def test_nllh_and_simulation_match_the_analytic_solution(prob, problem_path):
    for k, a0, scale, sig, kp, tau in ((K_TRUE, A0_C2, 1.2, 0.3, 0.9, 1.2),
                                       (0.2, 1.0, 0.8, 0.7, 1.5, 0.7)):
        x = np.array([math.log10(k), a0, math.log(scale), sig, math.log(kp), tau])
        want, sims = _by_hand(problem_path, k, a0, scale, sig, kp, tau)
        assert prob.nllh(x) == pytest.approx(want, rel=1e-7)
        np.testing.assert_allclose(prob.simulate(x), sims, rtol=1e-7)


def test_gradient_matches_finite_differences(prob):
    # tau = 1.7 switches C on between the measurements at 1.5 and 2
    x = np.array([math.log10(0.4), 2.8, math.log(0.9), 0.45, math.log(1.3), 1.7])
    f, g = prob.loss_and_grad(x)
    assert f == pytest.approx(prob.nllh(x), rel=1e-7)   # two solves at rtol 1e-9
    fd = central_difference(prob.nllh, x, step=1e-5, relative=False)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(g) > 1e-3)      # every parameter acts: the check can fail


def test_event_is_refused_by_name(tmp_path):
    path = _write_problem(tmp_path, event=True)
    with pytest.raises(PetabError, match="event 'dose'.*== or !="):
        dp.load(path)
    assert issubclass(PetabError, DynlearnError)


def test_missing_files_are_named_and_plots_are_not_needed(tmp_path):
    """A missing table or model file is a PetabError naming it (and the YAML key's meaning);
    a missing or malformed visualization file does not stop the load (it says how to plot,
    nothing of the likelihood: the collection's Smith_BMCSystBiol2013 lists one)."""
    path = _write_problem(tmp_path)

    def nllh_at_nominal():
        prob = dp.load(path)
        return prob.nllh(prob.x_nominal)
    want = nllh_at_nominal()
    text = path.read_text()
    path.write_text(text + "  visualization_files: [plots.tsv]\n")
    assert nllh_at_nominal() == want
    (tmp_path / "plots.tsv").write_text("not\ta\tvisualization table\n1\n")
    assert nllh_at_nominal() == want
    path.write_text(text)
    (tmp_path / "observables.tsv").rename(tmp_path / "obs.tsv")
    with pytest.raises(PetabError, match="observable file 'observables.tsv'.*does not exist"):
        dp.load(path)
    with pytest.raises(PetabError, match="nowhere.yaml' does not exist"):
        dp.load(tmp_path / "nowhere.yaml")


def test_wrong_length_x_is_an_error(prob):
    with pytest.raises(PetabError, match="shape"):
        prob.nllh(np.zeros(2))


@pytest.mark.slow
def test_multistart_fit_reaches_a_local_minimum(problem_path):
    # looser solver tolerances: a fit needs many evaluations
    prob = dp.load(problem_path, rtol=1e-7, atol=1e-10)
    fit = prob.fit(n_starts=2, seed=0, x0=prob.x_nominal)
    assert fit.x_names == prob.x_names
    assert [r["fun"] for r in fit.runs] == sorted(r["fun"] for r in fit.runs)
    assert all(r["fun"] <= prob.nllh(r["start"]) for r in fit.runs)
    assert fit.fun == pytest.approx(prob.nllh(fit.x), rel=1e-6)
    assert 1 <= fit.n_at_best() <= 2
    # a minimum, also where the Laplace observable puts it on a kink (where the gradient
    # jumps): no small step inside the bounds lowers the likelihood
    for e in np.eye(fit.x.size) * 1e-3:
        for step in (e, -e):
            y = np.clip(fit.x + step, prob.lower, prob.upper)
            assert prob.nllh(y) >= fit.fun - 1e-4   # L-BFGS-B stops at ~1e-7 relative


def test_reached_from_the_package():
    import dynlearn as dl

    assert dl.petab.load is dp.load
