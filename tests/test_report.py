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
