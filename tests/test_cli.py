"""The dynlearn command line, end to end (small budgets) and every user-error path."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import dynlearn as dl
from dynlearn.cli import main
from dynlearn.testing import DECAY_TOML as DECAY

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "models"
PKG_DATA = Path(dl.__file__).with_name("bundled")
LYNX_CSV = PKG_DATA / "models" / "lynx_hare.csv"

HAS_FIT = getattr(dl, "fit", None) is not None
HAS_RECOVER = getattr(dl, "recover", None) is not None
needs_fit = pytest.mark.skipif(not HAS_FIT, reason="dl.fit is not available yet")
needs_recover = pytest.mark.skipif(not HAS_RECOVER, reason="dl.recover is not available yet")

def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# --- help and usage ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["--help"], ["fit", "--help"], ["simulate", "--help"],
                                  ["recover", "--help"], ["check-gradients", "--help"],
                                  ["demo", "--help"]])
def test_help_everywhere(capsys, argv):
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert "usage: dynlearn" in out


def test_no_command_prints_help(capsys):
    code, _, err = run(capsys)
    assert code == 2 and "usage:" in err


@pytest.mark.parametrize("argv, match", [
    (["simulate", "m.toml", "--bogus"], (r"unrecognized arguments: --bogus \(see 'dynlearn "
                                        r"simulate --help'\)")),
    (["fit"], "required: MODEL.toml"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["demo", "--seed", "x"], "argument --seed: expected an integer >= 0, got 'x'"),
    (["check-gradients", "m.toml", "--rtol", "tight"],
     "argument --rtol: expected a positive number, got 'tight'"),
])
def test_bad_options(capsys, argv, match):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert re.search(match, one_error_line(err))


# --- simulate ---------------------------------------------------------------------------------
def test_simulate_to_stdout(capsys, decay):
    model, _ = decay
    code, out, err = run(capsys, "simulate", model)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == "t,x"
    assert len(lines) == 6
    assert float(lines[-1].split(",")[1]) == pytest.approx(np.exp(-1.0), rel=1e-5)


def test_simulate_to_file_with_options(capsys, decay, tmp_path):
    model, _ = decay
    out = tmp_path / "sim.csv"
    code, _, err = run(capsys, "simulate", model, "--t", "0:1:0.25", "--y0", "x=2",
                       "--set", "k=1.0", "--method", "DOP853", "--rtol", "1e-10",
                       "--atol", "1e-12", "--out", out, "--quiet")
    assert code == 0, err
    assert err == ""
    df = pd.read_csv(out)
    np.testing.assert_allclose(df["x"], 2 * np.exp(-df["t"]), rtol=1e-8)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp files


@pytest.mark.parametrize("example", ["lynx_hare", "sir_influenza", "lv_ude"])
def test_simulate_examples(capsys, example, tmp_path):
    out = tmp_path / "s.csv"
    code, _, err = run(capsys, "simulate", EXAMPLES / f"{example}.toml", "--t", "0:2:0.5",
                       "--out", out)
    assert code == 0, err
    assert len(pd.read_csv(out)) == 5


@pytest.mark.parametrize("extra, match", [
    (["--t", "2:1:0.1"], r"--t: '2:1:0.1': need stop > start"),
    (["--y0", "y=1"], r"--y0: give one value per state \['x'\]; unknown \['y'\]; missing"),
    (["--y0", "x"], r"--y0: expected NAME=VALUE, got 'x'"),
    (["--set", "q=1"], r"--set: 'q' is not a parameter"),
    (["--method", "Euler"], r"method='Euler' is not a solve_ivp method"),
    (["--params", "nope.json"], r"nope\.json: no such file"),
    (["--out", "/nonexistent/dir/x.csv"], r"the folder /nonexistent/dir does not exist"),
])
def test_simulate_errors(capsys, decay, extra, match):
    model, _ = decay
    code, _, err = run(capsys, "simulate", model, *extra)
    assert code == 2
    assert re.search(match, one_error_line(err))


def test_simulate_needs_times_and_y0(capsys, tmp_path):
    m = tmp_path / "m.toml"
    m.write_text('[model]\nstates=["x"]\nequations={x="-x"}\n')
    code, _, err = run(capsys, "simulate", m)
    assert code == 2 and "no output times" in one_error_line(err)
    code, _, err = run(capsys, "simulate", m, "--t", "0:1:0.5")
    assert code == 2 and "no initial state: pass --y0 x=..." in one_error_line(err)


# --- user errors: one line, exit 2, no traceback; --debug shows it ---------------------------
@pytest.mark.parametrize("text, match", [
    ("[model\n", r"m\.toml, line 1, column \d+: malformed TOML"),
    ('[model]\nstates=["x"]\nequations={x="-k*x"}\n', (r"m\.toml, line 3: equation of 'x': "
                                                      r"unknown name 'k'")),
    ('[model]\nstates=["x"]\nequations={x="__import__(\'os\').system(\'touch PWNED\')"}\n',
     r"line 3: equation of 'x': attribute access \('\.system'\) is not allowed"),
    ('[model]\nstates=["x"]\nequations={x="x.__class__"}\n', r"attribute access"),
    ('[model]\nstates=["x"]\nequations={x="(lambda: 1)()"}\n', r"lambda"),
])
def test_model_file_errors(capsys, tmp_path, monkeypatch, text, match):
    monkeypatch.chdir(tmp_path)
    m = tmp_path / "m.toml"
    m.write_text(text)
    for cmd in (["simulate", m, "--t", "0:1:0.5"], ["check-gradients", m, LYNX_CSV],
                ["fit", m, LYNX_CSV, "--out", tmp_path / "out"]):
        code, _, err = run(capsys, *cmd)
        assert code == 2
        assert re.search(match, one_error_line(err))
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "out" / "params.csv").exists()


def test_missing_model_file(capsys, tmp_path):
    code, _, err = run(capsys, "simulate", tmp_path / "nope.toml")
    assert code == 2
    assert one_error_line(err) == f"error: {tmp_path / 'nope.toml'}: no such file"


@pytest.mark.parametrize("csv, match", [
    ("t,x\n0,1\n1,oops\n", r"column 'x', row 2: 'oops' is not a number"),
    ("t,x\n1,1\n0,2\n", r"decreasing time in experiment 'data': t=0.0 at row 2"),
    ("time,x\n0,1\n", r"no column 't'"),
    ("", r"the file is empty"),
])
def test_csv_errors(capsys, decay, tmp_path, csv, match):
    model, _ = decay
    bad = tmp_path / "bad.csv"
    bad.write_text(csv)
    code, _, err = run(capsys, "check-gradients", model, bad)
    assert code == 2
    line = one_error_line(err)
    assert str(bad) in line
    assert re.search(match, line)


def test_missing_csv(capsys, decay, tmp_path):
    model, _ = decay
    code, _, err = run(capsys, "check-gradients", model, tmp_path / "none.csv")
    assert code == 2 and "none.csv: no such file" in one_error_line(err)


def test_debug_shows_traceback(decay, tmp_path):
    model, _ = decay
    with pytest.raises(dl.DataError):
        main(["check-gradients", str(model), str(tmp_path / "none.csv"), "--debug"])


# --- check-gradients --------------------------------------------------------------------------
def test_check_gradients(capsys, decay):
    model, csv = decay
    code, out, err = run(capsys, "check-gradients", model, csv)
    assert code == 0, out + err
    assert "forward" in out and "adjoint" in out and "finite-diff" in out
    assert "OK:" in out


def test_check_gradients_hybrid_subsamples(capsys):
    code, out, err = run(capsys, "check-gradients", EXAMPLES / "lv_ude.toml",
                         "--fd-max", "6", "--rows", "4")
    assert code == 0, out + err
    assert "finite differences on 6 of" in out


def test_check_gradients_reports_disagreement(capsys, decay):
    model, csv = decay
    code, out, _ = run(capsys, "check-gradients", model, csv, "--tol", "0")
    assert code == 1 and "DISAGREE" in out


def test_finite_difference_derivatives():
    """The finite differences check-gradients uses: a subset of coordinates, the gradient
    and the diagonal curvature, exact for polynomials of low degree."""
    def f(v):
        return v[0] ** 3 + 2.0 * v[1] ** 2 + v[2]
    x = np.array([2.0, -1.5, 7.0])
    for order, rtol in ((2, 1e-6), (4, 1e-9)):
        fd = dl.FiniteDifference(step=1e-3, order=order)
        f0, g, c = fd.derivatives(f, x, indices=[1, 0], curvature=True)
        assert f0 == f(x)
        np.testing.assert_allclose(g, [-6.0, 12.0], rtol=rtol)
        np.testing.assert_allclose(c, [4.0, 12.0], rtol=1e-5)
        _, g_all, c_none = fd.derivatives(f, x)
        np.testing.assert_allclose(g_all, [12.0, -6.0, 1.0], rtol=rtol)
        assert c_none is None


# --- python -m dynlearn -------------------------------------------------------------------------
def test_python_dash_m(decay, tmp_path):
    model, _ = decay
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "dynlearn", "simulate", str(model)],
                       capture_output=True, text=True, cwd=tmp_path, env=env, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("t,x")
    r = subprocess.run([sys.executable, "-m", "dynlearn", "simulate", "missing.toml"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, check=False)
    assert r.returncode == 2
    assert r.stderr == "error: missing.toml: no such file\n"


# --- fit, demo, resume, atomic outputs ------------------------------------------------------
UDE = """\
[model]
name = "decay-ude"
states = ["x"]
equations = { x = "-k*x + nn[0]" }

