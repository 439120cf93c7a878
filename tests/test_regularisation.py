"""The L2 strength chosen from the data (``dl.fit(..., l2="auto")``,
dynlearn.fitting.regularisation): the discrepancy principle brings a network that fits the
noise back to the noise level, an explicit ``l2`` overrides it, physics-only models are not
touched, and the result reports (and saves) the choice."""

import warnings

import numpy as np
import pandas as pd
import pytest
import sympy as sp

import dynlearn as dl
from dynlearn.fitting.regularisation import check_l2, fit_to_noise
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
