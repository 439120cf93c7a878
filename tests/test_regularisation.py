"""The L2 strength chosen from the data (dynlearn.fitting.regularisation): the discrepancy
principle (``l2="auto"``) brings a network that fits the noise back to the noise level, an
explicit ``l2`` overrides it, physics-only models are not touched, and the result reports
(and saves) the choice. Generalised cross-validation (``l2="gcv"``, the default): the
effective degrees of freedom are the hat matrix's trace, fall from rank(J) to 0, on a
linear model the chosen strength estimates the noise variance, and where its minimum is a
fit through the data points the discrepancy principle chooses."""

import warnings

import numpy as np
import pandas as pd
import pytest
import sympy as sp
from scipy import stats

import dynlearn as dl
from dynlearn.fitting.regularisation import PenaltyPath, check_l2, effective_dof, fit_to_noise
from dynlearn.results.diagnostics import FitWarning
from dynlearn.results.result import load_result

x, k = sp.symbols("x k")
T = np.linspace(0, 3, 16)


def decay_data(sigma, seed=12, t=T):
    """``2 exp(-0.6 t)`` plus ``sigma`` times one fixed draw of white noise."""
    e = np.random.default_rng(seed).standard_normal(t.size)
    return dl.Dataset.from_frame(pd.DataFrame({"t": t, "x": 2 * np.exp(-0.6 * t) + sigma * e}))


def network_model():
    """A network of time beside the physics: 37 weights for 16 points, so that with no
    penalty it follows the noise (as in tests/test_diagnostics.py)."""
    nn = dl.MLP("nn", inputs=[sp.Symbol("t")], outputs=1, hidden=[12], activation="tanh",
                seed=0)
    return dl.HybridModel(states=[x], rhs={x: -k * x + nn[0]},
                          params={k: dl.Parameter(0.5, min=0, transform="log")})


def physics_model():
    return dl.HybridModel(states=[x], rhs={x: -k * x},
                          params={k: dl.Parameter(0.5, min=0, transform="log")})


@pytest.fixture(scope="module")
def auto_fit():
    data = decay_data(0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitWarning)   # regularised: no below-noise warning
        r = dl.fit(network_model(), data, y0="estimate", sigma=0.05, l2="auto",
                   progress=False)
    return r, data


def test_auto_l2_brings_a_network_fitting_the_noise_back_to_the_noise_level(auto_fit):
    r, data = auto_fit
    reg = r.config["regularisation"]
    # the path starts at the unpenalised fit, which is well below the known noise level
    # (tests/test_diagnostics.py: the warning), and the chosen point is on it
    assert reg["path"][0]["l2"] == 0.0 and reg["path"][0]["fit_to_noise"] < 0.5
    assert reg["rule"] == "discrepancy" and reg["l2"] > 0 and r.config["l2"] == reg["l2"]
    assert 0.5 <= r.diagnostics.fit_to_noise <= 2.0
    assert not r.diagnostics.noise_warning
    assert any(p["l2"] == reg["l2"] for p in reg["path"][1:])
    # the counters are those of the whole path
    assert r.nfev + r.njev + r.ngev == sum(p["evaluations"] for p in reg["path"])
    # the fit at the chosen strength is the fit with that l2 given: its loss has the penalty
    assert dl.loss(r.model, data, y0=r.y0[data[0].name], sigma=0.05,
                   l2=reg["l2"]) == pytest.approx(r.loss, rel=1e-6)


def test_the_choice_is_reported_saved_and_kept_by_refits(auto_fit, tmp_path):
    r, data = auto_fit
    reg = r.config["regularisation"]
    assert f"L2 penalty chosen from the data: l2 = {reg['l2']:.3g}" in r.summary()
    assert r.refitter.settings["l2"] == reg["l2"]
    r.save(tmp_path / "fit")
    back = load_result(tmp_path / "fit", r.model0)
    assert back.config["l2"] == reg["l2"]
    assert back.config["regularisation"]["l2"] == reg["l2"]
    assert len(back.config["regularisation"]["path"]) == len(reg["path"])
    assert "L2 penalty chosen from the data" in back.summary()


