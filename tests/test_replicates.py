"""Replicates: measurements repeated at one time in one experiment (issue #14).

Each replicate is a measurement of its own (its own row and residual); the model is solved
once per distinct time."""

import numpy as np
import pandas as pd
import pytest

import dynlearn as dl
from dynlearn.testing import lotka_volterra_fit_model, lotka_volterra_model

TOL = dict(rtol=1e-10, atol=1e-10)


def replicated(seed: int = 0):
    """LV data at 11 times, every third time measured twice (both observables), plus the
    same data with the replicates averaged into one row of twice the weight
    (``sigma / sqrt(2)``)."""
    model = lotka_volterra_model()
    t = np.linspace(0.0, 5.0, 11)
    sol = dl.simulate(model, t, [1.0, 0.5], **TOL)
    rng = np.random.default_rng(seed)
    rows, mean_rows = [], []
    for i, ti in enumerate(t):
        reps = 2 if i % 3 == 1 else 1
        vals = [sol.y[i] * (1 + 0.05 * rng.standard_normal(2)) for _ in range(reps)]
        for v in vals:
            rows.append((ti, *v, 0.1, 0.1))
        s = 0.1 / np.sqrt(reps)
        mean_rows.append((ti, *np.mean(vals, axis=0), s, s))
    cols = ["t", "x", "y", "x_sigma", "y_sigma"]
    return (dl.Dataset.from_frame(pd.DataFrame(rows, columns=cols)),
            dl.Dataset.from_frame(pd.DataFrame(mean_rows, columns=cols)))


def test_replicate_rows_are_read_as_rows():
    rep, mean = replicated()
    assert len(rep[0]) == 15 and len(mean[0]) == 11
    assert np.count_nonzero(np.diff(rep[0].t) == 0) == 4


def test_replicates_equal_their_mean_with_doubled_weight():
    """For least squares, sum_k (y_k - h)^2 = 2 (mean - h)^2 + const: the same gradient at
    every point, and so the same fit and the same standard errors."""
    rep, mean = replicated()
    model = lotka_volterra_fit_model()
    theta = model.theta0
    consts = 0.0
    for e in rep:
        for c in ("x", "y"):
            v = pd.Series(e.columns[c]).groupby(e.t).transform("mean").to_numpy()
            consts += np.sum(((e.columns[c] - v) / 0.1) ** 2)
    for sens in (dl.ForwardSensitivity(), dl.Adjoint(), dl.FiniteDifference(order=4)):
        f1, g1 = dl.loss_and_grad(model, rep, theta, sensitivity=sens, **TOL)
        f2, g2 = dl.loss_and_grad(model, mean, theta, sensitivity=sens, **TOL)
        assert f1 == pytest.approx(f2 + consts, rel=1e-12)
        np.testing.assert_allclose(g1, g2, rtol=1e-11)
    r1 = dl.fit(model, rep, **TOL)
    r2 = dl.fit(model, mean, **TOL)
    assert r1.success and r2.success
    np.testing.assert_allclose(r1.params["value"], r2.params["value"], rtol=1e-6)
    np.testing.assert_allclose(r1.params["stderr"], r2.params["stderr"], rtol=1e-5)
    assert r1.loss == pytest.approx(r2.loss + consts, rel=1e-8)
    # one residual per row, replicates included
    res = r1.residuals()
    assert len(res) == 2 * 15
    assert res[res["observable"] == "x"][rep.time_name].tolist() == rep[0].t.tolist()


def test_long_format_replicates_match_the_wide_table(tmp_path):
    rep, _ = replicated()
    wide = rep.to_frame()
    long = wide.melt(id_vars="t", value_vars=["x", "y"], var_name="observable")
    long = long.sort_values("t", kind="stable")
    from_long = dl.Dataset.from_frame(long, time="t")
    np.testing.assert_array_equal(from_long[0].t, rep[0].t)
    for c in ("x", "y"):
        np.testing.assert_array_equal(from_long[0].columns[c], rep[0].columns[c])
    # a replicate of one quantity only: the other is not measured in that row
    one = dl.Dataset.from_frame(pd.DataFrame({"t": [0, 1, 1, 2], "observable": ["x"] * 4,
                                              "value": [1.0, 2.0, 2.2, 3.0]}))
    assert one[0].t.tolist() == [0.0, 1.0, 1.0, 2.0]
    assert one[0].columns["x"].tolist() == [1.0, 2.0, 2.2, 3.0]