[model.params]
k = { value = 0.5, min = 0.0, transform = "log" }

[model.networks.nn]
inputs = ["x"]
outputs = 1
hidden = [3]
activation = "tanh"
seed = 1
scale = 0.1

[data]
time = "t"

[fit]
loss = "ls"
maxiter = 5
"""

PNG = b"\x89PNG\r\n\x1a\n"


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


@needs_fit
def test_fit_end_to_end(capsys, decay, tmp_path):
    model, csv = decay
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "fit", model, csv, "--out", out, "--seed", "0")
    assert code == 0, err
    for name in ("params.csv", "summary.txt", "predictions.csv", "result.json", "result.npz",
                 "model.toml", "run.json", "fit.png", "residuals.png", "loss.png",
                 "report.html"):
        assert (out / name).stat().st_size > 0, name
    for png in ("fit.png", "residuals.png", "loss.png"):
        assert (out / png).read_bytes()[:8] == PNG
    assert not (out / "learned_terms.png").exists()      # no network
    assert no_temp_files(out)
    params = pd.read_csv(out / "params.csv", index_col=0)
    assert params.loc["k", "value"] == pytest.approx(0.8, rel=0.05)
    assert {"value", "stderr"} <= set(params.columns)
    res = dl.load_result(out / "result.json")
    assert res.params.loc["k", "value"] == pytest.approx(params.loc["k", "value"])
    pred = pd.read_csv(out / "predictions.csv")
    assert {"t", "x", "x_lower", "x_upper"} <= set(pred.columns)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    assert "<script" not in html and 'src="http' not in html
    assert "Fit of decay" in (out / "summary.txt").read_text()
    assert "wrote params.csv" in stdout


@needs_fit
def test_fit_quiet_and_data_from_model_file(capsys, decay, tmp_path):
    model, csv = decay
    model.write_text(DECAY.replace('time = "t"', f'time = "t"\nfile = "{csv.name}"'))
    out = tmp_path / "q"
    code, stdout, err = run(capsys, "fit", model, "--out", out, "--quiet", "--no-plots")
    assert code == 0
    assert err == ""
    assert stdout.startswith("wrote params.csv")
    assert not (out / "fit.png").exists() and (out / "result.json").exists()


@needs_fit
def test_fit_hybrid_writes_learned_terms(capsys, decay, tmp_path):
    _, csv = decay
    model = tmp_path / "ude.toml"
    model.write_text(UDE)
    out = tmp_path / "ude"
    code, _, err = run(capsys, "fit", model, csv, "--out", out, "-q")
    assert code == 3, err      # maxiter = 5 stops short of convergence: exit 3, results written
    assert (out / "learned_terms.png").read_bytes()[:8] == PNG
    assert "data:image/png;base64," in (out / "report.html").read_text()


@needs_fit
def test_demo(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run(capsys, "demo", "--quiet")
    assert code == 0, err
    out = tmp_path / "dynlearn-demo"
    assert f"Results are in {out}" in stdout
    params = pd.read_csv(out / "params.csv", index_col=0)
    # Lotka-Volterra on the pelt data (log residuals): the values of the Stan case study
    assert params.loc["alpha", "value"] == pytest.approx(0.55, rel=0.1)
    assert params.loc["gamma", "value"] == pytest.approx(0.80, rel=0.1)
    assert (out / "fit.png").stat().st_size > 10_000
    # a first contact: a clean fit, whose summary warns of nothing
    summary = (out / "summary.txt").read_text()
    assert "warning" not in summary.lower()
    # the shipped model file's [model.units] label the summary and the parameter table
    assert "units: t [year], hare [thousand pelts], lynx [thousand pelts]" in summary
    assert params.loc["alpha", "unit"] == "1/year"


@needs_fit
def test_simulate_and_check_gradients_with_fitted_params(capsys, decay, tmp_path):
    model, csv = decay
    out = tmp_path / "out"
    assert run(capsys, "fit", model, csv, "--out", out, "-q", "--no-plots")[0] == 0
    k = pd.read_csv(out / "params.csv", index_col=0).loc["k", "value"]
    code, stdout, err = run(capsys, "simulate", model, "--params", out / "result.json",
                            "--t", "0:1:0.5", "--y0", "x=1")
    assert code == 0, err
    sim = pd.read_csv(__import__("io").StringIO(stdout))
    np.testing.assert_allclose(sim["x"], np.exp(-k * sim["t"]), rtol=1e-4)
    code, stdout, _ = run(capsys, "check-gradients", model, csv, "--params", out)
    assert code == 0 and "at fitted parameters" in stdout


@needs_fit
def test_interrupted_fit_resumes(capsys, decay, tmp_path, monkeypatch):
    """Ctrl-C mid-fit: exit 130, a checkpoint and the best point so far (params.csv,
    summary.txt) but no half-written results; --resume continues from it to the same
    optimum as an uninterrupted fit."""
    import importlib
    fitmod = importlib.import_module("dynlearn.fitting.tracker")
    model, csv = decay
    out = tmp_path / "out"
    calls = {"n": 0}
    original = fitmod.Tracker.count

    def interrupt_after_four(self, what):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return original(self, what)

    monkeypatch.setattr(fitmod.Tracker, "count", interrupt_after_four)
    code, _, err = run(capsys, "fit", model, csv, "--out", out, "-q")
    assert code == 130
    assert one_error_line(err).startswith("error: interrupted")
    assert (out / "checkpoint.json").exists() and (out / "checkpoint.npz").exists()
    assert (out / "params.csv").exists() and not (out / "result.json").exists()
    assert no_temp_files(out)
    monkeypatch.setattr(fitmod.Tracker, "count", original)
    code, _, err = run(capsys, "fit", model, csv, "--out", out, "--resume", "-q")
    assert code == 0, err
    resumed = pd.read_csv(out / "params.csv", index_col=0).loc["k", "value"]
    fresh = tmp_path / "fresh"
    assert run(capsys, "fit", model, csv, "--out", fresh, "-q", "--no-plots")[0] == 0
    assert resumed == pytest.approx(pd.read_csv(fresh / "params.csv", index_col=0)
                                    .loc["k", "value"], rel=1e-4)


@needs_fit
def test_failure_mid_write_leaves_nothing_half_written(capsys, decay, tmp_path, monkeypatch):
    """A crash while a figure is being written (disk full): one error line, no partial
    fit.png and no temporary files; the files completed before it are whole."""
    from matplotlib.figure import Figure
    model, csv = decay
    out = tmp_path / "out"

    def broken_savefig(self, fh, **kw):
        fh.write(PNG + b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    code, _, err = run(capsys, "fit", model, csv, "--out", out, "-q")
    assert code == 2
    assert "No space left on device" in one_error_line(err)
    assert not (out / "fit.png").exists()
    assert no_temp_files(out)
    pd.read_csv(out / "params.csv")                          # complete
    dl.load_result(out / "result.json")                      # complete


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    from dynlearn.files import write_text_atomic
    target = tmp_path / "summary.txt"
    target.write_text("old\n")

    def fail(*a, **k):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        write_text_atomic(target, "new\n")
    assert target.read_text() == "old\n"
    assert no_temp_files(tmp_path)


@needs_fit
def test_fit_errors(capsys, decay, tmp_path):
    model, csv = decay
    (tmp_path / "file").write_text("x")
    cases = [
        (["--out", tmp_path / "file"], "exists and is not a folder"),
        (["--method", "Euler"], "method='Euler'"),
        (["--loss", "l1"], "invalid choice: 'l1'"),
        (["--workers", "0"], "argument --workers: must be a positive integer, got 0"),
    ]
    for extra, match in cases:
        code, _, err = run(capsys, "fit", model, csv, *extra)
        assert code == 2, extra
        assert match in one_error_line(err)


@needs_fit
def test_fit_transform_option(capsys, decay, tmp_path):
    """--transform sets the residual scales (per observable, or one for all), replacing
    the model file's [fit] transform; the result's config records it, and the fit is the
    Python API's with the same transform."""
    model, csv = decay
    model.write_text(model.read_text().replace('[fit]', '[fit]\ntransform = { x = "log10" }'))
    seen = {}
    for name, extra in (("file", []), ("one", ["--transform", "x=log"]),
                        ("all", ["--transform", "log"])):
        out = tmp_path / name
        code, _, err = run(capsys, "fit", model, csv, "--out", out, "-q", "--no-plots",
                           *extra)
        assert code == 0, err
        seen[name] = dl.load_result(out / "result.json")
    assert seen["file"].config["transform"] == {"x": "log10"}
    assert seen["one"].config["transform"] == {"x": "log"}
    assert seen["all"].config["transform"] == "log"
    assert "residual scales: x log" in seen["one"].summary()
    # the same fit as dl.fit with transform= (log10 only scales the residuals by 1/ln 10)
    loss = dl.loss(seen["one"].model, seen["one"].data, transform={"x": "log"})
    assert seen["one"].loss == pytest.approx(loss, rel=1e-12)
    with pytest.raises(dl.OptionError, match=re.escape(
            "transform names ['y'], which are not observables; observables are ['x']")):
        dl.loss(seen["one"].model, seen["one"].data, transform={"y": "log"})
    assert seen["one"].params.loc["k", "value"] == pytest.approx(
        seen["all"].params.loc["k", "value"], rel=1e-12)
    assert seen["file"].params.loc["k", "value"] == pytest.approx(
        seen["one"].params.loc["k", "value"], rel=1e-3)
    code, out, _ = run(capsys, "fit", "--help")
    assert code == 0 and "--transform OBS=NAME" in out


