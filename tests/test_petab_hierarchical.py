"""Noise parameters profiled out of a PEtab likelihood (dynlearn.petab.hierarchical): which
parameters are noise-only, the inner optimum (closed form, and a brute-force scan for a
noise formula ``s0 + s1 * B``), the envelope gradient, the Schur complement, and a fit
from a start whose noise parameters are far below the residuals."""

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("libsbml")
pytest.importorskip("petab")
pytest.importorskip("sbmlmath")

from petab_builders import Sbml, write_v1_problem  # noqa: E402

import dynlearn.petab as dp  # noqa: E402
from dynlearn.petab.fitting import FisherSettings, fit_one_start  # noqa: E402
from dynlearn.petab.hierarchical import schur_complement  # noqa: E402
from dynlearn.testing import central_difference  # noqa: E402

TRUE = {"k": 0.8, "kd": 0.3, "scale": 2.0, "sigma_a": 0.2, "s0": 0.01, "s1": 0.3}
TIMES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.5, 8.0]


def _write(d, measurements=None, prior=None, dist_a="normal"):
    """A -> B (rate k A), B degraded (kd B). obs_a = A with sigma ``sigma_a * kd``;
    obs_b = scale * B (``observableParameters``) with sigma ``s0 + s1 * B``
    (``noiseParameters``); obs_c = A + B with sigma ``scale`` (a ``noiseParameters``
    entry that is also an observable parameter). ``prior``: (mean, sd) of a
    ``parameterScaleNormal`` objective prior on sigma_a; ``dist_a`` obs_a's noise."""
    sbml = (Sbml("chain").species("A", 1.0).species("B", 0.0)
            .parameters({"k": 0.5, "kd": 0.5})
            .reaction("conv", "k * A", reactants=["A"], products=["B"])
            .reaction("deg", "kd * B", reactants=["B"]))
    observables = {
        "observableId": ["obs_a", "obs_b", "obs_c"],
        "observableFormula": ["A", "observableParameter1_obs_b * B", "A + B"],
        "observableTransformation": ["lin", "lin", "lin"],
        "noiseFormula": ["sigma_a * kd", "noiseParameter1_obs_b + noiseParameter2_obs_b * B",
                         "noiseParameter1_obs_c"],
        "noiseDistribution": [dist_a, "normal", "normal"],
    }
    rows = []
    for t in TIMES:
        rows.append(dict(observableId="obs_a", simulationConditionId="c1", time=t,
                         measurement=1.0, observableParameters="", noiseParameters=""))
        rows.append(dict(observableId="obs_b", simulationConditionId="c1", time=t,
                         measurement=1.0, observableParameters="scale",
                         noiseParameters="s0;s1"))
        rows.append(dict(observableId="obs_c", simulationConditionId="c1", time=t,
                         measurement=1.0, observableParameters="", noiseParameters="scale"))
    meas = pd.DataFrame(rows)
    if measurements is not None:
        meas["measurement"] = measurements
    par = pd.DataFrame({
        "parameterId": ["k", "kd", "scale", "sigma_a", "s0", "s1"],
        "parameterScale": ["log10", "log10", "lin", "log10", "lin", "log10"],
        "lowerBound": [1e-3, 1e-3, 0.1, 1e-5, 1e-5, 1e-5],
        "upperBound": [1e2, 1e2, 10, 1e2, 1.0, 1e2],
        "nominalValue": [TRUE[k] for k in ("k", "kd", "scale", "sigma_a", "s0", "s1")],
        "estimate": [1] * 6,
    })
    if prior is not None:
        par["objectivePriorType"] = ["", "", "", "parameterScaleNormal", "", ""]
        par["objectivePriorParameters"] = ["", "", "", f"{prior[0]};{prior[1]}", "", ""]
    conditions = {"conditionId": ["c1"], "conditionName": ["c1"]}
    return write_v1_problem(d, sbml, conditions, observables, meas, par)


@pytest.fixture(scope="module")
def prob(tmp_path_factory):
    """The problem with data simulated at TRUE plus noise of the stated sizes."""
    d = tmp_path_factory.mktemp("hier")
    p0 = dp.load(_write(d), rtol=1e-10, atol=1e-12)
    x = p0.to_scale(np.array([TRUE[n] for n in p0.x_names]))
    h = p0.simulate(x)
    rng = np.random.default_rng(5)
    obs = np.array(p0.petab_problem.measurement_df["observableId"])
    B = np.where(obs == "obs_b", h / TRUE["scale"], 0.0)
    sd = np.where(obs == "obs_a", 0.06, np.where(obs == "obs_b", 0.01 + 0.3 * B, 0.05))
    return dp.load(_write(d, h + sd * rng.standard_normal(h.size)), rtol=1e-10, atol=1e-12)