def test_an_explicit_l2_overrides_the_rule_and_is_used_as_given():
    data = decay_data(0.05)
    kw = dict(y0="estimate", sigma=0.05, progress=False,
              optimizer=dl.LevenbergMarquardt(max_iter=15))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        a = dl.fit(network_model(), data, l2=0.0, **kw)
        b = dl.fit(network_model(), data, l2=0, **kw)
        c = dl.fit(network_model(), data, l2=0.3, **kw)
    assert np.array_equal(a.x, b.x) and a.loss == b.loss
    assert "regularisation" not in a.config and "regularisation" not in c.config
    assert c.config["l2"] == 0.3 and not np.array_equal(a.x, c.x)
    assert dl.loss(c.model, data, y0=c.y0[data[0].name], sigma=0.05,
                   l2=0.3) == pytest.approx(c.loss, rel=1e-8)


def test_physics_only_models_are_not_touched():
    data = decay_data(0.05)
    a = dl.fit(physics_model(), data, y0="estimate", progress=False, l2="auto")
    b = dl.fit(physics_model(), data, y0="estimate", progress=False, l2=0.0)
    assert np.array_equal(a.x, b.x) and a.loss == b.loss and a.nfev == b.nfev
    assert "regularisation" not in a.config and a.config["l2"] == 0.0
    assert "L2 penalty chosen" not in a.summary()


def test_l2_values_are_checked():
    assert check_l2("auto") == "auto" and check_l2(None) == "auto"
    assert check_l2("gcv") == "gcv"
    assert check_l2(0) == 0.0 and check_l2(np.float64(1e-3)) == 1e-3
    for bad in (-1.0, float("nan"), float("inf"), "big", True):
        with pytest.raises(dl.OptionError, match="l2 must be"):
            check_l2(bad)
    with pytest.raises(dl.OptionError, match="l2 must be"):
        dl.fit(physics_model(), decay_data(0.05), l2=-0.5, progress=False)


def test_fit_to_noise_is_the_diagnostics_ratio(auto_fit):
    r, _ = auto_fit
    f, z, noisy = fit_to_noise(r.objective(), r.x)
    assert f == pytest.approx(r.diagnostics.fit_to_noise, rel=1e-9)
    assert z == pytest.approx(r.diagnostics.fit_to_noise_z, rel=1e-9)
    assert noisy


@pytest.mark.slow
def test_the_chosen_penalty_grows_with_the_noise():
    """The same draw of noise at three known levels. With known noise levels the residuals
    are in units of the noise, so the penalty in data units is ``l2 sigma^2`` (the fit
    minimises ``|r / sigma|^2 + l2 |w|^2``, i.e. ``|r|^2 + l2 sigma^2 |w|^2``): noisier data
    need a stronger one to stop the network following the noise."""
    in_data_units = []
    for sigma in (0.02, 0.05, 0.1):
        r = dl.fit(network_model(), decay_data(sigma), y0="estimate", sigma=sigma,
                   l2="auto", progress=False)
        reg = r.config["regularisation"]
        assert reg["l2"] > 0 and 0.5 <= r.diagnostics.fit_to_noise <= 2.0
        in_data_units.append(reg["l2"] * sigma ** 2)
    assert in_data_units[0] < in_data_units[1] < in_data_units[2]


@pytest.mark.slow
def test_noise_free_data_get_no_penalty():
    """Far below the noise level estimated from the data, but the residuals are smooth: the
    network is not fitting noise, and no penalty is chosen (the report says why)."""
    data = dl.Dataset.from_frame(pd.DataFrame({"t": T, "x": 2 * np.exp(-0.6 * T)}))
    r = dl.fit(network_model(), data, y0="estimate", l2="auto", progress=False)
    reg = r.config["regularisation"]
    assert reg["l2"] == 0.0 and "smooth" in reg["reason"] and len(reg["path"]) == 1


