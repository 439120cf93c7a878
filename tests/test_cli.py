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

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "models"
PKG_DATA = Path(dl.__file__).with_name("data")
LYNX_CSV = PKG_DATA / "hudson_bay_lynx_hare.csv"

HAS_FIT = getattr(dl, "fit", None) is not None
HAS_RECOVER = getattr(dl, "recover", None) is not None
needs_fit = pytest.mark.skipif(not HAS_FIT, reason="dl.fit is not available yet")
needs_recover = pytest.mark.skipif(not HAS_RECOVER, reason="dl.recover is not available yet")

DECAY = """\
[model]
name = "decay"
states = ["x"]
equations = { x = "-k*x" }

[model.params]
k = { value = 0.5, min = 0.0, transform = "log" }

[data]
time = "t"

[fit]
loss = "ls"
maxiter = 20

[simulate]
t = "0:2:0.5"
y0 = { x = 1.0 }
"""


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


@pytest.fixture
def decay(tmp_path):
    model = tmp_path / "decay.toml"
    model.write_text(DECAY)
    t = np.linspace(0.0, 4.0, 9)
    rng = np.random.default_rng(0)
    x = np.exp(-0.8 * t) * (1 + 0.01 * rng.standard_normal(t.size))
    csv = tmp_path / "decay.csv"
    pd.DataFrame({"t": t, "x": x}).to_csv(csv, index=False)
    return model, csv


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
    code, out, err = run(capsys, "check-gradients", EXAMPLES / "lv_ude.toml", LYNX_CSV,
                         "--fd-max", "6", "--rows", "4")
    assert code == 0, out + err
    assert "finite differences on 6 of" in out


def test_check_gradients_reports_disagreement(capsys, decay):
    model, csv = decay
    code, out, _ = run(capsys, "check-gradients", model, csv, "--tol", "0")
    assert code == 1 and "DISAGREE" in out


# --- python -m dynlearn -------------------------------------------------------------------------
def test_python_dash_m(decay, tmp_path):
    model, _ = decay
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "dynlearn", "simulate", str(model)],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("t,x")
    r = subprocess.run([sys.executable, "-m", "dynlearn", "simulate", "missing.toml"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
                       check=False)
    assert r.returncode == 2
    assert r.stderr == "error: missing.toml: no such file\n"