@pytest.mark.parametrize("extra, match", [
    (["--transform", "y=log"], "--transform: transform names ['y'], which are not "
                               "observables; observables are ['x']"),
    (["--transform", "x=ln"], "--transform: transform={'x': 'ln'}: unknown transforms"),
    (["--transform", "lin", "--loss", "log"], "--transform: loss='log' puts every "
                                              "observable on the log scale"),
    (["--transform", "log", "--transform", "x=lin"], "a transform for every observable is "
                                                     "given alone"),
    (["--transform", "x=log", "--transform", "x=lin"], "'x' given twice"),
    (["--transform", "x="], "give OBS=NAME"),
])
def test_fit_transform_option_errors(capsys, decay, tmp_path, extra, match):
    """A bad --transform is an OptionError (exit status 2) with the Python API's message,
    before any output folder is made."""
    model, csv = decay
    out = tmp_path / "out"
    code, _, err = run(capsys, "fit", model, csv, "--out", out, *extra)
    assert code == 2, extra
    assert match in one_error_line(err)
    assert not out.exists()


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    from dynlearn.report import figures as plotting
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(plotting.MissingDependencyError, match=r"pip install 'dynlearn\[plot\]'"):
        plotting.fit_figure(pd.DataFrame({"t": [0, 1], "x": [1, 2]}),
                            pd.DataFrame({"t": [0, 1], "x": [1, 2]}), ["x"])