# --- effective degrees of freedom and generalised cross-validation (l2="gcv") --------------
def hat_trace(J, penalised, l2):
    """The trace of J (J^T J + l2 P)^+ J^T, computed directly."""
    P = np.diag(np.asarray(penalised, float))
    return float(np.trace(J @ np.linalg.pinv(J.T @ J + l2 * P) @ J.T))


@pytest.mark.parametrize("n, p", [(30, 8), (12, 20)])      # over- and under-determined
def test_dof_is_the_trace_of_the_hat_matrix(n, p):
    rng = np.random.default_rng(3)
    J = rng.standard_normal((n, p)) * np.logspace(0, -3, p)    # columns of unequal size
    penalised = np.arange(p) >= 2                              # two unpenalised columns
    for l2 in (1e-6, 1e-3, 0.1, 1.0, 30.0):
        assert effective_dof(J, penalised, l2) == pytest.approx(
            hat_trace(J, penalised, l2), rel=1e-8, abs=1e-9)
    # and with every column penalised
    every = np.ones(p, bool)
    assert effective_dof(J, every, 0.5) == pytest.approx(hat_trace(J, every, 0.5), rel=1e-8)


def test_dof_falls_monotonically_from_the_rank_to_zero():
    rng = np.random.default_rng(4)
    # rank 6 of 10 columns (four are combinations of the others), 25 rows
    base = rng.standard_normal((25, 6))
    J = np.hstack([base, base[:, :4] @ rng.standard_normal((4, 4))])
    path = PenaltyPath(J, np.zeros(25), np.zeros(10), np.ones(10, bool))
    lams = np.logspace(-12, 10, 200)
    df = path.dof(lams)
    assert path.dof(0.0) == np.linalg.matrix_rank(J) == 6
    assert np.all(np.diff(df) < 0)
    assert df[0] == pytest.approx(6, abs=1e-6) and df[-1] < 1e-6
    # unpenalised columns stay: df falls to their rank
    part = PenaltyPath(J, np.zeros(25), np.zeros(10), np.arange(10) >= 2)
    assert part.dof(1e12) == pytest.approx(2, abs=1e-6)