def _x(prob, **changes):
    vals = dict(TRUE, **changes)
    return prob.to_scale(np.array([vals[n] for n in prob.x_names]))


def _idx(prob, name):
    return prob.x_names.index(name)


def test_noise_only_detection(prob):
    # kd (ODE) and scale (observable parameter, and a noise parameter of obs_c) are not
    names = {prob.x_names[i] for i in prob.noise_only}
    assert names == {"sigma_a", "s0", "s1"}


def test_inner_optimum_closed_form(prob):
    """sigma = sigma_a * kd: sigma_a * kd at the optimum is the RMS residual of obs_a."""
    x = _x(prob, sigma_a=1e-4)
    f, xp = prob.profiled_nllh(x)
    # the other parameters untouched
    others = [i for i in range(len(x)) if i not in prob.noise_only]
    np.testing.assert_array_equal(xp[others], x[others])
    rows = np.array(prob.petab_problem.measurement_df["observableId"]) == "obs_a"
    m = np.array(prob.petab_problem.measurement_df["measurement"])
    rms = np.sqrt(np.mean((prob.simulate(x)[rows] - m[rows]) ** 2))
    P, _ = prob.from_scale(xp)
    assert P[_idx(prob, "sigma_a")] * TRUE["kd"] == pytest.approx(rms, rel=1e-10)
    assert f == pytest.approx(prob.nllh(xp), abs=1e-9)
    assert f < prob.nllh(x)


def test_inner_optimum_closed_form_laplace(prob, tmp_path):
    """Laplace noise: sigma_a * kd at the optimum is the mean absolute residual."""
    m = np.array(prob.petab_problem.measurement_df["measurement"])
    pl = dp.load(_write(tmp_path, m, dist_a="laplace"), rtol=1e-10, atol=1e-12)
    x = _x(pl, sigma_a=10.0)
    _, xp = pl.profiled_nllh(x)
    rows = np.array(pl.petab_problem.measurement_df["observableId"]) == "obs_a"
    mad = np.mean(np.abs(pl.simulate(x)[rows] - m[rows]))
    assert pl.from_scale(xp)[0][_idx(pl, "sigma_a")] * TRUE["kd"] == pytest.approx(mad,
                                                                                   rel=1e-10)


def test_inner_optimum_against_scans(prob):
    """sigma = s0 + s1 * B (no closed form): no point of 1-D scans through the optimum, nor
    of a coarse 2-D grid, is lower."""
    x = _x(prob, s0=0.5, s1=3.0)
    f, xp = prob.profiled_nllh(x)
    i0, i1 = _idx(prob, "s0"), _idx(prob, "s1")
    # the optimum is inside the bounds here
    assert prob.lower[i0] < xp[i0] < prob.upper[i0]
    assert prob.lower[i1] < xp[i1] < prob.upper[i1]
    for i, half in ((i0, 0.3 * xp[i0]), (i1, 0.3)):
        grid = np.linspace(xp[i] - half, xp[i] + half, 81)
        vals = []
        for v in grid:
            y = xp.copy()
            y[i] = v
            vals.append(prob.nllh(y))
        vals = np.array(vals)
        assert f <= vals.min() + 1e-10
        assert abs(grid[np.argmin(vals)] - xp[i]) <= grid[1] - grid[0]
    for v0 in np.linspace(prob.lower[i0] + 1e-3, 0.3, 8):
        for v1 in np.linspace(-3.0, 1.0, 8):
            y = xp.copy()
            y[i0], y[i1] = v0, v1
            assert prob.nllh(y) >= f - 1e-10


def test_inner_optimum_on_a_bound(prob):
    """An optimum outside the bounds is clipped to the bound (sigma_a's upper bound below
    the RMS residual)."""
    x = _x(prob, k=3.0)    # a poor fit: large residuals
    lo, hi = prob.lower.copy(), prob.upper.copy()
    i = _idx(prob, "sigma_a")
    try:
        prob.upper[i] = np.log10(0.01)
        _, xp = prob.profiled_nllh(x)
    finally:
        prob.lower[:], prob.upper[:] = lo, hi
    assert xp[i] == np.log10(0.01)


