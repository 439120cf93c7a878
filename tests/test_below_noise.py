"""The below-noise warning counts a penalised network's effective degrees of freedom
(dynlearn.results.diagnostics, issue #11): with an L2 penalty the warning divides the
chi-square by ``n - df`` (``df`` the trace of the hat matrix at the fit's strength, as
generalised cross-validation counts it), so a fit that is honest for its effective size is
not warned about; with no penalty it keeps ``n - k`` and an over-fitted network still is."""

import warnings

import numpy as np
import pandas as pd
import pytest
import sympy as sp
from scipy import special

import dynlearn as dl
from dynlearn.fitting.regularisation import effective_dof, penalised_dof
from dynlearn.results.diagnostics import (
    BELOW_NOISE,
    BELOW_NOISE_LEVEL,
    RELEASED_MIN,
    FitWarning,
    diagnose,
)
from dynlearn.results.result import load_result

x, k = sp.symbols("x k")
SIGMA = 0.05
T = np.linspace(0, 3, 31)


def decay_data(t=T):
    """``2 exp(-0.6 t)`` plus 5 % of white noise (one fixed draw)."""
    e = np.random.default_rng(12).standard_normal(t.size)
    return dl.Dataset.from_frame(pd.DataFrame({"t": t, "x": 2 * np.exp(-0.6 * t) + SIGMA * e}))


def network_model():
    """A network of time beside the physics: 37 weights, enough to follow the noise."""
    nn = dl.MLP("nn", inputs=[sp.Symbol("t")], outputs=1, hidden=[12], activation="tanh",
                seed=0)
    return dl.HybridModel(states=[x], rhs={x: -k * x + nn[0]},
                          params={k: dl.Parameter(0.5, min=0, transform="log")})


def fit(l2, data=None, **kw):
    kw.setdefault("optimizer", dl.LevenbergMarquardt(max_iter=100))
    return dl.fit(network_model(), decay_data() if data is None else data, y0="estimate",
                  sigma=SIGMA, l2=l2, progress=False, **kw)


def below_by_n_minus_k(d) -> bool:
    """Whether the ``n - k`` statistic alone would call the fit below the noise level."""
    return d.fit_to_noise < BELOW_NOISE and d.fit_to_noise_z < special.ndtri(BELOW_NOISE_LEVEL)


def hat_trace(J, penalised, l2):
    P = np.diag(np.asarray(penalised, float))
    return float(np.trace(J @ np.linalg.pinv(J.T @ J + l2 * P) @ J.T))


@pytest.fixture(scope="module")
def penalised():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitWarning)      # honest for its size: no warning
        return fit(1e-3)


def test_a_penalised_fit_honest_for_its_effective_size_is_not_warned_about(penalised):
    r = penalised
    d = r.diagnostics
    n = d.n_data
    # by n - k (k = 2: the rate and the initial state) it is far below the noise level ...
    assert d.counts["physical"] + d.counts["initial"] == 2
    assert below_by_n_minus_k(d) and d.fit_to_noise == pytest.approx(d.chi2 / (n - 2))
    # ... but the network's effective degrees of freedom at l2 = 1e-3 explain it
    df = r.config["effective_dof"]
    assert 2 < df < n - 2 and d.effective_dof == df
    assert d.below_noise_dof == pytest.approx(n - df)
    assert d.below_noise_ratio == pytest.approx(d.chi2 / (n - df))
    assert 0.5 < d.below_noise_ratio < 2.0 and not d.noise_warning
    # the summary says which denominator was used and why
    s = r.summary()
    assert f"chi-square / (n - df) = {d.below_noise_ratio:.4g}" in s
    assert f"n - df = {n - df:.1f}" in s and "effective degrees of freedom at l2 = 0.001" in s


def test_the_effective_dof_are_the_trace_of_the_hat_matrix_from_jacobian_or_factor(penalised):
    r = penalised
    obj = r.objective()
    res, J = obj.jacobian(r.x)
    n, P = obj.n_data, obj.space.is_weight
    expected = hat_trace(J[:n], P, 1e-3)
    assert r.config["effective_dof"] == pytest.approx(expected, rel=1e-6)
    assert penalised_dof(obj, r.x, (res, J)) == pytest.approx(expected, rel=1e-6)
    assert penalised_dof(obj, r.x) == pytest.approx(expected, rel=1e-6)
    # an optimizer may leave a factor A (A^T A = J^T J of every residual, the penalty's too)
    A = np.linalg.qr(J, mode="r")
    assert penalised_dof(obj, r.x, (res, A)) == pytest.approx(expected, rel=1e-6)
    assert effective_dof(J[:n], P, 1e-3) == pytest.approx(expected, rel=1e-6)


