"""Diagnostics of a fit (dynlearn.results.diagnostics): identifiability named from the null
space of the residual Jacobian, parameters at a bound, goodness of fit, a network fitting
the noise, unused parameters, and what the shipped model files say."""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sympy as sp

import dynlearn as dl
from dynlearn.cli import main
from dynlearn.io.model_file import load_model_file
from dynlearn.results.diagnostics import (
    FitWarning,
    count_fitted_values,
    describe_counts,
    diagnose,
    noise_from_differences,
)
from dynlearn.testing import lv_ude_problem

x, x1, x2, k, k1, k2, k3, b = sp.symbols("x x1 x2 k k1 k2 k3 b")
MODELS = Path(__file__).resolve().parent.parent / "examples" / "models"
T = np.linspace(0, 4, 21)


def decay_data(seed=0, sigma=0.01, offset=0.0, t=T):
    rng = np.random.default_rng(seed)
    return dl.Dataset.from_frame(pd.DataFrame(
        {"t": t, "x": 2 * np.exp(-0.6 * t) + offset + sigma * rng.standard_normal(t.size)}))


def logp(v, **kw):
    return dl.Parameter(v, min=0, transform="log", **kw)


# --- identifiability ------------------------------------------------------------------------------
def test_a_product_of_two_rates_is_named_as_a_scaling_symmetry():
    model = dl.HybridModel(states=[x], rhs={x: -k1 * k2 * x}, params={k1: logp(1.0),
                                                                       k2: logp(0.5)})
    r = dl.fit(model, decay_data(), y0="estimate", progress=False)
    d = r.diagnostics
    assert (d.rank, d.n_columns) == (2, 3)
    [c] = d.combinations
    assert c.names == ["k1", "k2"] and c.kind == "scaling" and not c.network
    np.testing.assert_allclose(sorted(c.coefficients), [-1.0, 1.0], atol=1e-3)
    # the product is determined, each factor is not: n/a with the reason
    assert np.isnan(r.params.loc["k1", "stderr"]) and np.isnan(r.params.loc["k2", "stderr"])
    assert np.isfinite(r.params.loc["y0[x]", "stderr"])
    assert r.params.loc["k1", "value"] * r.params.loc["k2", "value"] == pytest.approx(0.6,
                                                                                      rel=0.02)
    assert set(d.notes) == {"k1", "k2"} and "[1]" in d.notes["k1"]
    s = r.summary()
    assert "k1 and k2 can be scaled together without changing the fit" in s
    assert "k1*c, k2/c" in s or "k1/c, k2*c" in s
    assert "rank 2 of 3" in s and "standard errors n/a" in s
    assert "not determined [1]" in s


def test_an_unobserved_state_scales_with_the_rate_that_feeds_the_observed_one():
    """x1 is not measured: scaling it by c and the rate k2 by 1/c leaves x2 unchanged
    (a log parameter and an untransformed initial state in one combination)."""
    model = dl.HybridModel(states=[x1, x2], rhs={x1: -k1 * x1, x2: k2 * x1 - k3 * x2},
                           params={k1: logp(0.4), k2: logp(0.4), k3: logp(0.9)},
                           observables={"y": x2})
    y = 1.5 / 0.7 * (np.exp(-0.3 * T) - np.exp(-1.0 * T))
    rng = np.random.default_rng(3)
    data = dl.Dataset.from_frame(pd.DataFrame({"t": T, "y": y + 0.01 * rng.standard_normal(
        T.size)}))
    r = dl.fit(model, data, y0={"x1": dl.Parameter(2.0), "x2": 0.0}, progress=False)
    [c] = r.diagnostics.combinations
    assert c.kind == "scaling"
    e = dict(zip(c.names, c.coefficients))
    assert set(e) == {"k2", "y0[x1]"}
    assert e["k2"] == pytest.approx(-e["y0[x1]"], rel=1e-3) and abs(e["k2"]) == pytest.approx(1)
    assert np.isfinite(r.params.loc["k1", "stderr"]) and np.isfinite(r.params.loc["k3", "stderr"])
    assert "k2 and y0[x1] can be scaled together" in r.summary()


def test_identifiability_from_a_qr_factor_is_that_from_the_jacobian():
    """On Dask the optimizer leaves the triangular factor of [J r], not J: the diagnostics
    depend on J^T J only."""
    model = dl.HybridModel(states=[x], rhs={x: -k1 * k2 * x}, params={k1: logp(1.0),
                                                                       k2: logp(0.5)})
    res = dl.fit(model, decay_data(), y0="estimate", progress=False)
    obj = res.objective()
    r, J = obj.jacobian(res.x)
    R = np.linalg.qr(np.column_stack([J, r]), mode="r")[:, :J.shape[1]]
    full = diagnose(obj, res.x, r, J, res.cov_x, res.params)
    small = diagnose(obj, res.x, r, R, res.cov_x, res.params)
    assert (full.rank, len(full.combinations)) == (small.rank, len(small.combinations)) == (2, 1)
    assert full.combinations[0].names == small.combinations[0].names
    np.testing.assert_allclose(full.combinations[0].coefficients,
                               small.combinations[0].coefficients, rtol=1e-6)
    assert full.chi2 == small.chi2


