"""Multi-start fits of PEtab problems (dynlearn.petab.fitting): the Fisher trust-region
method recovers known parameters, the starts table is ordered with honest statuses, noise
parameters and priors are fitted, and the Fisher system is the gradient's."""

import math

import numpy as np
import pandas as pd
import pytest

libsbml = pytest.importorskip("libsbml")
pytest.importorskip("petab")
pytest.importorskip("sbmlmath")

import dynlearn.petab as dp  # noqa: E402
from dynlearn.errors import OptionError  # noqa: E402
from dynlearn.optimizers import Status  # noqa: E402
from dynlearn.petab.fitting import choose_optimizer, draw_starts, fit_petab  # noqa: E402

TRUE = {"k": 0.8, "kd": 0.3, "scale": 2.0}
TIMES = [0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0]


def _sbml(path):
    """A -> B at rate k A, B degraded at rate kd B; A(0) = 1, B(0) = 0."""
    doc = libsbml.SBMLDocument(3, 2)
    m = doc.createModel()
    m.setId("chain")
    c = m.createCompartment()
    c.setId("cell")
    c.setSize(1.0)
    c.setConstant(True)
    for sid, x0 in (("A", 1.0), ("B", 0.0)):
        s = m.createSpecies()
        s.setId(sid)
        s.setCompartment("cell")
        s.setInitialConcentration(x0)
        s.setHasOnlySubstanceUnits(False)
        s.setBoundaryCondition(False)
        s.setConstant(False)
    for pid in ("k", "kd"):
        p = m.createParameter()
        p.setId(pid)
        p.setValue(0.5)
        p.setConstant(True)
    for rid, law, reactant, product in (("conv", "k * A", "A", "B"),
                                        ("deg", "kd * B", "B", None)):
        r = m.createReaction()
        r.setId(rid)
        r.setReversible(False)
        for sid, make in ((reactant, r.createReactant), (product, r.createProduct)):
            if sid:
                ref = make()
                ref.setSpecies(sid)
                ref.setStoichiometry(1)
                ref.setConstant(True)
        r.createKineticLaw().setMath(libsbml.parseL3Formula(law))
    libsbml.writeSBMLToFile(doc, str(path))


def _write(d, measurements, noise_b="0.1", prior=None, dist_b="normal"):
    """The problem in folder ``d``: obs_a = A (normal, sigma 0.05), obs_b = scale * B
    (normal, log-transformed, sigma ``noise_b``: a number or ``sigma_b``, estimated)."""
    _sbml(d / "model.xml")
    pd.DataFrame({"conditionId": ["c1"], "conditionName": ["c1"]}).to_csv(
        d / "conditions.tsv", sep="\t", index=False)
    pd.DataFrame({
        "observableId": ["obs_a", "obs_b"],
        "observableFormula": ["A", "scale * B"],
        "observableTransformation": ["lin", "log"],
        "noiseFormula": ["0.05", noise_b],
        "noiseDistribution": ["normal", dist_b],
    }).to_csv(d / "observables.tsv", sep="\t", index=False)
    rows = [dict(observableId=o, simulationConditionId="c1", time=t, measurement=1.0)
            for t in TIMES for o in ("obs_a", "obs_b") if not (o == "obs_b" and t == 0.0)]
    meas = pd.DataFrame(rows)
    if measurements is not None:
        meas["measurement"] = measurements
    meas.to_csv(d / "measurements.tsv", sep="\t", index=False)
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
    par.to_csv(d / "parameters.tsv", sep="\t", index=False)
    (d / "problem.yaml").write_text(
        "format_version: 1\nparameter_file: parameters.tsv\nproblems:\n"
        "- condition_files: [conditions.tsv]\n  measurement_files: [measurements.tsv]\n"
        "  observable_files: [observables.tsv]\n  sbml_files: [model.xml]\n")
    return d / "problem.yaml"


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
    assert by_index[0]["nit"] == 1      # the first start makes one iteration
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
