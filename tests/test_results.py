"""FitResult: parameter table, covariance, summary, predict with bands, residuals,
save/load without pickle."""

import json

import numpy as np
import pandas as pd
import pytest
import sympy as sp

import dynlearn as dl
from dynlearn.testing import central_difference

x, y, k, a, b, c, d = sp.symbols("x y k alpha beta gamma delta")


@pytest.fixture(scope="module")
def lv_fit():
    model = dl.HybridModel(states=[x, y], rhs={x: a * x - b * x * y, y: c * x * y - d * y},
                           params={a: dl.Parameter(1.0, min=0, transform="log"), b: 1.0,
                                   c: dl.Parameter(0.8, fixed=True), d: 1.5})
    truth = model.with_params(alpha=1.3, beta=0.9, delta=1.8)
    t = np.linspace(0, 8, 33)
    sol = dl.simulate(truth, t, [0.44, 4.6])
    rng = np.random.default_rng(0)
    Y = sol.y + 0.05 * rng.standard_normal(sol.y.shape)
    data = dl.Dataset.from_frame(pd.DataFrame({"t": t, "x": Y[:, 0], "y": Y[:, 1]}))
    return model, data, dl.fit(model, data, y0="estimate", progress=False)


def test_params_table(lv_fit):
    _, _, r = lv_fit
    p = r.params
    assert list(p.index) == ["alpha", "beta", "gamma", "delta", "y0[x]", "y0[y]"]
    for col in ("value", "stderr", "ci_lower", "ci_upper", "initial", "min", "max", "fixed",
                "transform"):
        assert col in p.columns
    assert p.loc["gamma", "fixed"] and np.isnan(p.loc["gamma", "stderr"])
    assert p.loc["alpha", "initial"] == 1.0
    # a log parameter's interval is asymmetric around the value and positive
    lo, v, hi = p.loc["alpha", ["ci_lower", "value", "ci_upper"]]
    assert 0 < lo < v < hi and (hi - v) > (v - lo)
    # stderr in physical units (delta method)
    assert p.loc["alpha", "stderr"] == pytest.approx((hi - lo) / (2 * 1.96), rel=0.05)
    assert r.covariance.shape == (5, 5)
    assert r.correlation.loc["alpha", "alpha"] == pytest.approx(1.0)
    assert np.allclose(np.sqrt(np.diag(r.covariance)), p.loc[r.covariance.index, "stderr"])


def test_stderr_matches_finite_difference_covariance(lv_fit):
    """Standard errors agree with s^2 (J^T J)^-1 built from a finite-difference Jacobian in
    physical units."""
    model, data, r = lv_fit
    names = ["alpha", "beta", "delta"]
    vals = r.params.loc[names, "value"].to_numpy()
    y0 = r.y0["data"]

    def resid(v):
        m = model.with_params(**dict(zip(names, v)))
        sol = dl.simulate(m, data[0].t, y0, rtol=1e-10, atol=1e-12)
        return (sol.y - np.column_stack([data[0].columns["x"], data[0].columns["y"]])).ravel()
    J = central_difference(resid, vals, step=1e-6, relative=False)
    rr = resid(vals)
    # y0 is also free in the fit: include its columns by finite differences too
    def resid_y0(yy):
        m = model.with_params(**dict(zip(names, vals)))
        sol = dl.simulate(m, data[0].t, yy, rtol=1e-10, atol=1e-12)
        return (sol.y - np.column_stack([data[0].columns["x"], data[0].columns["y"]])).ravel()
    Jy = central_difference(resid_y0, y0, step=1e-6, relative=False)
    JJ = np.hstack([J, Jy])
    s2 = rr @ rr / (rr.size - 5)
    se = np.sqrt(np.diag(s2 * np.linalg.inv(JJ.T @ JJ)))[:3]
    np.testing.assert_allclose(r.params.loc[names, "stderr"], se, rtol=2e-3)


def test_summary_and_information_criteria(lv_fit):
    _, _, r = lv_fit
    s = r.summary()
    assert "success" in s and "alpha" in s and "(fixed)" in s and "y0[x]" in s
    assert np.isfinite(r.aic) and r.bic > r.aic   # n = 66 > e^2: BIC penalises more
    assert r.history[-1][1] == pytest.approx(r.loss, rel=1e-9)
    assert all(h1[1] >= h2[1] for h1, h2 in zip(r.history, r.history[1:]))


def test_predict_with_bands(lv_fit):
    _, data, r = lv_fit
    t = np.linspace(0, 12, 25)
    p = r.predict(t)
    assert list(p.columns[:3]) == ["t", "x", "y"]
    assert {"x_lower", "x_upper", "y_lower", "y_upper"} <= set(p.columns)
    assert np.all(p["x_lower"] <= p["x"]) and np.all(p["x"] <= p["x_upper"])
    assert np.all(p["x_upper"] - p["x_lower"] > 0)
    # the default start is the fitted initial state
    assert p["x"].iloc[0] == pytest.approx(r.y0["data"][0])
    q = r.predict(t, y0=[1.0, 1.0], bands=False)
    assert q["x"].iloc[0] == 1.0 and "x_lower" not in q.columns
    with pytest.raises(dl.DataError, match="no experiment named 'zz'"):
        r.predict(t, experiment="zz")


