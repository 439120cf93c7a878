"""A fit's files from Python (``result.report``) and from the command line are the same."""

import dataclasses
import json
import sys

import numpy as np
import pandas as pd
import pytest

import dynlearn as dl
from dynlearn.cli import main
from dynlearn.report.tables import write_csv
from dynlearn.results.report import write_report
from dynlearn.testing import DECAY_TOML

PNG = b"\x89PNG\r\n\x1a\n"

DECAY = DECAY_TOML   # the CLI's smallest complete model file

# written by the CLI only: the model file's copy, and the fit's checkpoint
CLI_ONLY = {"model.toml", "checkpoint.json", "checkpoint.npz"}


def decay_frame():
    t = np.linspace(0.0, 4.0, 9)
    rng = np.random.default_rng(0)
    return pd.DataFrame({"t": t, "x": np.exp(-0.8 * t) * (1 + 0.01 * rng.standard_normal(9))})


@pytest.fixture(scope="module")
def decay_result():
    model = dl.HybridModel(["x"], {"x": "-k*x"}, params={"k": 0.5}, name="decay")
    return dl.fit(model, dl.Dataset.from_frame(decay_frame(), time="t"))


@pytest.fixture
def decay_files(tmp_path):
    model = tmp_path / "decay.toml"
    model.write_text(DECAY)
    csv = tmp_path / "decay.csv"
    decay_frame().to_csv(csv, index=False)
    return model, csv


def names(folder):
    return {p.name for p in folder.iterdir()}