@needs_fit
def test_fit_without_matplotlib_still_writes_results(capsys, decay, tmp_path, monkeypatch):
    model, csv = decay
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "out"
    code, _, err = run(capsys, "fit", model, csv, "--out", out)
    assert code == 0
    assert "warning: no figures or report" in err and "dynlearn[plot]" in err
    assert (out / "result.json").exists() and not (out / "fit.png").exists()


# --- recover ----------------------------------------------------------------------------------
@needs_fit
@needs_recover
def test_recover(capsys, decay, tmp_path):
    from dynlearn.io.model_file import load_model_file
    _, csv = decay
    model = tmp_path / "ude.toml"
    model.write_text(UDE)
    out = tmp_path / "ude"
    # maxiter = 5 stops short of convergence: exit 3, results written
    assert run(capsys, "fit", model, csv, "--out", out, "-q", "--no-plots")[0] == 3
    code, stdout, err = run(capsys, "recover", out, "--library", "poly1", "-q")
    assert code == 0, err
    assert err == ""                  # -q quiets recover as it does fit (issue 13)
    assert "nn[0] =" in stdout
    for name in ("recovery.txt", "recovery_coefficients.csv", "recovered.toml"):
        assert (out / name).stat().st_size > 0
    mf = load_model_file(out / "recovered.toml")       # a valid model file, without networks
    assert not mf.model.networks
    assert mf.data["file"] == csv.resolve()
    code, _, err = run(capsys, "fit", out / "recovered.toml", "--out", tmp_path / "refit",
                       "-q", "--no-plots")
    assert code == 0, err


@needs_fit
@needs_recover
def test_recover_errors(capsys, decay, tmp_path):
    model, csv = decay
    code, _, err = run(capsys, "recover", tmp_path / "none")
    assert code == 2 and "not a folder" in one_error_line(err)
    code, _, err = run(capsys, "recover", tmp_path)
    assert code == 2 and "no such file (expected a result.json" in one_error_line(err)
    out = tmp_path / "phys"
    assert run(capsys, "fit", model, csv, "--out", out, "-q", "--no-plots")[0] == 0
    code, _, err = run(capsys, "recover", out)
    assert code == 2 and "has no networks" in one_error_line(err)
    code, _, err = run(capsys, "recover", out, "--library", "cubic")
    assert code == 2


# the decay x' = -0.8 x with k fixed at 0.5: the network learns the missing -0.3 x
UDE_FIXED_K = UDE.replace('k = { value = 0.5, min = 0.0, transform = "log" }',
                          'k = { value = 0.5, fixed = true }').replace("maxiter = 5",
                                                                        "maxiter = 40")


@pytest.fixture(scope="module")
def fitted_ude(tmp_path_factory):
    """A folder written by 'dynlearn fit' for a hybrid decay model (1 state, 9 rows, a
    3-unit network): cheap to recover from, with a term to find."""
    if not (HAS_FIT and HAS_RECOVER):
        pytest.skip("dl.fit or dl.recover is not available yet")
    from dynlearn.testing import write_decay_files
    assert "fixed = true" in UDE_FIXED_K and "maxiter = 40" in UDE_FIXED_K   # UDE as expected
    folder = tmp_path_factory.mktemp("ude")
    _, csv = write_decay_files(folder)
    model = folder / "ude.toml"
    model.write_text(UDE_FIXED_K)
    out = folder / "fit"
    code = main(["fit", str(model), str(csv), "--out", str(out), "-q", "--no-plots"])
    assert code in (0, 3)          # results are written either way
    return out


def recover_kwargs(monkeypatch, capsys, out, *flags):
    """Run 'dynlearn recover OUT FLAGS' and return the keyword arguments it gave
    dl.recover (the real one runs), its exit status, stdout and stderr."""
    import dynlearn.cli as cli
    seen = {}

    def spy(result, **kw):
        seen.update(kw)
        return dl.recover(result, **kw)

    monkeypatch.setattr(cli, "recover", spy)
    code, stdout, err = run(capsys, "recover", out, *flags)
    return seen, code, stdout, err


def test_recover_writes_candidates_and_inclusion(capsys, fitted_ude):
    out = fitted_ude
    code, stdout, err = run(capsys, "recover", out, "--library", "poly1")
    assert code == 0, err
    assert "candidates refitted to the data, best first (BIC" in stdout
    wrote = next(ln for ln in stdout.splitlines() if ln.startswith("wrote "))
    assert "candidates.csv" in wrote and "inclusion.csv" in wrote
    cand = pd.read_csv(out / "candidates.csv", index_col=0)
    assert {"terms", "n_coefficients", "loss", "criterion", "chosen", "delta",
            "weight"} <= set(cand.columns)
    assert cand["chosen"].sum() == 1
    best = cand.loc[cand["chosen"]].iloc[0]
    assert best["criterion"] == cand["criterion"].min()
    assert cand["weight"].sum() == pytest.approx(1.0)
    assert (cand["n_coefficients"] >= 0).all() and (cand["loss"] > 0).all()
    # inclusion.csv and recovery.txt agree with the chosen candidate
    incl = pd.read_csv(out / "inclusion.csv")
    assert list(incl.columns) == ["output", "term", "chosen", "weight", "refits", "members"]
    assert ((incl["weight"] >= 0) & (incl["weight"] <= 1 + 1e-12)).all()
    assert ((incl["refits"] >= 0) & (incl["refits"] <= 1)).all()
    chosen_terms = set(incl.loc[incl["chosen"], "term"])
    assert best["terms"] == "nn[0]: " + " + ".join(
        t for t in incl["term"] if t in chosen_terms)
    assert best["terms"] in (out / "recovery.txt").read_text()
    # the data are exp(-0.8 t) and the model knows -0.5 x: the missing term is -0.3 x
    assert best["terms"] == "nn[0]: x"
    coef = pd.read_csv(out / "recovery_coefficients.csv", index_col=0)
    assert coef.loc["x", "nn[0]"] == pytest.approx(-0.3, rel=0.05)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]     # no temporary files
    # candidates.csv and inclusion.csv are dynlearn's: recorded in run.json
    import json
    assert {"candidates.csv", "inclusion.csv"} <= set(
        json.loads((out / "run.json").read_text())["files"])