def test_linearised_cost_is_the_ridge_fit_cost():
    """For a linear model the path is exact: rss(l2) is the data cost of the ridge fit."""
    rng = np.random.default_rng(5)
    J = rng.standard_normal((40, 12))
    yobs = rng.standard_normal(40)
    x0 = rng.standard_normal(12)
    pen = np.arange(12) >= 3
    path = PenaltyPath(J, J @ x0 - yobs, x0, pen)
    for l2 in (0.01, 1.0, 50.0):
        xs = np.linalg.solve(J.T @ J + l2 * np.diag(pen.astype(float)), J.T @ yobs)
        assert path.rss(l2) == pytest.approx(float(np.sum((J @ xs - yobs) ** 2)), rel=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_gcv_on_a_linear_model_estimates_the_noise_variance(seed):
    """A linear model with many small coefficients (a ridge problem) and known noise level:
    at the strength GCV selects (it is not told sigma), cost / (n - df) estimates sigma^2.
    With the fit's residuals approximately sigma^2 chi-square with n - df degrees of freedom,
    the tolerance is the central 99.9 % of chi2(n - df) / (n - df)."""
    rng = np.random.default_rng(100 + seed)
    n, p, sigma = 200, 60, 0.3
    J = rng.standard_normal((n, p))
    w = 0.1 * rng.standard_normal(p)
    yobs = J @ w + sigma * rng.standard_normal(n)
    path = PenaltyPath(J, -yobs, np.zeros(p), np.ones(p, bool))
    l2 = path.gcv_minimum()
    assert l2 > 0                               # the penalty earns its place here
    df = float(path.dof(l2))
    ratio = float(path.rss(l2)) / (n - df) / sigma ** 2
    lo, hi = stats.chi2.ppf([0.0005, 0.9995], n - df) / (n - df)
    assert lo <= ratio <= hi
    # and the strength meeting the discrepancy with the effective degrees of freedom
    # (none when the unpenalised fit is already at or above sigma^2: then 0)
    at = path.discrepancy(sigma ** 2)
    if at > 0:
        assert float(path.rss(at)) / (n - float(path.dof(at))) == pytest.approx(sigma ** 2,
                                                                                rel=1e-5)
    else:
        assert at == 0 and float(path.rss(0.0)) / (n - p) >= sigma ** 2


def test_gcv_rule_in_a_fit_reports_its_choice_and_fits_at_it():
    """``l2="gcv"``: the network of time follows the noise with no penalty (its 37 weights
    can interpolate the 16 points: df = n, GCV infinite); the rule picks a strength with
    far fewer effective degrees of freedom, the smallest GCV of the strengths it fitted,
    and the fit returned is the fit at that strength. No noise level is given."""
    data = decay_data(0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        r = dl.fit(network_model(), data, y0="estimate", l2="gcv", progress=False,
                   optimizer=dl.LevenbergMarquardt(max_iter=100, patience=5, ptol=0.05))
    reg = r.config["regularisation"]
    assert reg["rule"] == "gcv" and reg["l2"] > 0 and r.config["l2"] == reg["l2"]
    first, *penalised = reg["path"]
    assert first["l2"] == 0.0 and penalised
    chosen = next(p for p in reg["path"] if p["l2"] == reg["l2"])
    assert chosen["gcv"] == min(p["gcv"] for p in reg["path"]) < first["gcv"]
    assert chosen["dof"] < first["dof"] and chosen["dof"] < 16
    # GCV's own noise estimate, cost / (n - df), is that of the data (sigma 0.05): within
    # the central 99.9 % of chi2(n - df) / (n - df)
    var = chosen["cost"] / (16 - chosen["dof"]) / 0.05 ** 2
    lo, hi = stats.chi2.ppf([0.0005, 0.9995], 16 - chosen["dof"]) / (16 - chosen["dof"])
    assert lo <= var <= hi
    assert dl.loss(r.model, data, y0=r.y0[data[0].name], l2=reg["l2"]) == pytest.approx(
        r.loss, rel=1e-6)
    assert r.nfev + r.njev + r.ngev >= sum(p["evaluations"] for p in reg["path"])
    assert "L2 penalty chosen from the data" in r.summary() and "gcv" in r.summary()


def test_the_default_chooses_the_penalty_by_gcv_for_networks_and_leaves_physics_alone():
    data = decay_data(0.05)
    opt = dl.LevenbergMarquardt(max_iter=100, patience=5, ptol=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        net = dl.fit(network_model(), data, y0="estimate", progress=False, optimizer=opt)
        asked = dl.fit(network_model(), data, y0="estimate", progress=False, optimizer=opt,
                       l2="gcv")
        phys = dl.fit(physics_model(), data, y0="estimate", progress=False)
    reg = net.config["regularisation"]
    assert reg["rule"] == "gcv" and net.config["l2"] == reg["l2"] > 0
    assert net.refitter.settings["l2"] == reg["l2"]
    assert asked.config["l2"] == reg["l2"] and asked.loss == net.loss    # the same fit
    assert "L2 penalty chosen from the data" in net.summary()
    assert phys.config["l2"] == 0.0 and not phys.config.get("regularisation")


def test_where_gcvs_minimum_interpolates_the_discrepancy_principle_chooses(monkeypatch):
    """When GCV's minimum leaves fewer than INTERPOLATING residual degrees of freedom (a fit
    through the data points, where GCV is 0/0), the discrepancy principle chooses and the
    report says why. The threshold is raised here so that this fit counts as one."""
    import dynlearn.fitting.regularisation as regularisation
    monkeypatch.setattr(regularisation, "INTERPOLATING", 1e9)
    data = decay_data(0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        r = dl.fit(network_model(), data, y0="estimate", sigma=0.05, progress=False,
                   optimizer=dl.LevenbergMarquardt(patience=10, ptol=0.01, max_iter=400),
                   l2="gcv")
    reg = r.config["regularisation"]
    assert reg["rule"] == "discrepancy" and reg["l2"] > 0
    assert reg["reason"].startswith("generalised cross-validation cannot choose")
    assert 0.5 <= r.diagnostics.fit_to_noise <= 2.0      # brought to the noise level