def test_the_denominator_survives_save_and_load(penalised, tmp_path):
    r = penalised
    r.save(tmp_path / "fit")
    back = load_result(tmp_path / "fit", r.model0)
    assert back.config["effective_dof"] == r.config["effective_dof"]
    assert back.diagnostics == r.diagnostics
    assert "chi-square / (n - df)" in back.summary()


def test_diagnose_falls_back_to_n_minus_k_without_a_usable_count(penalised):
    """No count, or one that leaves no data over: the n - k rule, which warns here."""
    r = penalised
    obj = r.objective()
    res, J = obj.jacobian(r.x)
    n = obj.n_data
    for df, why in ((None, "are not known"), (float(n) + 0.5, "leave none of the")):
        d = diagnose(obj, r.x, res, J, None, pd.DataFrame(), effective_dof=df)
        assert np.isnan(d.effective_dof) and d.below_noise_dof == n - 2
        assert why in d.below_noise_basis
        assert d.below_noise_ratio == d.fit_to_noise and d.noise_warning
        assert "chi-square / (n - k)" in d.noise_warning


def test_an_unpenalised_network_fitting_the_noise_is_still_warned_about():
    with pytest.warns(FitWarning, match="fits well below the noise level"):
        r = fit(0.0)
    d = r.diagnostics
    assert "effective_dof" not in r.config and np.isnan(d.effective_dof)
    assert below_by_n_minus_k(d) and d.below_noise_dof == d.n_data - 2
    assert d.below_noise_ratio == d.fit_to_noise < 0.5
    assert "chi-square / (n - k)" in d.noise_warning and "no L2 penalty" in d.noise_warning
    # a count handed in is ignored without a penalty
    obj = r.objective()
    res, J = obj.jacobian(r.x)
    again = diagnose(obj, r.x, res, J, None, pd.DataFrame(), effective_dof=10.0)
    assert np.isnan(again.effective_dof) and again.noise_warning


def test_gcv_records_the_effective_dof_of_the_strength_it_chose():
    """The default rule's count is the one the warning uses (no second computation)."""
    data = decay_data(np.linspace(0, 3, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        r = fit("gcv", data, optimizer=dl.LevenbergMarquardt(max_iter=100, patience=5,
                                                             ptol=0.05))
    reg = r.config["regularisation"]
    assert reg["rule"] == "gcv" and reg["l2"] > 0
    chosen = next(p for p in reg["path"] if p["l2"] == reg["l2"])
    assert reg["dof"] == chosen["dof"] == r.config["effective_dof"]
    assert r.config["unpenalised_cost"] == reg["path"][0]["cost"]
    # this early-stopped training is left where it was by GCV's weak penalty (data cost
    # 13.94 against 13.96), which still counts 6.8 degrees of freedom instead of 16: a
    # count the fit did not pay for, so the warning keeps n - k
    d = r.diagnostics
    released = d.chi2 * (1 - reg["path"][0]["cost"] / chosen["cost"])
    assert released < RELEASED_MIN
    assert np.isnan(d.effective_dof) and d.below_noise_dof == 16 - 2
    assert "freed none of the degrees of freedom" in d.below_noise_basis


def test_the_count_is_used_where_the_penalty_paid_for_it(penalised):
    """The same fit diagnosed with an unpenalised baseline: the count is used where the
    penalty raised the chi-square by RELEASED_MIN or more over that baseline, not below."""
    r = penalised
    obj = r.objective()
    res, J = obj.jacobian(r.x)
    n = obj.n_data
    df = r.config["effective_dof"]
    data_cost = float(res[:n] @ res[:n])
    chi2 = r.diagnostics.chi2
    for released, used in ((2.0 * RELEASED_MIN, True), (0.5 * RELEASED_MIN, False)):
        baseline = data_cost * (1 - released / chi2)
        d = diagnose(obj, r.x, res, J, None, pd.DataFrame(), effective_dof=df,
                     unpenalised_cost=baseline)
        if used:
            assert d.effective_dof == df and d.below_noise_dof == pytest.approx(n - df)
        else:
            assert np.isnan(d.effective_dof) and d.below_noise_dof == n - 2
            assert f"by only {released:.2g}" in d.below_noise_basis