def test_residuals_frame(lv_fit):
    _, data, r = lv_fit
    res = r.residuals()
    assert list(res.columns) == ["experiment", "t", "observable", "data", "fitted", "residual",
                                 "scaled"]
    assert len(res) == 66
    assert (res["residual"] ** 2).sum() == pytest.approx(r.loss, rel=1e-9)


def test_save_load_roundtrip_without_pickle(lv_fit, tmp_path):
    model, _, r = lv_fit
    jpath, npath = r.save(tmp_path / "fit")
    meta = json.loads(open(jpath).read())
    assert meta["model"]["rhs"]["x"] and meta["params"]["index"][0] == "alpha"
    with np.load(npath, allow_pickle=False) as z:     # arrays only
        assert "x" in z.files
    r2 = dl.load_result(tmp_path / "fit")             # the model is rebuilt from text
    pd.testing.assert_frame_equal(r.params.astype({"fixed": bool}),
                                  r2.params.astype({"fixed": bool}), check_dtype=False)
    t = np.linspace(0, 5, 6)
    pd.testing.assert_frame_equal(r.predict(t), r2.predict(t), rtol=1e-9)
    pd.testing.assert_frame_equal(r.residuals(), r2.residuals())
    r3 = dl.load_result(jpath, model=model)
    assert r3.loss == r.loss
    # a tampered equation cannot run code
    meta["model"]["rhs"]["x"] = "__import__('os').system('echo hacked')"
    open(jpath, "w").write(json.dumps(meta))
    with pytest.raises(dl.ModelError):
        dl.load_result(tmp_path / "fit")


@pytest.mark.parametrize("folder", ["existing", "trailing separator"])
def test_save_into_a_folder_writes_result_files_inside_it(lv_fit, tmp_path, folder):
    """A folder given to save() got the hidden files '<folder>/.json' and '.npz'."""
    _, _, r = lv_fit
    out = tmp_path / "out"
    if folder == "existing":
        out.mkdir()
        where = out
    else:
        where = str(out) + "/"
    jpath, npath = r.save(where)
    assert sorted(p.name for p in out.iterdir()) == ["result.json", "result.npz"]
    assert (jpath, npath) == (str(out / "result.json"), str(out / "result.npz"))
    assert dl.load_result(out).loss == r.loss


def test_save_is_atomic(lv_fit, tmp_path, monkeypatch):
    """A save that fails leaves the previous result files as they were (the JSON, which
    readers open first, in every case) and no temporary files."""
    import os
    _, _, r = lv_fit
    jpath, npath = r.save(tmp_path / "fit")
    before = (open(jpath, "rb").read(), open(npath, "rb").read())
    r2 = dl.fit(r.model0, r.data, y0="estimate", progress=False,
                optimizer=dl.LevenbergMarquardt(max_iter=1))
    real, calls = os.replace, []

    def fail_from(n):
        def replace(src, dst):
            calls.append(dst)
            if len(calls) >= n:
                raise OSError("disk full")
            return real(src, dst)
        return replace
    for n, unchanged in ((1, before), (2, before[:1])):   # no rename / the JSON's fails
        calls.clear()
        monkeypatch.setattr(os, "replace", fail_from(n))
        with pytest.raises(OSError, match="disk full"):
            r2.save(tmp_path / "fit")
        monkeypatch.undo()
        assert (open(jpath, "rb").read(), open(npath, "rb").read())[:len(unchanged)] == unchanged
        assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.json", "fit.npz"]


def test_save_load_network_model(tmp_path):
    nn = dl.MLP("nn", inputs=[x], outputs=1, hidden=[3], activation="tanh", seed=1, scale=0.1)
    model = dl.HybridModel(states=[x], rhs={x: -k * x + nn[0]}, params={k: 0.5})
    t = np.linspace(0, 2, 8)
    data = dl.Dataset.from_frame(pd.DataFrame({"t": t, "x": np.exp(-t)}))
    r = dl.fit(model, data, optimizer=dl.LevenbergMarquardt(max_iter=5), progress=False)
    r.save(tmp_path / "net")
    r2 = dl.load_result(tmp_path / "net")
    np.testing.assert_allclose(r2.weights["nn"], r.weights["nn"])
    np.testing.assert_allclose(r2.predict(t)["x"], r.predict(t)["x"])
    assert "network nn" in r.summary()