def test_recover_quiet(capsys, fitted_ude):
    code, stdout, err = run(capsys, "recover", fitted_ude, "--library", "poly1", "-q")
    assert code == 0 and err == ""
    lines = stdout.splitlines()
    # results only: the equations and the files written; no score or candidate tables
    assert lines[0].startswith("recovered terms") and lines[1].startswith("  nn[0] = ")
    assert lines[-1].startswith("wrote recovery.txt")
    assert len(lines) == 3
    code, stdout, _ = run(capsys, "recover", fitted_ude, "--library", "poly1")
    assert "candidates refitted" in stdout and "recovered model:" in stdout


@pytest.mark.parametrize("flags, expected", [
    ([], dict(select="ode", region="tube", radius=0.02, refit=True)),
    (["--criterion", "aicc"], dict(criterion="aicc")),
    (["--select", "prune"], dict(select="prune")),
    (["--region", "trajectory"], dict(region="trajectory")),
    (["--region", "box", "--radius", "0.05"], dict(region="box", radius=0.05)),
    (["--no-refit"], dict(refit=False)),
])
def test_recover_flags_reach_recover(capsys, monkeypatch, fitted_ude, flags, expected):
    seen, code, stdout, err = recover_kwargs(monkeypatch, capsys, fitted_ude, "--library",
                                             "poly1", "-q", *flags)
    assert code == 0, err
    assert {k: seen.get(k) for k in expected} == expected
    if "criterion" not in expected:
        assert "criterion" not in seen              # left to dl.recover's default
    wrote = stdout.splitlines()[-1]
    ode = seen["select"] == "ode" and seen["refit"]
    assert ("candidates.csv" in wrote) == ode
    # a run without the selection through the ODE leaves no stale table of an earlier one
    assert (fitted_ude / "candidates.csv").exists() == ode
    assert (fitted_ude / "inclusion.csv").exists() == ode
    assert ("±" in stdout) == seen["refit"]         # refitted coefficients have errors
    if ode:
        assert (f"({seen.get('criterion', 'bic').upper()};"
                in (fitted_ude / "recovery.txt").read_text())


