"""An explicit start time (issue #14): an experiment may start before its first
measurement (PEtab starts at t = 0); initial states are the states at that start."""

import numpy as np
import pandas as pd
import pytest
import sympy as sp

import dynlearn as dl
from dynlearn.io import parse_model_text
from dynlearn.testing import lotka_volterra_fit_model, lotka_volterra_model

TOL = dict(rtol=1e-10, atol=1e-10)
Y0 = [1.0, 0.5]


def later_data(start: float = 1.0):
    """Noise-free LV data at t in [start, 6] of a solve from ``Y0`` at t = 0."""
    model = lotka_volterra_model()
    t = np.linspace(0.0, 6.0, 25)
    sol = dl.simulate(model, t, Y0, **TOL)
    keep = t >= start
    frame = pd.DataFrame({"t": t[keep], "x": sol.y[keep, 0], "y": sol.y[keep, 1]})
    return model, dl.Dataset.from_frame(frame)


def test_default_start_is_the_first_row():
    _, data = later_data()
    assert data[0].t0 is None and data[0].start == 1.0
    result = dl.fit(lotka_volterra_fit_model(), data, **TOL)
    # from the first row the model fits (it is the same system), whatever t0 meant
    assert result.success


def test_known_state_at_t0_recovers_the_parameters():
    truth, data = later_data()
    start = lotka_volterra_fit_model()
    result = dl.fit(start, data, t0=0.0, y0=Y0, **TOL)
    np.testing.assert_allclose(result.params.loc[["alpha", "beta", "gamma", "delta"], "value"],
                               truth.theta0, rtol=1e-6)
    # the wrong start (the first row) with the same y0 fits worse by far
    wrong = dl.loss(truth, data, y0=Y0, **TOL)
    assert wrong > 1e3 * max(result.loss, 1e-12)
    # the start is kept with the data: refits, the loss and saved results use it
    assert result.data[0].t0 == 0.0
    assert dl.loss(result.model, result.data, y0=Y0, **TOL) == pytest.approx(result.loss,
                                                                              abs=1e-10)


def test_estimated_state_is_the_state_at_t0():
    truth, data = later_data()
    result = dl.fit(lotka_volterra_fit_model(), data, t0=0.0, y0="estimate", **TOL)
    y0 = result.params.loc[["y0[x]", "y0[y]"], "value"].to_numpy()
    np.testing.assert_allclose(y0, Y0, rtol=1e-5)


def test_start_per_experiment_and_in_the_dataset():
    _, data = later_data()
    two = dl.Dataset([data[0], dl.Experiment("b", data[0].t, dict(data[0].columns))])
    both = two.with_start({"data": 0.0})
    assert both["data"].t0 == 0.0 and both["b"].t0 is None and two["data"].t0 is None
    # the loss of experiment "data" from Y0 at 0 is zero; "b" starts at its first row
    model = lotka_volterra_model()
    assert dl.loss(model, both.with_start({"b": 0.0}), y0=Y0, **TOL) < 1e-12
    with pytest.raises(dl.DataError, match=r"t0 names experiment\(s\) \['c'\]"):
        two.with_start({"c": 0.0})
    with pytest.raises(dl.DataError, match=r"t0=2 of experiment 'data' must be finite and not "
                                           r"after its first data time t=1"):
        two.with_start(2.0)
    # an experiment with a start is checked like any other
    with pytest.raises(dl.DataError, match=r"column 'x' of experiment 'e' has 1 values"):
        dl.Experiment("e", np.array([1.0, 2.0]), {"x": [1.0]}, t0=0.0)
    assert dl.Experiment("e", np.array([1.0, 2.0]), {"x": [1.0, 2.0]}, t0=0).t0 == 0.0


def test_first_row_cannot_be_the_state_at_an_earlier_start():
    _, data = later_data()
    with pytest.raises(dl.DataError, match=r"starts at t0=0, before its first data row \(t=1\)"):
        dl.fit(lotka_volterra_fit_model(), data, t0=0.0)
    x, y = sp.symbols("x y")
    with pytest.raises(dl.DataError, match=r"state 'y'.* \(nor at its start t0=0\)"):
        dl.fit(lotka_volterra_fit_model(), data, t0=0.0, y0={"x": 1.0})


def test_model_file_start(tmp_path):
    _, data = later_data()
    data.to_frame().to_csv(tmp_path / "d.csv", index=False)
    text = """
[model]
states = ["x", "y"]
[model.equations]
x = "a*x - b*x*y"
y = "c*x*y - d*y"
[model.params]
a = 1.0
b = 1.0
c = 1.0
d = 1.5
[data]
file = "d.csv"
t0 = 0
"""
    mf = parse_model_text(text, source=tmp_path / "m.toml")
    assert mf.read_data()[0].t0 == 0.0
    mf = parse_model_text(text.replace("t0 = 0", "t0 = { data = 0.5 }"),
                          source=tmp_path / "m.toml")
    assert mf.read_data()[0].t0 == 0.5
    mf = parse_model_text(text.replace("t0 = 0", "t0 = 3"), source=tmp_path / "m.toml")
    with pytest.raises(dl.DataError, match=r"\[data\] t0: the start time t0=3"):
        mf.read_data()
    with pytest.raises(dl.ModelError, match=r"\[data\] t0: expected a number"):
        parse_model_text(text.replace("t0 = 0", 't0 = "zero"'), source=tmp_path / "m.toml")


def test_saved_result_keeps_the_start(tmp_path):
    _, data = later_data()
    result = dl.fit(lotka_volterra_fit_model(), data, t0=0.0, y0=Y0, **TOL)
    result.save(tmp_path / "fit")
    back = dl.load_result(tmp_path / "fit")
    assert back.data[0].t0 == 0.0
    assert back.loss == pytest.approx(result.loss, abs=1e-12)


def test_plots_and_predictions_start_at_t0(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    _, data = later_data()
    result = dl.fit(lotka_volterra_fit_model(), data, t0=0.0, y0=Y0, **TOL)
    ax = result.plot("fit", observable="x")
    starts = [line.get_xdata()[0] for line in ax.lines if len(line.get_xdata()) > 20]
    assert starts and min(starts) == 0.0
    pred = result.predict(np.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(pred[["x", "y"]].to_numpy()[0], Y0, rtol=1e-9)