def test_csv_with_replicates_round_trip(tmp_path):
    rep, _ = replicated()
    path = tmp_path / "rep.csv"
    rep.to_frame().to_csv(path, index=False)
    back = dl.Dataset.from_csv(path)
    np.testing.assert_array_equal(back[0].t, rep[0].t)
    for c in rep[0].columns:
        np.testing.assert_array_equal(back[0].columns[c], rep[0].columns[c])
    # groups with replicates
    frame = pd.concat([rep.to_frame().assign(run="a"), rep.to_frame().assign(run="b")])
    frame.to_csv(path, index=False)
    two = dl.Dataset.from_csv(path, group="run")
    assert [len(e) for e in two] == [15, 15]


def test_decreasing_times_are_still_refused():
    with pytest.raises(dl.DataError, match=r"decreasing time in experiment 'data': t=0.5 at "
                                           r"row 3 follows t=1.0 at row 2"):
        dl.Dataset.from_frame(pd.DataFrame({"t": [0.0, 1.0, 0.5], "x": [1.0, 2.0, 3.0]}))
    with pytest.raises(dl.DataError, match="must be increasing"):
        dl.Experiment("e", np.array([0.0, 1.0, 0.5]), {"x": np.ones(3)})
    # a simulation's output times must still be distinct
    with pytest.raises(dl.DataError, match="strictly increasing"):
        dl.simulate(lotka_volterra_model(), [0.0, 1.0, 1.0], [1.0, 0.5])


def test_inputs_at_a_repeated_time_must_agree():
    import sympy as sp
    x, u, k = sp.symbols("x u k")
    model = dl.HybridModel(states=[x], rhs={x: -k * x + u}, params={k: 0.5}, inputs=[u])
    ok = dl.Dataset.from_frame(pd.DataFrame({"t": [0, 1, 1, 2], "x": [1.0, 0.9, 0.95, 0.8],
                                             "u": [0.1, 0.2, 0.2, 0.3]}))
    assert np.isfinite(dl.loss(model, ok))
    bad = dl.Dataset.from_frame(pd.DataFrame({"t": [0, 1, 1, 2], "x": [1.0, 0.9, 0.95, 0.8],
                                              "u": [0.1, 0.2, 0.25, 0.3]}))
    with pytest.raises(dl.DataError, match=r"input 'u' has two values at t=1 \(0.2 and 0.25, "
                                           r"rows 2 and 3\)"):
        dl.loss(model, bad)


def test_multiple_shooting_with_replicates():
    """Pieces of multiple shooting may start or end inside a run of replicates."""
    rep, mean = replicated()
    model = lotka_volterra_fit_model()
    r_ms = dl.fit(model, rep, optimizer=dl.MultipleShooting(), **TOL)
    r_ss = dl.fit(model, rep, **TOL)
    np.testing.assert_allclose(r_ms.params["value"], r_ss.params["value"], rtol=1e-4)


def test_plots_and_predictions_with_replicates(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    rep, _ = replicated()
    result = dl.fit(lotka_volterra_fit_model(), rep, **TOL)
    for kind in ("fit", "residuals"):
        ax = result.plot(kind, observable="y")
        assert ax.lines or ax.collections
    pred = result.predict(np.linspace(0, 5, 21))
    assert np.all(np.isfinite(pred["x"]))
    paths = result.report(tmp_path / "out")
    assert any(str(p).endswith("report.html") for p in paths)


def test_sindy_baseline_refuses_replicates():
    rep, mean = replicated()
    frame = rep.to_frame()[["t", "x", "y"]]
    with pytest.raises(dl.DataError, match="repeats a time .*average the replicates first"):
        dl.sindy_baseline(dl.Dataset.from_frame(frame), dl.polynomial_library(2))
