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
LYNX_CSV = PKG_DATA / "hudson_bay_lynx_hare.csv"

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
    (["demo", "--seed", "x"], "argument --seed: invalid int value: 'x'"),
    (["check-gradients", "m.toml", "--rtol", "tight"], "invalid float value"),
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
    ("t,x\n0,1\n0,2\n", r"duplicate time in experiment 'data': t=0.0 at row 2"),
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
        (["--workers", "0"], "--workers must be a positive integer"),
    ]
    for extra, match in cases:
        code, _, err = run(capsys, "fit", model, csv, *extra)
        assert code == 2, extra
        assert match in one_error_line(err)


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

    from dynlearn.cli import _fit_kwargs
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
    kw = _fit_kwargs(load_model_file(m), args, tmp_path)
    assert kw["loss"] == "gaussian" and "sigma" not in kw
    np.testing.assert_array_equal(kw["y0"], [1.0])
    assert isinstance(kw["sensitivity"], dl.ForwardSensitivity)
    assert kw["n_starts"] == 2 and kw["max_step"] == 0.5
    assert kw["optimizer"].max_iter == 20
    assert kw["checkpoint"] == str(tmp_path / "checkpoint") and kw["progress"] is False
    args.maxiter, args.loss = 3, "log"
    kw = _fit_kwargs(load_model_file(m), args, tmp_path)
    assert kw["optimizer"].max_iter == 3 and kw["loss"] == "log"
    m.write_text(DECAY.replace('[fit]', '[fit]\noptions = { max_stepp = 0.5 }'))
    with pytest.raises(dl.OptionError, match=r"m\.toml, line 13: \[fit.options\] max_stepp"):
        _fit_kwargs(load_model_file(m), args, tmp_path)
    m.write_text(DECAY.replace('[fit]', '[noise]\nsigma = 0.1\n[fit]'))
    assert _fit_kwargs(load_model_file(m), args, tmp_path)["sigma"] == 0.1


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
