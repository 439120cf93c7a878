"""Standard errors of the noise parameters of sigma formulas (``sigma={"x": "a + b*x"}``):
the covariance of the model's coordinates and the noise parameters together, from the
Fisher information of the Gaussian likelihood with levels that depend on the predictions
(:func:`dynlearn.results.covariance.noise_fisher_factor`)."""

import warnings

import numpy as np
import pandas as pd
import pytest

import dynlearn as dl
import dynlearn.results.result as result_module
from dynlearn.results.covariance import noise_fisher_factor
from dynlearn.testing import decay_model

K, A, B = 0.7, 0.05, 0.1
FORMULA = {"x": "a + b*x"}


def noisy_decay(n: int, seed: int) -> dl.Dataset:
    """x = 10 exp(-K t) measured with Gaussian noise of standard deviation A + B*h."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 4, n)
    h = 10.0 * np.exp(-K * t)
    return dl.Dataset.from_frame(pd.DataFrame(
        {"t": t, "x": h + (A + B * h) * rng.standard_normal(n)}))


def paired_decay(transform: str, level, n: int = 60) -> dl.Dataset:
    """Each time measured twice, at ``g(y) = g(h) +- level(h)`` exactly (``g``: the
    transform, ``level``: the noise level at the truth). The negative log-likelihood is a
    polynomial of degree 2 in each ``g(y)``, so the mean of its Hessian over such a pair is
    its expectation over the noise: the Hessian of this data set's likelihood at the truth
    *is* the Fisher information."""
    t = np.linspace(0, 4, n)
    h = 10.0 * np.exp(-K * t)
    s = level(h)
    sign = np.tile([1.0, -1.0], n)
    hh, ss = np.repeat(h, 2), np.repeat(s, 2)
    y = hh * np.exp(sign * ss) if transform == "log" else hh + sign * ss
    return dl.Dataset.from_frame(pd.DataFrame({"t": np.repeat(t, 2), "x": y}))


@pytest.mark.parametrize("transform, formula, level", [
    ("lin", "a + b*x", lambda h: A + B * h),
    ("log", "a + b*x/10", lambda h: A + B * h / 10)])
def test_fisher_information_is_the_expected_hessian(transform, formula, level):
    """At the truth, the Fisher information ``A^T A`` of (log k, y0, a, b) equals the
    Hessian of the exact negative log-likelihood (noise parameters held, levels following
    the predictions; central differences) of the paired data set, whose Hessian is its own
    expectation: measured agreement 1e-7 relative to ``sqrt(F_ii F_jj)`` (limited by the
    differences' step and the solver tolerance), asserted to 1e-5. On a log observable the
    levels are on the log scale, as the loss takes them."""
    data = paired_decay(transform, level)
    r = dl.fit(decay_model(), data, loss="gaussian", sigma={"x": formula}, y0="estimate",
               transform={"x": transform}, rtol=1e-10, atol=1e-12, progress=False)
    obj = r.objective()
    assert obj.space.names == ["k", "y0[x]"]
    x0 = obj.space.internal(np.array([K, 10.0]))
    eta0 = np.r_[x0, A, B]
    ng = obj.n_groups

    def nll(eta):
        s = obj.sigma_hat.copy()
        s[ng:] = eta[2:]
        obj.set_sigma(s, eta[:2])
        return 0.5 * (obj.cost(eta[:2]) + obj.penalty())

    hess = np.zeros((4, 4))
    e = 1e-4 * np.maximum(np.abs(eta0), 1e-2)

    def shifted(i, j, di, dj):
        z = eta0.copy()
        z[i] += di * e[i]
        z[j] += dj * e[j]
        return nll(z)
    for i in range(4):
        for j in range(4):
            hess[i, j] = (shifted(i, j, 1, 1) - shifted(i, j, 1, -1) - shifted(i, j, -1, 1)
                          + shifted(i, j, -1, -1)) / (4 * e[i] * e[j])
    s = obj.sigma_hat.copy()
    s[ng:] = [A, B]
    obj.set_sigma(s, x0)
    r0, J, fac = noise_fisher_factor(obj, x0)
    F = fac.T @ fac
    # the mean part is the residual Jacobian, the same as the objective's own
    r1, J1 = obj.jacobian(x0)
    np.testing.assert_allclose(r0, r1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(J, J1, rtol=1e-9, atol=1e-9 * np.abs(J1).max())
    scale = np.sqrt(np.outer(np.diag(F), np.diag(F)))
    assert np.max(np.abs(F - hess) / scale) < 1e-5, (F, hess)
    # and without the levels' dependence on the predictions the x block would differ
    assert np.max(np.abs(J.T @ J - hess[:2, :2]) / scale[:2, :2]) > 1e-3


def test_noise_parameters_in_the_table_summary_and_saved_result(tmp_path):
    """The parameter table has a row per noise parameter with its standard error and
    interval (the joint covariance's), the summary shows it, and a saved result keeps it."""
    r = dl.fit(decay_model(), noisy_decay(300, 0), loss="gaussian", sigma=FORMULA,
               y0=[10.0], progress=False)
    p = r.params
    assert list(p.index) == ["k", "a", "b"]
    assert list(p["kind"]) == ["parameter", "noise parameter", "noise parameter"]
    assert np.all(np.isfinite(p["stderr"])) and np.all(p["stderr"] > 0)
    # the joint covariance, inverted here from the Fisher factor at the optimum
    obj = r.objective()
    _, _, fac = noise_fisher_factor(obj, r.x)
    cov = np.linalg.inv(fac.T @ fac)
    k = p.loc["k", "value"]
    np.testing.assert_allclose(p.loc[["a", "b"], "stderr"], np.sqrt(np.diag(cov)[1:]),
                               rtol=1e-8)
    assert p.loc["k", "stderr"] == pytest.approx(k * np.sqrt(cov[0, 0]), rel=1e-8)
    z = 1.959963984540054
    assert p.loc["a", "ci_lower"] == pytest.approx(p.loc["a", "value"]
                                                   - z * p.loc["a", "stderr"], rel=1e-9)
    assert p.loc["b", "ci_upper"] == pytest.approx(p.loc["b", "value"]
                                                   + z * p.loc["b", "stderr"], rel=1e-9)
    # each within three standard errors of the truth
    assert np.all(np.abs(p.loc[["k", "a", "b"], "value"] - [K, A, B])
                  < 3 * p.loc[["k", "a", "b"], "stderr"])
    line = next(s for s in r.summary().splitlines() if s.strip().startswith("b "))
    assert f"{p.loc['b', 'stderr']:.3g}" in line
    assert r.covariance.shape == (1, 1)           # the model's parameters, as before
    r.save(tmp_path / "res")
    back = dl.load_result(tmp_path / "res")
    pd.testing.assert_frame_equal(back.params[["value", "stderr", "ci_lower", "ci_upper"]],
                                  p[["value", "stderr", "ci_lower", "ci_upper"]])
    assert list(back.params["kind"]) == list(p["kind"])


def test_a_noise_parameter_at_its_bound_is_flagged():
    """Data with purely proportional noise drive ``a`` to its lower bound: its row says so
    and its interval is clipped there."""
    rng = np.random.default_rng(3)
    t = np.linspace(0, 4, 200)
    h = 10.0 * np.exp(-K * t)
    data = dl.Dataset.from_frame(pd.DataFrame({"t": t, "x": h * (1 + 0.1 * rng.standard_normal(
        t.size))}))
    r = dl.fit(decay_model(), data, loss="gaussian", sigma=FORMULA, y0=[10.0],
               noise_params={"a": (0.1, 0.0, None)}, progress=False)
    row = r.params.loc["a"]
    assert row["at_bound"] == "lower" and row["ci_lower"] == 0.0
    assert r.params.loc["b", "at_bound"] == ""


def test_a_formula_without_noise_parameters():
    """A formula of the prediction alone (a known level that follows it) fits (it has
    nothing to estimate), and k's standard error includes what the levels tell about k:
    the information only grows, so it is below the one from the residual Jacobian alone."""
    r = dl.fit(decay_model(), noisy_decay(200, 0), loss="gaussian",
               sigma={"x": f"{A} + {B}*x"}, y0=[10.0], progress=False)
    assert r.success and r.n_params == 1 and list(r.params.index) == ["k"]
    _, J = r.objective().jacobian(r.x)
    se_j = r.params.loc["k", "value"] * np.sqrt(np.linalg.inv(J.T @ J)[0, 0])
    assert r.params.loc["k", "stderr"] < 0.999 * se_j


def test_noise_parameters_the_data_cannot_separate():
    """sigma = a + c: only the sum is determined; a and c get no standard error, with a
    note saying so, and k keeps its own."""
    r = dl.fit(decay_model(), noisy_decay(100, 0), loss="gaussian", sigma={"x": "a + c"},
               y0=[10.0], progress=False)
    assert r.params.loc[["a", "c"], "stderr"].isna().all()
    assert np.isfinite(r.params.loc["k", "stderr"])
    assert "standard errors n/a for a, c: not determined by the data" in r.summary()


def test_standard_errors_n_a_past_the_budget(monkeypatch):
    """Past the time budget, the noise parameters' standard errors are n/a too."""
    monkeypatch.setattr(result_module, "covariance_budget", lambda elapsed, outcomes: -1.0)
    r = dl.fit(decay_model(), noisy_decay(100, 1), loss="gaussian", sigma=FORMULA,
               y0=[10.0], progress=False)
    assert r.params["stderr"].isna().all() and r.cov_x is None
    assert list(r.params.index) == ["k", "a", "b"]
    assert "standard errors n/a: the residual Jacobian at the optimum was not computed " \
           "within its time budget" in r.summary()


@pytest.mark.slow
def test_standard_errors_match_the_spread_over_seeds():
    """Over 40 noise seeds (200 values each, sigma = 0.05 + 0.1 h), the mean reported
    standard errors of k, a and b agree with the standard deviations of their estimates
    within 25 % (measured ratios 0.99, 1.00, 0.89; the spread of a standard deviation
    from 40 draws is about 11 %). About 6 s."""
    est, se = [], []
    for seed in range(40):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = dl.fit(decay_model(), noisy_decay(200, seed), loss="gaussian", sigma=FORMULA,
                       y0=[10.0], progress=False)
        p = r.params.loc[["k", "a", "b"]]
        est.append(p["value"].to_numpy(dtype=float))
        se.append(p["stderr"].to_numpy(dtype=float))
    ratio = np.mean(se, axis=0) / np.std(est, axis=0, ddof=1)
    assert np.all(np.abs(ratio - 1.0) < 0.25), ratio