def test_recover_in_a_subprocess(fitted_ude):
    """The installed command end to end: exit status, quiet streams, the files it lists."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "dynlearn", "recover", str(fitted_ude),
                        "--library", "poly1", "--criterion", "aicc", "--region", "trajectory",
                        "-q"], capture_output=True, text=True, env=env, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    m = re.fullmatch(r"  nn\[0\] = \((\S+) ± \S+\)\*x", r.stdout.splitlines()[1])
    assert m and float(m.group(1)) == pytest.approx(-0.3, rel=0.05), r.stdout
    assert "candidates.csv, inclusion.csv" in r.stdout.splitlines()[-1]
    text = (fitted_ude / "recovered.toml").read_text()
    assert "--criterion aicc --region trajectory" in text      # how it was made


def test_recover_criterion_changes_the_scores(capsys, fitted_ude):
    """AICc and BIC score the same refits differently (penalty 2k against k log n)."""
    assert run(capsys, "recover", fitted_ude, "--library", "poly1", "-q")[0] == 0
    bic = pd.read_csv(fitted_ude / "candidates.csv", index_col=0).set_index("terms")
    assert run(capsys, "recover", fitted_ude, "--library", "poly1", "-q", "--criterion",
               "aicc")[0] == 0
    aicc = pd.read_csv(fitted_ude / "candidates.csv", index_col=0).set_index("terms")
    common = bic.index.intersection(aicc.index)
    assert len(common) >= 1
    assert not np.allclose(bic.loc[common, "criterion"], aicc.loc[common, "criterion"])


@pytest.mark.parametrize("flags, match", [
    (["--radius", "0"], "argument --radius: must be a positive number"),
    (["--region", "sphere"], "invalid choice: 'sphere'"),
    (["--select", "lasso"], "invalid choice: 'lasso'"),
    (["--criterion", "aic"], "invalid choice: 'aic'"),
    (["--select", "prune", "--criterion", "aicc"], "does nothing with --select prune"),
    (["--no-refit", "--criterion", "bic"], "does nothing with --no-refit"),
])
def test_recover_option_errors(capsys, fitted_ude, flags, match):
    code, _, err = run(capsys, "recover", fitted_ude, *flags)
    assert code == 2
    assert match in one_error_line(err)


def discovery_warning_texts() -> list[str]:
    """The text of every warning in dynlearn/discovery, read from the source: literals and
    f-strings joined as Python joins them (``{}`` for a formatted value), and of a
    conditional text the first branch (the one for ``recover``)."""
    import ast

    def text(node) -> str:
        if isinstance(node, ast.Constant):
            return node.value if isinstance(node.value, str) else ""
        if isinstance(node, ast.JoinedStr):
            return "".join(text(v) for v in node.values)
        if isinstance(node, ast.FormattedValue):
            return "{}"
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return text(node.left) + text(node.right)
        if isinstance(node, ast.IfExp):
            return text(node.body)
        return ""

    texts = []
    for path in sorted((Path(dl.__file__).parent / "discovery").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "warn":
                texts.append(text(node.args[0]))
    return texts


def test_discovery_warnings_advise_real_python_and_command_line_options():
    """Every DiscoveryWarning's advice names what to do from Python and from the command
    line, and the names are real: recover()'s parameters and `dynlearn recover`'s options
    (with values the option accepts)."""
    import inspect

    from dynlearn.cli import build_parser, parse_library
    texts = discovery_warning_texts()
    assert len(texts) >= 8
    params = set(inspect.signature(dl.recover).parameters)
    parser = build_parser()
    for text in texts:
        assert "Python:" in text and "command line:" in text, text
        for name in re.findall(r"Python: (?:recover\(\.\.\., )?(\w+)=", text):
            assert name in params, (name, text)
        for flag, value in re.findall(r"command line: (?:dynlearn recover )?(--[\w-]+)"
                                      r"(?: ([\w.]+))?", text):
            argv = ["recover", "DIR", flag] + ([value] if value else
                                              ["poly2"] if flag == "--library" else [])
            args = parser.parse_args(argv)          # an unknown flag or bad value raises
            assert args.command == "recover", text
            parse_library(args.library)             # and so does an unknown library


def test_parse_library():
    from dynlearn.cli import parse_library
    if not HAS_RECOVER:
        pytest.skip("dl.recover is not available yet")
    assert parse_library("poly2+trig") is not None
    with pytest.raises(dl.OptionError, match="unknown part 'cubic'"):
        parse_library("poly2+cubic")


# --- plotting from Python ---------------------------------------------------------------------
@needs_fit
def test_plot_functions_return_their_axes(decay, tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dynlearn.results.plots import plot_result
    model, csv = decay
    out = tmp_path / "out"
    assert main(["fit", str(model), str(csv), "--out", str(out), "-q", "--no-plots"]) == 0
    res = dl.load_result(out / "result.json")
    fig, axes = plt.subplots(1, 3)
    for ax, kind in zip(axes, ("fit", "residuals", "loss")):
        assert plot_result(res, kind, ax=ax) is ax
        assert ax.has_data()
    assert plot_result(res, "fit").has_data()        # makes its own axes
    assert res.plot("residuals").has_data()          # the method draws the same panels
    with pytest.raises(dl.OptionError, match="no networks"):
        plot_result(res, "learned")
    with pytest.raises(dl.OptionError, match="kind='pie'"):
        plot_result(res, "pie")
    with pytest.raises(dl.OptionError, match="observable 'z'"):
        plot_result(res, "fit", observable="z")
    plt.close("all")


@needs_fit
def test_model_with_inputs(capsys, tmp_path):
    """Input columns drive the model (zero-order hold here); simulate needs --inputs."""
    model = tmp_path / "tank.toml"
    model.write_text('[model]\nstates = ["h"]\ninputs = ["u"]\n'
                     'equations = { h = "-k*h + b*u" }\n'
                     '[model.params]\nk = { value = 0.3, min = 0, transform = "log" }\n'
                     'b = { value = 0.5, min = 0, transform = "log" }\n'
                     '[data]\ntime = "t"\ninterpolation = "zoh"\n')
    t = np.arange(0.0, 20.0, 0.5)
    u = np.where((t // 5) % 2 == 0, 1.0, 0.2)
    truth = dl.HybridModel(["h"], {"h": "-k*h + b*u"}, params={"k": 0.4, "b": 0.3},
                           inputs=["u"])
    sol = dl.simulate(truth, t, [1.0], inputs=dl.InputSignal(t, u, kind="zoh"), rtol=1e-9)
    csv = tmp_path / "tank.csv"
    pd.DataFrame({"t": t, "u": u, "h": sol.y[:, 0]}).to_csv(csv, index=False)
    out = tmp_path / "out"
    code, _, err = run(capsys, "fit", model, csv, "--out", out, "-q")
    assert code == 0, err
    p = pd.read_csv(out / "params.csv", index_col=0)["value"]
    assert p["k"] == pytest.approx(0.4, rel=1e-3) and p["b"] == pytest.approx(0.3, rel=1e-3)
    code, _, err = run(capsys, "simulate", model, "--t", "0:5:1", "--y0", "h=1")
    assert code == 2 and "pass --inputs INPUTS.csv" in one_error_line(err)
    code, stdout, err = run(capsys, "simulate", model, "--t", "0:5:1", "--y0", "h=1",
                            "--inputs", csv, "--params", out / "result.json")
    assert code == 0, err
    assert len(stdout.strip().splitlines()) == 7


@needs_fit
def test_failed_fit_exits_1(capsys, decay, tmp_path):
    """A fit that cannot even start (predictions of a log loss go negative) says so and
    exits with status 1."""
    model, csv = decay
    model.write_text(DECAY.replace('"-k*x"', '"-k"').replace('loss = "ls"', 'loss = "log"')
                     .replace("value = 0.5", "value = 1.0"))
    code, _, err = run(capsys, "fit", model, csv, "--out", tmp_path / "out", "-q")
    assert code == 1
    assert one_error_line(err).startswith("error: the fit failed: ")


@needs_fit
@pytest.mark.slow
@pytest.mark.dask     # --workers 2 starts a local cluster
def test_workers_run_multistart_on_dask(capsys, decay, tmp_path):
    pytest.importorskip("dask.distributed")
    model, csv = decay
    model.write_text(DECAY.replace("maxiter = 20", "maxiter = 20\nn_starts = 2"))
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "fit", model, csv, "--out", out, "--workers", "2",
                            "--no-plots")
    assert code == 0, err
    assert "running on Dask" in err
    assert "2 starts" in stdout


def test_fit_settings_from_model_file(tmp_path):
    """How [fit], [noise] and [initial] become dl.fit's keyword arguments."""
    from types import SimpleNamespace

    from dynlearn.cli import fit_arguments
    from dynlearn.io.model_file import load_model_file
    if not HAS_FIT:
        pytest.skip("dl.fit is not available yet")
    args = SimpleNamespace(quiet=True, resume=False, maxiter=None, loss=None, method=None,
                           seed=None, max_time=None, workers=None)
    m = tmp_path / "m.toml"
    m.write_text(DECAY.replace('[fit]', '[noise]\nsigma = "estimate"\n\n[initial]\n'
                                        'values = { x = 1.0 }\n\n[fit]\nsensitivity = "forward"'
                                        '\nn_starts = 2\noptions = { max_step = 0.5 }')
                 .replace('loss = "ls"\n', ''))
    kw = fit_arguments(load_model_file(m), args, tmp_path)
    assert kw["loss"] == "gaussian" and "sigma" not in kw
    np.testing.assert_array_equal(kw["y0"], [1.0])
    assert isinstance(kw["sensitivity"], dl.ForwardSensitivity)
    assert kw["n_starts"] == 2 and kw["max_step"] == 0.5
    assert kw["optimizer"].max_iter == 20
    assert kw["checkpoint"] == str(tmp_path / "checkpoint") and kw["progress"] is False
    args.maxiter, args.loss = 3, "log"
    kw = fit_arguments(load_model_file(m), args, tmp_path)
    assert kw["optimizer"].max_iter == 3 and kw["loss"] == "log"
    m.write_text(DECAY.replace('[fit]', '[fit]\noptions = { max_stepp = 0.5 }'))
    with pytest.raises(dl.OptionError, match=r"m\.toml, line 13: \[fit.options\] max_stepp"):
        fit_arguments(load_model_file(m), args, tmp_path)
    m.write_text(DECAY.replace('[fit]', '[noise]\nsigma = 0.1\n[fit]'))
    assert fit_arguments(load_model_file(m), args, tmp_path)["sigma"] == 0.1


@needs_fit
def test_fit_several_experiments(capsys, decay, tmp_path):
    model, _ = decay
    model.write_text(DECAY.replace('time = "t"', 'time = "t"\ngroup = "run"'))
    rows = [(g, t, x0 * np.exp(-0.8 * t)) for g, x0 in (("a", 1.0), ("b", 2.0))
            for t in np.linspace(0, 4, 6)]
    csv = tmp_path / "multi.csv"
    pd.DataFrame(rows, columns=["run", "t", "x"]).to_csv(csv, index=False)
    out = tmp_path / "out"
    code, _, err = run(capsys, "fit", model, csv, "--out", out, "-q")
    assert code == 0, err
    pred = pd.read_csv(out / "predictions.csv")
    assert list(pred["experiment"].unique()) == ["a", "b"]
    assert (out / "fit.png").stat().st_size > 0 and (out / "residuals.png").stat().st_size > 0