def test_result_plot_returns_axes():
    import matplotlib
    matplotlib.use("Agg")
    x, k = sp.symbols("x k")
    model = dl.HybridModel(states=[x], params={k: 0.3}, rhs={x: -k * x})
    t = np.linspace(0, 4, 9)
    data = dl.Dataset.from_frame(pd.DataFrame({"t": t, "x": np.exp(-0.5 * t)}))
    result = dl.fit(model, data, progress=False)
    for kind in ("fit", "residuals", "loss"):
        ax = result.plot(kind)
        assert ax.has_data()


def test_fisher_covariance_tall_deficient_and_wide():
    from dynlearn.results.covariance import fisher_covariance
    rng = np.random.default_rng(1)
    # tall, full rank: the inverse of J^T J
    J = rng.standard_normal((500, 6))
    cov, full = fisher_covariance(J, scale=2.0)
    assert full
    np.testing.assert_allclose(cov, 2.0 * np.linalg.inv(J.T @ J), rtol=1e-10, atol=1e-14)
    # tall, rank deficient: columns 4 and 5 enter only as their sum
    Jd = J.copy()
    Jd[:, 5] = Jd[:, 4]
    cov, full = fisher_covariance(Jd)
    assert not full
    assert np.isinf(cov[4, 4]) and np.isinf(cov[5, 5])
    assert np.all(np.isfinite(cov[:4, :4]))
    # the determined block is that of the model with the two columns merged into one
    np.testing.assert_allclose(cov[:4, :4], np.linalg.inv(J[:, :5].T @ J[:, :5])[:4, :4],
                               rtol=1e-8)
    # wide (fewer residuals than parameters): every parameter touching the null space is
    # undetermined, which the thin SVD alone would not show
    Jw = rng.standard_normal((3, 5))
    cov, full = fisher_covariance(Jw)
    assert not full and np.all(np.isinf(np.diag(cov)))



def test_profile_likelihood_agrees_with_wald_on_a_nearly_linear_fit(lv_fit):
    """Small noise, many points: the profile-likelihood interval is the Wald one (the
    small-sample threshold makes them equal for a linear model)."""
    model, data, res = lv_fit
    for name in ("alpha", "beta"):                       # log-transformed and plain
        prof = res.profile(name)
        lo, hi = prof.interval
        w_lo, w_hi = prof.wald
        assert abs(lo - w_lo) < 0.03 * (w_hi - w_lo) and abs(hi - w_hi) < 0.03 * (w_hi - w_lo)
        f = prof.frame
        assert len(f) == 11 and f["success"].all()
        i = int(np.argmin(f["deviance"]))
        assert f["value"][i] == pytest.approx(prof.estimate) and f["deviance"][i] == 0
        assert np.all(np.diff(f["deviance"][i:]) > 0) and np.all(np.diff(f["deviance"][:i + 1]) < 0)
        assert f["value"].min() < lo < prof.estimate < hi < f["value"].max()


def test_profile_interval_of_a_nonlinear_fit_ends_where_the_deviance_reaches_the_threshold():
    """Few noisy points of an exponential decay: the profile of the rate is asymmetric, and
    a refit at each end of the interval has the threshold's deviance."""
    k = sp.Symbol("k")
    model = dl.HybridModel(states=[x], rhs={x: -k * x}, params={k: 0.5})
    t = np.linspace(0, 3, 6)
    rng = np.random.default_rng(4)
    data = dl.Dataset.from_frame(pd.DataFrame(
        {"t": t, "x": np.exp(-1.5 * t) + 0.08 * rng.standard_normal(t.size)}))
    res = dl.fit(model, data, y0="estimate", progress=False)
    prof = res.profile("k", n=16, span=3.0)
    lo, hi = prof.interval
    w_lo, w_hi = prof.wald
    assert (hi - prof.estimate) / (prof.estimate - lo) > 1.1 * (w_hi - prof.estimate) / (
        prof.estimate - w_lo)                                    # skewed to larger rates
    from dynlearn.results.likelihood_profile import deviance
    for end in (lo, hi):          # the refits of the profile, at its ends
        r = res.refit(fixed={"k": end}, optimizer=dl.LevenbergMarquardt(), progress=False)
        assert r.success and np.isfinite(r.loss)
        assert r.params.loc["k", "fixed"] and r.params.loc["k", "value"] == end
        assert deviance(res, [r.loss])[0] == pytest.approx(prof.threshold, rel=0.05)


def test_profile_errors(lv_fit, tmp_path):
    model, data, res = lv_fit
    with pytest.raises(dl.OptionError, match="not a parameter"):
        res.profile("omega")
    with pytest.raises(dl.OptionError, match="fixed"):
        res.profile("gamma")
    res.save(tmp_path / "r")
    with pytest.raises(dl.OptionError, match="made in this session"):
        dl.load_result(tmp_path / "r").profile("beta")
    with pytest.raises(dl.OptionError, match="made in this session"):
        dl.load_result(tmp_path / "r").refit()
    with pytest.warns(UserWarning, match="does not reach"):
        prof = res.profile("beta", values=[0.9, 0.8951, 0.8952])
    assert prof.interval == (-np.inf, np.inf)
