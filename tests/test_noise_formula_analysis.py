"""Noise formulas (``sigma={"x": "a + b*x"}``, ``loss="gaussian"``) through the analyses
after a fit: the diagnostics' identifiability and the bootstrap's columns."""

import numpy as np
import pandas as pd
import pytest
import sympy as sp

import dynlearn as dl
from dynlearn.testing import decay_model

x, k1, k2 = sp.symbols("x k1 k2")
A, B = 0.02, 0.05                 # simulated sigma = A + B*h


def data_with_formula_noise(n: int, k: float, y0: float, seed: int) -> dl.Dataset:
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 4, n)
    h = y0 * np.exp(-k * t)
    return dl.Dataset.from_frame(pd.DataFrame(
        {"t": t, "x": h + (A + B * h) * rng.standard_normal(n)}))


def test_identifiability_with_a_noise_formula_names_only_the_model_combination():
    """x' = -k1 k2 x determines the product only. With the noise level a formula whose
    parameters are estimated too, the diagnostics still name exactly {k1, k2} as a scaling
    combination (the rank counts the model's columns of the residual Jacobian), the noise
    parameters keep standard errors and are recovered."""
    logp = dict(min=0, transform="log")
    model = dl.HybridModel(states=[x], rhs={x: -k1 * k2 * x},
                           params={k1: dl.Parameter(1.0, **logp), k2: dl.Parameter(0.5, **logp)})
    r = dl.fit(model, data_with_formula_noise(200, 0.6, 2.0, seed=0), y0="estimate",
               loss="gaussian", sigma={"x": "a + b*x"}, noise_params={"a": 0.1, "b": 0.1},
               progress=False)
    d = r.diagnostics
    assert (d.rank, d.n_columns) == (2, 3)
    [c] = d.combinations
    assert c.names == ["k1", "k2"] and c.kind == "scaling"
    assert set(d.notes) == {"k1", "k2"}
    p = r.params
    assert np.isnan(p.loc["k1", "stderr"]) and np.isnan(p.loc["k2", "stderr"])
    assert p.loc["k1", "value"] * p.loc["k2", "value"] == pytest.approx(0.6, rel=0.02)
    for name, true in (("a", A), ("b", B)):
        se = p.loc[name, "stderr"]
        assert p.loc[name, "kind"] == "noise parameter" and 0 < se < 0.5 * true
        assert abs(p.loc[name, "value"] - true) < 3 * se
    s = r.summary()
    assert "rank 2 of 3" in s and "k1 and k2 can be scaled together" in s


def test_bootstrap_refits_the_noise_parameters_of_a_formula():
    """Residual bootstrap of a fit with sigma = a + b*x: the noise parameters are columns of
    the estimates, refitted per replicate (they vary), and their bootstrap spread agrees with
    the fit's standard errors from the Fisher information (within a factor of 2 with 30
    replicates; the decay rate's too)."""
    data = data_with_formula_noise(120, 0.7, 10.0, seed=0)
    boot = dl.bootstrap(decay_model(), data, n=30, loss="gaussian", sigma={"x": "a + b*x"},
                        y0=[10.0], seed=1, progress=False)
    assert {"k", "a", "b"} <= set(boot.names)
    est = boot.estimates
    assert est["success"].all()
    s = boot.summary()
    for name in ("k", "a", "b"):
        assert est[name].nunique() == len(est)
        ratio = s.loc[name, "std"] / boot.fit.params.loc[name, "stderr"]
        assert 0.5 < ratio < 2.0, (name, ratio)
        assert s.loc[name, "ci_lower"] < s.loc[name, "value"] < s.loc[name, "ci_upper"]