def test_a_sum_of_plain_parameters_is_named_as_an_additive_combination():
    model = dl.HybridModel(states=[x], rhs={x: -(k1 + k2) * x}, params={k1: 0.3, k2: 0.2})
    r = dl.fit(model, decay_data(), progress=False)
    [c] = r.diagnostics.combinations
    assert c.kind == "additive" and c.names == ["k1", "k2"]
    np.testing.assert_allclose(sorted(c.coefficients), [-1.0, 1.0], atol=1e-3)
    assert "k1 + d, k2 - d" in r.summary()


# --- goodness of fit ------------------------------------------------------------------------------
def test_an_identifiable_fit_reports_chi_square_r2_and_residual_sd():
    model = dl.HybridModel(states=[x], rhs={x: -k * x}, params={k: logp(0.5)})
    data = decay_data(seed=2, sigma=0.02)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitWarning)
        r = dl.fit(model, data, y0="estimate", sigma=0.02, progress=False)
    d = r.diagnostics
    assert d.rank == d.n_columns == 2 and not d.combinations and not d.warnings
    res = r.residuals()
    e, y = res["residual"].to_numpy(), res["data"].to_numpy()
    [o] = d.observables
    assert o.name == "x" and o.n == 21 and o.sigma_source == "known" and o.sigma == 0.02
    assert o.rms == pytest.approx(np.sqrt(np.mean(e ** 2)), rel=1e-6)
    assert o.r2 == pytest.approx(1 - e @ e / np.sum((y - y.mean()) ** 2), rel=1e-9)
    assert d.chi2 == pytest.approx(np.sum((e / 0.02) ** 2), rel=1e-6)
    assert d.dof == 19 and d.reduced_chi2 == pytest.approx(d.chi2 / 19)
    assert 0.4 < d.reduced_chi2 < 2.0       # an honest fit at the known noise level
    s = r.summary()
    assert "reduced chi-square" in s and "against known noise levels" in s
    # relative standard error and the initial value in the table
    row = next(ln for ln in s.splitlines() if ln.strip().startswith("k "))
    rel = 100 * r.params.loc["k", "stderr"] / r.params.loc["k", "value"]
    assert f"{rel:.3g}%" in row and row.split()[-1] == "0.5"


def test_without_sigma_the_noise_level_is_estimated_from_the_data():
    model = dl.HybridModel(states=[x], rhs={x: -k * x}, params={k: logp(0.5)})
    t = np.linspace(0, 4, 201)
    r = dl.fit(model, decay_data(seed=4, sigma=0.02, t=t), y0="estimate", progress=False)
    [o] = r.diagnostics.observables
    assert o.sigma_source == "data" and o.sigma == pytest.approx(0.02, rel=0.2)
    assert r.diagnostics.reduced_chi2 == pytest.approx(1.0, abs=0.4)
    assert "estimated from the data" in r.summary()


def test_noise_from_differences_cancels_a_quadratic_and_handles_uneven_times():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 10, 600))
    trend = 3 + 2 * t - 0.4 * t ** 2
    assert noise_from_differences([(t, trend)])[0] == pytest.approx(0, abs=1e-6)
    s, m = noise_from_differences([(t, trend + 0.1 * rng.standard_normal(t.size))])
    assert m == 597 and s == pytest.approx(0.1, rel=0.1)
    # pooled over experiments; too few points: NaN
    s2, m2 = noise_from_differences([(t[:300], trend[:300]), (t[300:], trend[300:])])
    assert m2 == 594 and s2 == pytest.approx(0, abs=1e-6)
    assert np.isnan(noise_from_differences([(t[:8], trend[:8])])[0])


# --- bounds ---------------------------------------------------------------------------------------
def test_a_parameter_at_its_lower_bound_is_flagged_and_its_interval_respects_it():
    model = dl.HybridModel(states=[x], rhs={x: -k * x},
                           params={k: dl.Parameter(2.0, min=1.0, max=5.0)})
    r = dl.fit(model, decay_data(), y0="estimate", progress=False)
    p = r.params
    assert p.loc["k", "value"] == pytest.approx(1.0) and p.loc["k", "at_bound"] == "lower"
    assert p.loc["y0[x]", "at_bound"] == ""
    # clipped: one-sided at the bound
    assert p.loc["k", "ci_lower"] == 1.0 and p.loc["k", "ci_upper"] > 1.0
    assert r.diagnostics.at_bound == {"k": "lower"}
    s = r.summary()
    assert "at lower bound" in s and "at a bound: k (lower)" in s