# --- issue 13: exit codes, bad numbers, Ctrl-C in a real process --------------------------------
@pytest.mark.parametrize("argv, match", [
    (["fit", "m.toml", "--maxiter", "-3"], "argument --maxiter: must be a positive integer, "
                                           "got -3"),
    (["fit", "m.toml", "--maxiter", "0"], "argument --maxiter: must be a positive integer, "
                                          "got 0"),
    (["fit", "m.toml", "--max-time", "-1"],
     r"argument --max-time: must be a positive number \(finite\), got -1"),
    (["fit", "m.toml", "--max-time", "nan"], "argument --max-time: must be a positive number"),
    (["fit", "m.toml", "--max-time", "inf"], "argument --max-time: must be a positive number"),
    (["fit", "m.toml", "--workers", "0"], "argument --workers: must be a positive integer"),
    (["fit", "m.toml", "--n-starts", "0"], "argument --n-starts: must be a positive integer"),
    (["fit", "m.toml", "--seed", "-1"], "argument --seed: must be an integer >= 0, got -1"),
    (["demo", "--maxiter", "-1"], "argument --maxiter: must be a positive integer"),
    (["simulate", "m.toml", "--atol", "0"], "argument --atol: must be a positive number"),
    (["recover", "out", "--threshold", "-0.1"], "argument --threshold: must be a number >= 0"),
    (["check-gradients", "m.toml", "--rows", "0"], "argument --rows: must be a positive integer"),
])
def test_nonsensical_numbers_are_usage_errors(capsys, argv, match):
    """``--maxiter -3`` ran a fit with no budget and ``--max-time -1`` one that stopped at
    once, both exiting as if all were well; now argparse refuses them: exit 2, one line
    naming the option."""
    code, _, err = run(capsys, *argv)
    assert code == 2
    line = one_error_line(err)
    assert re.search(match, line), line
    assert line.endswith(f"(see 'dynlearn {argv[0]} --help')")


def test_model_file_with_min_above_max_says_so(capsys, decay):
    model, _ = decay
    model.write_text(DECAY.replace("min = 0.0", "min = 2.0, max = 1.0"))
    code, _, err = run(capsys, "simulate", model)
    assert code == 2
    line = one_error_line(err)
    assert "line 7" in line and "k: Parameter min 2 is greater than its max 1" in line


def test_model_file_with_zero_starts_is_refused(capsys, decay, tmp_path):
    model, csv = decay
    model.write_text(DECAY.replace("maxiter = 20", "maxiter = 20\nn_starts = 0"))
    code, _, err = run(capsys, "fit", model, csv, "--out", tmp_path / "never-made")
    assert code == 2
    assert re.search(r"\[fit\] n_starts: must be positive, got 0", one_error_line(err))
    assert not (tmp_path / "never-made").exists()


@needs_fit
def test_converged_fit_removes_its_checkpoint(capsys, decay, tmp_path):
    """A converged fit leaves no checkpoint behind (nothing is left to resume); one that
    stopped short keeps it and the ``wrote`` line says so."""
    model, csv = decay
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "fit", model, csv, "--out", out, "-q", "--no-plots")
    assert code == 0, err
    assert not (out / "checkpoint.json").exists() and not (out / "checkpoint.npz").exists()
    assert "checkpoint" not in stdout
    code, stdout, err = run(capsys, "fit", model, csv, "--out", out, "-q", "--no-plots",
                            "--maxiter", "1")
    assert code == 3, err
    assert (out / "checkpoint.json").exists() and (out / "checkpoint.npz").exists()
    assert "checkpoint.json, checkpoint.npz" in stdout and "--resume" in stdout


def _cli_process(*argv, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "dynlearn", *map(str, argv)],
                          capture_output=True, text=True, cwd=cwd, env=env, check=False,
                          timeout=300)