def test_inner_optimum_with_a_prior(prob, tmp_path):
    """A posterior fit profiles on likelihood plus prior: no point of a 1-D scan of their
    sum is lower, and the prior pulls sigma_a from the likelihood's optimum."""
    m = np.array(prob.petab_problem.measurement_df["measurement"])
    pp = dp.load(_write(tmp_path, m, prior=(-2.0, 0.2)), rtol=1e-10, atol=1e-12)
    x = _x(pp, sigma_a=1.0)
    f, xp = pp.profiled_nllh(x, prior=True)
    i = _idx(pp, "sigma_a")
    assert xp[i] < pp.profiled_nllh(x)[1][i] - 0.05        # pulled towards -2

    def post(v):
        y = xp.copy()
        y[i] = v
        return pp.nllh(y) + pp.priors.value_and_grad(y)[0]

    grid = np.linspace(xp[i] - 0.2, xp[i] + 0.2, 41)
    vals = np.array([post(v) for v in grid])
    assert post(xp[i]) <= vals.min() + 1e-10
    assert f == pytest.approx(pp.nllh(xp), abs=1e-9)     # the likelihood part


def test_envelope_gradient(prob):
    x = _x(prob, k=1.1, kd=0.25, scale=1.7)
    f, g, xp = prob.profiled_loss_and_grad(x)
    others = np.array([i for i in range(len(x)) if i not in prob.noise_only])

    def profiled(y_others):
        y = xp.copy()
        y[others] = y_others
        return prob.profiled_nllh(y)[0]

    fd = central_difference(profiled, xp[others], step=1e-5, order=4)
    np.testing.assert_allclose(g[others], fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max())
    # the full gradient in the noise parameters vanishes at their (interior) optimum
    assert np.all(np.abs(g[list(prob.noise_only)]) < 1e-6 * np.abs(g[others]).max())
    # the value and point agree with the fisher system's
    f2, g2, A, b, xp2 = prob.profiled_fisher_system(x)
    assert f2 == pytest.approx(f, rel=1e-12)
    np.testing.assert_allclose(xp2, xp, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(A.T @ b, g2, rtol=1e-8, atol=1e-10)


def test_schur_complement_is_the_inverse_of_the_covariance_block():
    rng = np.random.default_rng(0)
    M = rng.standard_normal((7, 5))
    H = M.T @ M + 0.1 * np.eye(5)
    z = np.array([1, 4])
    S = schur_complement(H, z, [True, True])
    xi = [0, 2, 3]
    np.testing.assert_allclose(S[np.ix_(xi, xi)],
                               np.linalg.inv(np.linalg.inv(H)[np.ix_(xi, xi)]), rtol=1e-10)
    assert not np.any(S[z]) and not np.any(S[:, z])
    # a noise parameter on its bound drops out: the block of the others with it fixed
    S1 = schur_complement(H, z, [True, False])
    keep = [0, 1, 2, 3]
    sub = np.linalg.inv(np.linalg.inv(H[np.ix_(keep, keep)])[np.ix_(xi, xi)])
    np.testing.assert_allclose(S1[np.ix_(xi, xi)], sub, rtol=1e-10)


def test_fit_from_tiny_noise_parameters_profiled_and_not(prob):
    """From a start with every noise parameter ~1e-4 of the residuals both reach the same
    optimum; profiled, with fewer solves with sensitivities. (On the damping rule: with the
    default trust radius the unprofiled path from this start reaches another local optimum,
    scale on its lower bound with a larger s1, nllh -21.44 against -9.91; which basin a
    start reaches changes with the path, so the solves are compared where both agree.)"""
    x0 = _x(prob, k=2.0, kd=0.1, scale=1.0, sigma_a=1e-5, s0=1e-5, s1=1e-5)
    runs = {}
    for on in (True, False):
        runs[on] = fit_one_start((1, x0), prob, "fisher", 500,
                                 FisherSettings(profile_noise=on, trust_region="damping",
                                                secant_after=0), posterior=False)
    on, off = runs[True], runs[False]
    assert on["success"] and off["success"]
    assert on["fun"] == pytest.approx(off["fun"], abs=1e-6)
    np.testing.assert_allclose(on["x"], off["x"], atol=1e-3)
    assert on["fun"] == pytest.approx(prob.nllh(on["x"]), abs=1e-8)
    assert on["n_sens"] < off["n_sens"]