def test_a_log_parameter_at_its_upper_bound_keeps_its_interval_below_it():
    model = dl.HybridModel(states=[x], rhs={x: -k * x},
                           params={k: dl.Parameter(0.2, min=0.0, max=0.4, transform="log")})
    r = dl.fit(model, decay_data(), progress=False)
    p = r.params
    assert p.loc["k", "at_bound"] == "upper" and p.loc["k", "ci_upper"] == pytest.approx(0.4)
    assert p.loc["k", "ci_lower"] < 0.4


# --- networks -------------------------------------------------------------------------------------
def noisy_network_problem():
    """A network of time beside the physics: with 37 weights for 16 points it can follow the
    noise, and it can reproduce any term of the right-hand side."""
    t = np.linspace(0, 3, 16)
    data = decay_data(seed=12, sigma=0.05, t=t)
    nn = dl.MLP("nn", inputs=[sp.Symbol("t")], outputs=1, hidden=[12], activation="tanh",
                seed=0)
    model = dl.HybridModel(states=[x], rhs={x: -k * x + nn[0]}, params={k: logp(0.5)})
    return model, data


def test_a_network_fitting_the_noise_is_warned_about_and_absorbs_the_physical_term():
    model, data = noisy_network_problem()
    # the physics alone fits at the noise level: no warning
    physics = dl.HybridModel(states=[x], rhs={x: -k * x}, params={k: logp(0.5)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitWarning)
        honest = dl.fit(physics, data, y0="estimate", sigma=0.05, progress=False)
    assert 0.5 < honest.diagnostics.reduced_chi2 < 2
    # with no penalty (the default chooses one from the data) the network follows the noise
    with pytest.warns(FitWarning, match="fits well below the noise level"):
        r = dl.fit(model, data, y0="estimate", sigma=0.05, progress=False, l2=0)
    d = r.diagnostics
    assert d.fit_to_noise < 0.5 and d.noise_warning in d.warnings
    # the advice names the penalty chosen from the data, in Python and in a model file
    assert 'l2="auto" in dl.fit' in d.noise_warning
    assert 'l2 = "auto" in a model file\'s [fit]' in d.noise_warning
    # the network can reproduce k's term: k is not determined, and the summary says why
    [c] = d.combinations
    assert c.names == ["k"] and c.network
    assert np.isnan(r.params.loc["k", "stderr"])
    s = r.summary()
    assert "k cannot be determined: the network can reproduce its effect" in s
    assert "fits well below the noise level" in s
    assert describe_counts(d.counts) in s and sum(d.counts.values()) == r.n_params


def test_a_network_fitting_noise_free_data_closely_is_not_warned_about():
    """Far below the noise level estimated from the data (the signal's curvature leaking
    into the third differences), but the residuals are smooth: not noise being fitted."""
    model, _ = noisy_network_problem()
    t = np.linspace(0, 3, 16)
    data = dl.Dataset.from_frame(pd.DataFrame({"t": t, "x": 2 * np.exp(-0.6 * t)}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitWarning)
        r = dl.fit(model, data, y0="estimate", progress=False)
    d = r.diagnostics
    assert d.fit_to_noise < 0.1 and not d.noise_warning
    assert d.observables[0].roughness < 0.5


def test_fitted_value_counts_agree_with_the_result():
    model = dl.HybridModel(states=[x], rhs={x: -k * x}, params={k: logp(0.5)})
    data = decay_data()
    counts = count_fitted_values(model, data, y0="estimate", loss="gaussian")
    assert counts == {"physical": 1, "weights": 0, "initial": 1, "noise": 1}
    r = dl.fit(model, data, y0="estimate", loss="gaussian", progress=False)
    assert r.diagnostics.counts == counts and sum(counts.values()) == r.n_params
    assert describe_counts(counts) == ("3 fitted values (1 physical parameter, 1 initial "
                                       "state, 1 noise level)")


# --- a parameter used nowhere ---------------------------------------------------------------------
def test_a_parameter_in_no_equation_is_a_model_error():
    with pytest.raises(dl.ModelError, match=r"\['b'\] appear in no equation"):
        dl.HybridModel(states=[x], rhs={x: -k * x}, params={k: 1.0, b: 2.0})
    with pytest.raises(dl.ModelError, match="appear in no equation"):   # fixed ones too
        dl.HybridModel(states=[x], rhs={x: -k * x},
                       params={k: 1.0, b: dl.Parameter(2.0, fixed=True)})
    # used only in an observable, or only as a network input: fine
    dl.HybridModel(states=[x], rhs={x: -k * x}, params={k: 1.0, b: 2.0},
                   observables={"y": b * x})
    nn = dl.MLP("nn", inputs=[x, b], outputs=1, hidden=[2], seed=0)
    dl.HybridModel(states=[x], rhs={x: nn[0]}, params={b: 2.0})


def test_physics_only_drops_a_parameter_that_only_scaled_the_network():
    nn = dl.MLP("nn", inputs=[x], outputs=1, hidden=[2], seed=0)
    model = dl.HybridModel(states=[x], rhs={x: -k * x + b * nn[0]}, params={k: 1.0, b: 2.0})
    phys = dl.physics_only(model)
    assert [s.name for s in phys.param_symbols] == ["k"]


# --- saved results and the report -----------------------------------------------------------------
def test_diagnostics_survive_save_and_load_and_reach_the_report(tmp_path):
    model = dl.HybridModel(states=[x], rhs={x: -k1 * k2 * x}, params={k1: logp(1.0),
                                                                       k2: logp(0.5)})
    r = dl.fit(model, decay_data(), y0="estimate", progress=False)
    r.save(tmp_path / "fit")
    back = dl.load_result(tmp_path / "fit")
    assert back.diagnostics == r.diagnostics
    assert back.summary().split("\n")[2:] == r.summary().split("\n")[2:]
    pytest.importorskip("matplotlib")
    r.report(tmp_path / "out")
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<h2>Diagnostics</h2>" in html and "k1 and k2 can be scaled together" in html
    assert "not determined [1]" in html
    assert "k1 and k2 can be scaled together" in (tmp_path / "out" / "summary.txt").read_text()


# --- the shipped model files ----------------------------------------------------------------------
def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cascaded_tanks_file_names_what_the_data_cannot_determine(capsys, tmp_path):
    """y = x2 alone cannot fix the scale of the upper tank: k1, k2, k4 and y0[x1] scale
    together. The symmetry holds at every point, so two iterations show it honestly."""
    code, out, err = run_cli(capsys, "fit", MODELS / "cascaded_tanks.toml", "--out", tmp_path,
                             "--maxiter", "2", "--no-plots")
    assert code in (0, 3), err
    assert ("k1, k2, k4 and y0[x1] can be scaled together without changing the fit: "
            "k1*c, k2/c, k4*c^2, y0[x1]*c^2") in out
    # the progress line and the summary count the same fitted values
    words = "6 fitted values (4 physical parameters, 2 initial states)"
    assert words in err and words in out
    assert "standard errors n/a for k1, k2, k4, y0[x1]: not determined by the data" in out
    for name in ("k3", "y0[x2]"):
        row = next(ln for ln in out.splitlines() if ln.strip().startswith(name + " "))
        assert "n/a" not in row and "not determined" not in row


def test_lv_ude_file_names_the_parameters_the_network_absorbs(capsys, tmp_path):
    code, out, err = run_cli(capsys, "fit", MODELS / "lv_ude.toml", "--out", tmp_path,
                             "--maxiter", "3", "--no-plots")
    assert code in (0, 3), err
    # after a few iterations the network can reproduce alpha's and delta's terms, alone or
    # in a combination: either way both are named, with the network as the reason
    d = dl.load_result(tmp_path / "result").diagnostics
    assert {"alpha", "delta"} <= {n for c in d.combinations if c.network for n in c.names}
    assert "the network can reproduce the term of alpha and delta" in out
    for name in ("alpha", "delta"):
        row = next(ln for ln in out.splitlines() if ln.strip().startswith(name + " "))
        assert "n/a" in row and "not determined [" in row
    assert "89 fitted values (2 physical parameters, 87 network weights)" in err


@pytest.mark.slow
def test_lv_ude_file_fitted_to_the_end_warns_that_the_network_fits_the_noise(tmp_path):
    mf = load_model_file(MODELS / "lv_ude.toml")
    with pytest.warns(FitWarning, match="fits well below the noise level"):    # no penalty
        r = dl.fit(mf.model, mf.read_data(), rtol=1e-6, atol=1e-6, progress=False, l2=0)
    assert r.diagnostics.fit_to_noise < 0.5
    assert "fits well below the noise level" in r.summary()


def test_initial_states_are_not_named_as_absorbed_by_the_network():
    """Every fit of a network model with the initial state estimated said "the network is
    absorbing the term of y0[x]" (R = 0.98-1.0): a network can always bend the start of a
    trajectory, and an initial state is no term of the equations. Physical parameters whose
    terms the network reproduces are still named."""
    model, data, _ = lv_ude_problem()
    r = dl.fit(model, data, y0="estimate", progress=False,
               optimizer=dl.LevenbergMarquardt(max_iter=30))
    corr = r.diagnostics.network_correlation
    assert set(corr) == {"alpha", "delta"} and min(corr.values()) > 0.95
    lines = [ln for ln in r.summary().splitlines() if "absorbing" in ln]
    assert lines and not any("y0[" in ln for ln in lines)