@needs_fit
def test_exit_status_of_a_real_process(decay, tmp_path):
    """The documented exit statuses as a shell sees them: 3 for a fit that ran out of
    iterations (results written), 2 for a bad option; one line on stderr, no traceback."""
    model, csv = decay
    r = _cli_process("fit", model, csv, "--out", tmp_path / "out", "-q", "--no-plots",
                     "--maxiter", "1", cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert r.stderr == "" and r.stdout.startswith("wrote params.csv")
    assert (tmp_path / "out" / "params.csv").exists()
    r = _cli_process("fit", model, csv, "--max-time", "-1", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("error: argument --max-time: must be a positive number")
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


# A fit that pauses in its 4th evaluation, so that the test's Ctrl-C (a real SIGINT) lands
# mid-fit, in whatever the interpreter is doing then, as a user's would.
_PAUSE_IN_FIT = """
import sys, time
from dynlearn.fitting import tracker
original = tracker.Tracker.count
calls = [0]

def count(self, what):
    calls[0] += 1
    if calls[0] == 4:
        print("ready", flush=True)
        time.sleep(120)
    return original(self, what)

tracker.Tracker.count = count
"""


def _interrupt_when_ready(script: str, args, cwd):
    import signal
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # the child takes SIGINT as a terminal's Ctrl-C would reach it, even when the tests run
    # as a background job (whose children start with SIGINT ignored, and then Python
    # installs no KeyboardInterrupt handler)
    p = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=cwd, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = p.stdout.readline()
        assert first == "ready\n", first + p.stderr.read()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, out, err


@needs_fit
@pytest.mark.skipif(os.name == "nt", reason="SIGINT to a child process is POSIX")
def test_ctrl_c_in_the_cli_keeps_the_best_point(decay, tmp_path):
    """Ctrl-C during ``dynlearn fit``: one error line, params.csv and summary.txt of the
    best point so far (marked interrupted) beside the checkpoint, and then the process dies
    of the SIGINT (status 130 in a shell), as Python itself does: a shell loop over
    ``dynlearn fit`` commands stops, where an exit status of 130 would let it go on."""
    import signal
    model, csv = decay
    out = tmp_path / "out"
    script = _PAUSE_IN_FIT + "from dynlearn.cli import main\nsys.exit(main())\n"
    code, _, err = _interrupt_when_ready(script, ["fit", model, csv, "--out", out, "-q"],
                                         cwd=tmp_path)
    assert code == -signal.SIGINT, err
    assert one_error_line(err).startswith("error: interrupted")
    assert "interrupted" in (out / "summary.txt").read_text()
    assert pd.read_csv(out / "params.csv", index_col=0).loc["k", "value"] > 0
    assert (out / "checkpoint.json").exists() and not (out / "result.json").exists()


@needs_fit
@pytest.mark.skipif(os.name == "nt", reason="SIGINT to a child process is POSIX")
def test_ctrl_c_stops_a_script_looping_over_fits(tmp_path):
    """Ctrl-C in ``dl.fit`` inside a loop of fits: the checkpoint is written, then
    KeyboardInterrupt (FitInterrupted, with the best point so far) reaches the script, which
    stops instead of going on with the next fit."""
    import signal
    script = _PAUSE_IN_FIT + """
import dynlearn as dl
from dynlearn.testing import decay_experiments, decay_model
try:
    for i in range(3):
        dl.fit(decay_model(), decay_experiments(1), progress=False,
               checkpoint=f"ck{i}")
        print("finished", i, flush=True)
except KeyboardInterrupt as exc:
    print(type(exc).__name__, exc.checkpoint, exc.result.loss, flush=True)
    raise
"""
    code, out, err = _interrupt_when_ready(script, [], cwd=tmp_path)
    # the script ended with the uncaught interrupt (CPython dies by SIGINT only for an
    # exact KeyboardInterrupt; for its subclass FitInterrupted it exits with status 1)
    assert code in (1, -signal.SIGINT), err
    assert err.rstrip().splitlines()[-1].startswith("dynlearn.errors.FitInterrupted: ")
    assert "finished" not in out
    name, checkpoint, loss = out.split()
    assert name == "FitInterrupted" and checkpoint == "ck0" and np.isfinite(float(loss))
    assert (tmp_path / "ck0.json").exists() and not (tmp_path / "ck1.json").exists()


@needs_fit
@pytest.mark.skipif(os.name == "nt", reason="SIGINT to a child process is POSIX")
def test_a_script_reraising_keyboard_interrupt_dies_by_sigint(tmp_path):
    """The idiom of docs/reliability.md (Known limits): a script that turns an uncaught
    FitInterrupted into a plain KeyboardInterrupt at its top level dies by SIGINT, so a
    shell loop over such scripts stops; inside it, the checkpoint was written."""
    import signal
    script = _PAUSE_IN_FIT + """
import dynlearn as dl
from dynlearn.testing import decay_experiments, decay_model

def main():
    for i in range(3):
        dl.fit(decay_model(), decay_experiments(1), progress=False, checkpoint=f"ck{i}")
        print("finished", i, flush=True)

if __name__ == "__main__":
    try:
        main()
    except dl.FitInterrupted:
        raise KeyboardInterrupt from None
"""
    code, out, err = _interrupt_when_ready(script, [], cwd=tmp_path)
    assert code == -signal.SIGINT, err
    assert err.rstrip().splitlines()[-1] == "KeyboardInterrupt"
    assert "FitInterrupted" not in err and "finished" not in out
    assert (tmp_path / "ck0.json").exists() and not (tmp_path / "ck1.json").exists()


# --- data columns, the argument order and the shipped examples (issue 13) ---------------------
def _dynlearn(*argv, cwd=None):
    r = subprocess.run([sys.executable, "-m", "dynlearn", *map(str, argv)], cwd=cwd,
                       capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout, r.stderr


def test_example_lists_writes_and_the_model_file_comes_first(capsys, tmp_path, monkeypatch):
    code, out, err = run(capsys, "example")
    assert code == 0, err
    assert "lynx_hare" in out and "sir_influenza" in out and "cascaded_tanks" in out
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "example", "lynx_hare", "--out", "ex")
    assert code == 0, err
    assert "wrote lynx_hare.toml, lynx_hare.csv to ex" in out
    assert "dynlearn fit ex/lynx_hare.toml ex/lynx_hare.csv" in out
    assert (tmp_path / "ex" / "lynx_hare.toml").exists()
    # the arguments swapped: exit 2, and the order to use (as a user sees it: a process)
    code, _, err = _dynlearn("fit", "ex/lynx_hare.csv", "ex/lynx_hare.toml", cwd=tmp_path)
    assert code == 2
    assert one_error_line(err) == (
        "error: 'ex/lynx_hare.csv' looks like a CSV; the model file comes first: dynlearn fit "
        "ex/lynx_hare.toml ex/lynx_hare.csv (see 'dynlearn fit --help')")


def test_example_errors(capsys, tmp_path):
    code, _, err = run(capsys, "example", "nope")
    assert code == 2
    assert "no example named 'nope'; the examples are ['cascaded_tanks'" in one_error_line(err)
    assert run(capsys, "example", "sir-influenza", "--out", tmp_path)[0] == 0
    code, _, err = run(capsys, "example", "sir_influenza", "--out", tmp_path)
    assert code == 2 and "already exist; pass --force" in one_error_line(err)
    assert run(capsys, "example", "sir_influenza", "--out", tmp_path, "--force")[0] == 0
    # a CSV alone where the model file belongs
    code, _, err = run(capsys, "check-gradients", tmp_path / "sir_influenza.csv")
    assert code == 2
    assert "looks like a CSV; the model file comes first: dynlearn check-gradients " \
           "MODEL.toml" in one_error_line(err)
    code, _, err = run(capsys, "simulate", tmp_path / "sir_influenza.csv")
    assert code == 2
    assert "looks like a CSV; dynlearn simulate needs the model file (MODEL.toml)" in \
        one_error_line(err)


def test_help_points_to_the_model_file_docs(capsys):
    assert "docs/model-files.md" in run(capsys, "--help")[1]
    out = run(capsys, "fit", "--help")[1]
    assert "docs/model-files.md" in out and "dynlearn example" in out


def test_a_column_differing_by_case_stops_the_fit(capsys, decay, tmp_path):
    model, csv = decay
    bad = tmp_path / "bad.csv"
    pd.read_csv(csv).rename(columns={"x": "X"}).to_csv(bad, index=False)
    code, _, err = run(capsys, "fit", model, bad, "--out", tmp_path / "o")
    assert code == 2
    assert "column 'X' differs from the model's observable 'x' only by case" in \
        one_error_line(err)
    assert not (tmp_path / "o").exists()


@needs_fit
def test_unused_columns_are_named_and_reported(capsys, decay, tmp_path):
    model, csv = decay
    more = tmp_path / "more.csv"
    pd.read_csv(csv).assign(xx=1.0, note="a").to_csv(more, index=False)
    code, out, err = run(capsys, "fit", model, more, "--out", tmp_path / "o", "--no-plots")
    assert code == 0, err
    warning = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warning) == 1
    assert "columns not used: 'xx' matches no observable, input or noise-level column (did " \
           "you mean 'x'?); 'note'" in warning[0]
    assert f"Data: {more}: columns used: x; not used: xx (matches no observable" in out


@needs_fit
def test_n_starts_option_overrides_the_model_file(capsys, decay, tmp_path):
    model, csv = decay
    code, stdout, err = run(capsys, "fit", model, csv, "--out", tmp_path / "out",
                            "--n-starts", "2", "--no-plots")
    assert code == 0, err
    assert "2 starts" in stdout