def test_report_from_python(decay_result, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "new" / "folder"                  # created when missing
    written = decay_result.report(out)
    assert [p.name for p in written] == ["params.csv", "summary.txt", "predictions.csv",
                                         "result.json", "result.npz", "run.json", "fit.png",
                                         "residuals.png", "loss.png", "report.html"]
    assert names(out) == {p.name for p in written}       # nothing else, no temporary files
    for p in written:
        assert p.parent == out and p.stat().st_size > 0, p.name
    assert (out / "fit.png").read_bytes()[:8] == PNG
    params = pd.read_csv(out / "params.csv", index_col=0)
    assert params.loc["k", "value"] == pytest.approx(decay_result.params.loc["k", "value"],
                                                      rel=1e-9)
    assert (out / "summary.txt").read_text() == decay_result.summary() + "\n"
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    assert "dynlearn fit: decay" in html and "model file" not in html
    # the two bands, told apart, and where the noise level came from
    assert "confidence band of the mean" in html and "prediction band" in html
    assert "residual standard deviation" in html
    # figures shown at one scale (their type the size of the text), not stretched to the page
    assert html.count('style="width: ') == 3
    pred = pd.read_csv(out / "predictions.csv")
    assert np.all(pred["x_pred_upper"] - pred["x_pred_lower"]
                  > pred["x_upper"] - pred["x_lower"])    # the noise widens the band
    run = json.loads((out / "run.json").read_text())
    assert run["model_file"] is None and run["data_file"] is None and run["command"] is None
    assert run["success"] == decay_result.success
    pd.testing.assert_frame_equal(dl.load_result(out / "result.json").params,
                                  decay_result.params)


def test_report_options(decay_result, tmp_path, decay_files):
    model, csv = decay_files
    out = tmp_path / "out"
    written = write_report(decay_result, out, plots=False, model_file=model, data_file=csv,
                           command=["dynlearn", "fit"])
    assert [p.name for p in written] == ["params.csv", "summary.txt", "predictions.csv",
                                         "result.json", "result.npz", "model.toml", "run.json"]
    assert (out / "model.toml").read_text() == DECAY
    run = json.loads((out / "run.json").read_text())
    assert run["model_file"] == str(model.resolve()) and run["data_file"] == str(csv.resolve())
    assert run["command"] == ["dynlearn", "fit"]
    with pytest.raises(dl.OptionError, match="no data attached"):
        write_report(dataclasses.replace(decay_result, data=None), tmp_path / "none")


def test_report_without_matplotlib(decay_result, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.warns(UserWarning, match=r"no figures or report: .*dynlearn\[plot\]"):
        written = decay_result.report(tmp_path)
    assert [p.name for p in written][-1] == "run.json"
    assert not (tmp_path / "fit.png").exists() and not (tmp_path / "report.html").exists()


def test_cli_writes_the_python_report(decay_files, tmp_path):
    """`dynlearn fit` leaves the files of result.report plus the model file and the
    checkpoint; the tables of the saved result's report are the CLI's, byte for byte."""
    pytest.importorskip("matplotlib")
    model, csv = decay_files
    cli = tmp_path / "cli"
    assert main(["fit", str(model), str(csv), "--out", str(cli), "-q"]) == 0
    py = tmp_path / "py"
    written = dl.load_result(cli / "result.json").report(py)
    assert names(cli) - CLI_ONLY == names(py) == {p.name for p in written}
    assert "model.toml" in names(cli)
    for name in ("params.csv", "predictions.csv"):
        assert (py / name).read_bytes() == (cli / name).read_bytes(), name


def test_write_csv(tmp_path):
    frame = pd.DataFrame({"a": [1 / 3, 2.0]}, index=["p", "q"])
    write_csv(frame, tmp_path / "t.csv", index=True)
    assert (tmp_path / "t.csv").read_text() == ",a\np,0.3333333333\nq,2\n"
    assert names(tmp_path) == {"t.csv"}


# --- figures, one rendering test each ---------------------------------------------------------
def legend_texts(ax):
    leg = ax.get_legend()
    return [t.get_text() for t in leg.get_texts()] if leg is not None else []


def rendered(fig, tmp_path, name="f.png"):
    from dynlearn.report.figures import save_figure
    save_figure(fig, tmp_path / name)
    data = (tmp_path / name).read_bytes()
    assert data[:8] == PNG and len(data) > 5000          # drawn, not an empty canvas
    return data


def test_fit_figure_bands_labels_and_units(tmp_path):
    pytest.importorskip("matplotlib")
    from dynlearn.report import figures
    t = np.linspace(0, 10, 11)
    data = pd.DataFrame({"t": t, "x": np.sin(t)})
    tt = np.linspace(0, 10, 50)
    pred = pd.DataFrame({"t": tt, "x": np.sin(tt), "x_lower": np.sin(tt) - 0.1,
                         "x_upper": np.sin(tt) + 0.1, "x_pred_lower": np.sin(tt) - 0.3,
                         "x_pred_upper": np.sin(tt) + 0.3})
    fig = figures.fit_figure(data, pred, ["x"], "t", bands={"x": ("x_lower", "x_upper")},
                             pred_bands={"x": ("x_pred_lower", "x_pred_upper")},
                             labels={"t": "t [s]", "x": "x [V]"})
    ax = fig.axes[0]
    assert ax.get_xlabel() == "t [s]" and ax.get_ylabel() == "x [V]"
    assert legend_texts(ax) == [figures.PREDICTION_LABEL, figures.CONFIDENCE_LABEL, "model",
                                "data"]
    assert "confidence" in figures.CONFIDENCE_LABEL and "prediction" in figures.PREDICTION_LABEL
    # whole-number times: whole-number ticks
    from matplotlib.ticker import MaxNLocator
    assert isinstance(ax.xaxis.get_major_locator(), MaxNLocator)
    assert all(v == int(v) for v in ax.get_xticks())
    rendered(fig, tmp_path)


def test_long_records_are_points_not_stems(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.collections import LineCollection

    from dynlearn.report import figures
    rng = np.random.default_rng(0)
    for n, stems in ((figures.LONG_RECORD - 1, True), (1000, False)):
        t = np.linspace(0.0, 100.0, n)
        fig = figures.residuals_figure(pd.DataFrame({"t": t, "x": rng.standard_normal(n)}),
                                       ["x"], "t")
        ax = fig.axes[0]
        assert any(isinstance(c, LineCollection) for c in ax.collections) == stems, n
        line = ax.get_lines()[-1]
        assert len(line.get_xdata()) == n
        assert (line.get_markersize() < 2.5) == (not stems)
        rendered(fig, tmp_path)
        ax = figures.plot_observable(t, rng.standard_normal(n))
        data = ax.get_lines()[-1]
        assert (data.get_markerfacecolor() == "white") == stems   # open circles when short


def test_loss_figure_stages_and_total(tmp_path):
    pytest.importorskip("matplotlib")
    from dynlearn.report import figures
    hist = [(1, 100.0), (5, 50.0), (40, 10.0), (60, 2.0), (70, 1.5)]
    fig = figures.loss_figure(hist, stages=[(0, "Adam"), (50, "LevenbergMarquardt")],
                              total=90)
    ax = fig.axes[0]
    assert legend_texts(ax) == ["Adam", "LevenbergMarquardt"]
    assert ax.get_xlabel() == figures.EVALUATIONS_LABEL
    xs = np.concatenate([ln.get_xdata() for ln in ax.get_lines()])
    assert xs.min() == 1 and xs.max() == 90          # from the first to the last evaluation
    assert all(v == int(v) for v in ax.get_xticks())
    rendered(fig, tmp_path)
    ax = figures.plot_loss(hist)                         # no stages: one staircase
    assert legend_texts(ax) == ["best loss"]


def test_learned_term_panels(tmp_path):
    pytest.importorskip("matplotlib")
    from dynlearn.report import figures
    x = np.linspace(-1, 1, 30)
    X, Y = np.meshgrid(x, x)
    Z = X * Y
    v = np.column_stack([np.cos(np.linspace(0, 6, 40)), np.sin(np.linspace(0, 6, 40))])
    ax = figures.plot_learned_term(v, v[:, 0] * v[:, 1], ["x [V]", "y [V]"], "nn[0]",
                                   grid=(X, Y, Z), recovered=1.01 * Z)
    cbar = ax.figure.axes[-1]
    assert cbar.get_ylabel() == "network nn[0]"
    texts = legend_texts(ax)
    assert "fitted trajectory" in texts and "nn[0] = 0" in texts
    assert "recovered equation (contours)" in texts
    assert ax.get_xlabel() == "x [V]"
    rendered(ax.figure, tmp_path)
    ax = figures.plot_learned_term(x[:, None], -x, ["x"], "nn[0]", grid=(x, -x),
                                   recovered=-0.9 * x, recovered_label="nn[0] = -0.9*x")
    assert legend_texts(ax) == ["network", "nn[0] = -0.9*x", "along the fit"]


def test_learned_terms_figure_overlays_the_recovered_equation(tmp_path):
    pytest.importorskip("matplotlib")
    import sympy as sp

    from dynlearn.report import figures
    from dynlearn.testing import hybrid_decay_model
    model = hybrid_decay_model()
    traj = dl.simulate(model, np.linspace(0, 2, 30), [1.0]).to_frame()
    x = sp.Symbol("x")
    fig = figures.learned_terms_figure(model, model.theta0, traj,
                                       recovered={"nn[0]": -0.05 * x})
    ax = fig.axes[0]
    (rec_line,) = [ln for ln in ax.get_lines() if ln.get_label() == "recovered equation"]
    np.testing.assert_allclose(rec_line.get_ydata(), -0.05 * rec_line.get_xdata())
    rendered(fig, tmp_path)
    # an equation in a symbol the grid does not span is not drawn
    V, _, grid = figures.network_output_samples(model, model.theta0, model.networks[0], 0,
                                                traj)
    assert figures.recovered_on_samples(model, model.theta0, model.networks[0],
                                        sp.Symbol("t") * x, V, grid, traj) is None


def test_no_band_gives_the_true_reason():
    """k1 and k2 only appear as a product: the data cannot tell them apart, the covariance
    is not finite, and the figure and the report say so (not 'more parameters than data')."""
    pytest.importorskip("matplotlib")
    from dynlearn.results.prediction import band_reason
    t = np.linspace(0.0, 4.0, 9)
    frame = pd.DataFrame({"t": t, "x": np.exp(-0.8 * t)
                          * (1 + 0.01 * np.random.default_rng(1).standard_normal(9))})
    model = dl.HybridModel(["x"], {"x": "-k1*k2*x"}, params={"k1": 0.5, "k2": 1.0})
    r = dl.fit(model, dl.Dataset.from_frame(frame, time="t"), progress=False)
    why = band_reason(r)
    assert why.startswith("the standard errors of k1, k2 are n/a (not determined by the data")
    ax = r.plot("fit")
    assert any(f"no uncertainty band: {why[:40]}" in t.get_text() for t in ax.texts)
    assert not any("band" in t for t in legend_texts(ax))


@pytest.mark.parametrize("optimizer", ["staged", "shooting"])
def test_loss_plot_shows_every_stage_from_the_first_evaluation(optimizer, tmp_path):
    """A staged or multiple-shooting fit records where each stage began (and multiple
    shooting its own objective from its first evaluation); the loss plot names every stage,
    its x axis runs to the total the summary counts; save/load keeps both."""
    pytest.importorskip("matplotlib")
    from dynlearn.report import figures
    t = np.linspace(0.0, 4.0, 21)
    frame = pd.DataFrame({"t": t, "x": np.exp(-0.8 * t)
                          * (1 + 0.01 * np.random.default_rng(0).standard_normal(21))})
    opt = (dl.Staged([dl.Adam(20, lr=0.05), dl.LevenbergMarquardt()])
           if optimizer == "staged" else dl.MultipleShooting())
    model = dl.HybridModel(["x"], {"x": "-k*x"}, params={"k": 0.5})
    r = dl.fit(model, dl.Dataset.from_frame(frame, time="t"), optimizer=opt, progress=False)
    first = "Adam" if optimizer == "staged" else "MultipleShooting"
    assert [label for _, label in r.stages] == [first, "LevenbergMarquardt"]
    assert r.stages[0][0] == 0 and 0 < r.stages[1][0] < r.nfev + r.njev + r.ngev
    total = r.nfev + r.njev + r.ngev
    assert f"evaluations: {total} (" in r.summary()
    ax = r.plot("loss")
    texts = legend_texts(ax)
    assert first in texts and "LevenbergMarquardt" in texts
    xs = np.concatenate([ln.get_xdata() for ln in ax.get_lines()])
    assert xs.max() == total
    if optimizer == "shooting":
        # the segments' own objective, from the first evaluation on
        assert r.stage_history and r.stage_history[0][0] <= 2
        assert "MultipleShooting: its own objective" in texts and xs.min() <= 2
    else:
        assert not r.stage_history and xs.min() == 1
    r.save(tmp_path / "r")
    r2 = dl.load_result(tmp_path / "r")
    assert r2.stages == r.stages and r2.stage_history == r.stage_history
    rendered(ax.figure, tmp_path)
    assert figures.EVALUATIONS_LABEL == ax.get_xlabel()


def test_band_reason_without_covariance(decay_result):
    from dynlearn.results.prediction import band_reason
    assert band_reason(decay_result) == ""
    diag = dataclasses.replace(decay_result.diagnostics, uncertainty="no degrees of freedom")
    r = dataclasses.replace(decay_result, cov_x=None, diagnostics=diag)
    assert band_reason(r) == "the standard errors cannot be computed: no degrees of freedom"
    assert "x_lower" not in r.predict(np.linspace(0, 4, 5)).columns
