"""method="auto": stiffness detection, the solver it picks, and where the choice is reported
(issue #15, item 2)."""

import json

import numpy as np
import pytest
import sympy as sp

import dynlearn as dl
from dynlearn.core.vectorfield import VectorField
from dynlearn.files import json_npz_paths
from dynlearn.fitting.checkpoint import read_checkpoint
from dynlearn.io.model_file import load_model_file
from dynlearn.solve import (
    NONSTIFF_RATIO,
    STIFF_RATIO,
    MethodChoice,
    choose_method,
    stiffness_probe,
)
from dynlearn.testing import (
    DECAY_TOML,
    lotka_volterra_data,
    lotka_volterra_fit_model,
    lotka_volterra_problem,
    lv_ude_problem,
    robertson_problem,
    write_decay_files,
)


def stiff_chain(n: int = 6):
    """A linear reaction chain ``A_0 -> ... -> A_{n-1}`` with rate constants spread over
    four decades (0.1 .. 1e3), observed until t = 100: the fast rates decay within 1e-3,
    the slow ones set the time scale."""
    y = sp.symbols(f"a0:{n}")
    lk = sp.symbols(f"lk0:{n - 1}")
    rhs = {s: sp.S.Zero for s in y}
    for i in range(n - 1):
        r = sp.exp(lk[i]) * y[i]
        rhs[y[i]] -= r
        rhs[y[i + 1]] += r
    params = {s: float(v) for s, v in zip(lk, np.log(10.0) * np.linspace(3.0, -1.0, n - 1))}
    model = dl.HybridModel(states=list(y), params=params, rhs=rhs, name="chain")
    y0 = np.zeros(n)
    y0[0] = 1.0
    return model, np.concatenate([[0.0], np.logspace(-3, 2, 20)]), y0


def damped_oscillator():
    x, v, w, z = sp.symbols("x v w z")
    return dl.HybridModel(states=[x, v], params={w: 2.0, z: 0.1},
                          rhs={x: v, v: -w**2 * x - 2 * z * w * v}, name="oscillator")


def stiff_hybrid():
    """Robertson's kinetics plus a small network rate term (a stiff hybrid model)."""
    _, data, _ = robertson_problem(n_times=15)
    y1, y2, y3 = sp.symbols("y1 y2 y3")
    l1, l2, l3 = sp.symbols("l1 l2 l3")
    nn = dl.MLP("nn", inputs=[y1, y3], outputs=1, hidden=[3], seed=0, scale=0.3)
    k1, k2, k3 = sp.exp(l1), sp.exp(l2), sp.exp(l3)
    model = dl.HybridModel(
        states=[y1, y2, y3], params={l1: np.log(0.04), l2: np.log(3e7), l3: np.log(1e4)},
        rhs={y1: -k1 * y1 + k3 * y2 * y3 + 1e-2 * nn[0],
             y2: k1 * y1 - k3 * y2 * y3 - k2 * y2**2 - 1e-2 * nn[0], y3: k2 * y2**2},
        name="robertson-hybrid")
    return model, data


# --- detection ------------------------------------------------------------------------------
def test_robertson_and_a_stiff_chain_are_stiff():
    model, _, _ = robertson_problem()
    t = np.concatenate([[0.0], np.logspace(-5, 5, 20)])
    sol = dl.simulate(model, t, [1.0, 0.0, 0.0], method="auto")
    assert sol.method == "LSODA"
    assert sol.method_choice.stiff is True and sol.method_choice.ratio >= STIFF_RATIO
    assert sol.method_choice.reason.startswith("stiff")
    model, t, y0 = stiff_chain()
    sol = dl.simulate(model, t, y0, method="auto")
    assert sol.method == "LSODA" and sol.method_choice.stiff is True
    # and the solution is the LSODA one
    ref = dl.simulate(model, t, y0, method="LSODA")
    np.testing.assert_array_equal(sol.y, ref.y)


def test_lotka_volterra_and_a_damped_oscillator_are_not_stiff():
    model, data, theta = lotka_volterra_problem()
    sol = dl.simulate(model, data[0].t, [0.44, 4.6], theta, method="auto")
    assert sol.method == "RK45" and sol.method_choice.stiff is False
    assert sol.method_choice.ratio < NONSTIFF_RATIO
    sol = dl.simulate(damped_oscillator(), np.linspace(0.0, 30.0, 61), [1.0, 0.0],
                      method="auto")
    assert sol.method == "RK45" and sol.method_choice.stiff is False


def test_probe_measures_explicit_steps_against_its_own():
    """The probe's ratio is about 1 without stiffness and grows with the stiffness: a
    linear decay ``y' = -k y`` held at 0 long after it decayed needs explicit steps
    ``h <= 3.3 / k``, so the ratio grows with ``k``."""
    y, k = sp.symbols("y k")
    ratios = []
    for rate in (1.0, 1e2, 1e4):
        m = dl.HybridModel(states=[y], params={k: rate}, rhs={y: -k * y})
        p = stiffness_probe(VectorField(m, m.theta0), 0.0, 100.0, [1.0], 1e-6, 1e-8)
        assert p.steps > 0 and p.nfev > 0
        ratios.append(p.ratio)
    assert ratios[0] < NONSTIFF_RATIO < STIFF_RATIO < ratios[1] < ratios[2]


def test_borderline_chooses_lsoda_and_says_why():
    """A problem whose ratio lies between the thresholds gets LSODA, 'borderline'. The
    damped oscillator observed long after it decayed is such a problem: near zero, the
    implicit steps grow past the explicit stability limit, but only by a small factor."""
    m = damped_oscillator()
    choice = choose_method([(VectorField(m, m.theta0), 0.0, 5000.0, np.array([1.0, 0.0]),
                             "")], 1e-6, 1e-10)
    assert NONSTIFF_RATIO <= choice.ratio < STIFF_RATIO
    assert choice.method == "LSODA" and choice.stiff is None
    assert choice.reason.startswith("borderline") and "LSODA handles both" in choice.reason


def test_probe_failure_chooses_lsoda():
    """A probe that cannot solve (here a right-hand side infinite at the start) is no
    verdict: LSODA, and the reason says the probe failed."""
    y = sp.Symbol("y")
    m = dl.HybridModel(states=[y], rhs={y: -1 / y})
    choice = choose_method([(VectorField(m, m.theta0), 0.0, 2.0, np.array([0.0]), "")],
                           1e-6, 1e-8)
    assert choice.method == "LSODA" and choice.stiff is None
    assert "probe failed" in choice.reason


# --- the fast path stays bit for bit ---------------------------------------------------------
def test_auto_on_a_non_stiff_problem_is_rk45_bit_for_bit():
    model, data = lotka_volterra_fit_model(), lotka_volterra_data()
    auto = dl.fit(model, data, progress=False)
    rk45 = dl.fit(model, data, progress=False, method="RK45")
    assert auto.method == "RK45" and auto.method_choice.stiff is False
    assert rk45.method == "RK45" and rk45.method_choice is None
    np.testing.assert_array_equal(auto.x, rk45.x)
    assert auto.loss == rk45.loss
    assert (auto.nfev, auto.njev, auto.ngev, auto.nit) == (rk45.nfev, rk45.njev, rk45.ngev,
                                                           rk45.nit)
    np.testing.assert_array_equal(auto.cov_x, rk45.cov_x)
    # the gradient too (the discrete adjoint), and a simulation
    m, d, theta = lotka_volterra_problem()
    va, ga = dl.loss_and_grad(m, d, theta, method="auto")
    vr, gr = dl.loss_and_grad(m, d, theta)
    assert va == vr
    np.testing.assert_array_equal(ga, gr)
    sa = dl.simulate(m, d[0].t, [0.44, 4.6], theta, method="auto")
    sr = dl.simulate(m, d[0].t, [0.44, 4.6], theta)
    np.testing.assert_array_equal(sa.y, sr.y)
    assert sa.nfev == sr.nfev          # the probe's evaluations are not the solve's


def test_hybrid_models_in_both_branches():
    model, data, theta = lv_ude_problem()
    obj = dl.Objective(model, data, method="auto")
    assert obj.method == "RK45" and obj.method_choice.stiff is False
    v, g = obj.value_and_grad(theta)
    v0, g0 = dl.loss_and_grad(model, data, theta, method="RK45")
    assert v == v0
    np.testing.assert_array_equal(g, g0)

    model, data = stiff_hybrid()
    obj = dl.Objective(model, data, method="auto", rtol=1e-8, atol=1e-12)
    assert obj.method == "LSODA" and obj.method_choice.stiff is True
    assert isinstance(obj.sensitivity, dl.ForwardSensitivity)     # follows the method
    v, g = obj.value_and_grad()
    ref = dl.Objective(model, data, method="LSODA", rtol=1e-8, atol=1e-12).value_and_grad()
    assert v == ref[0]
    np.testing.assert_array_equal(g, ref[1])
    assert np.all(np.isfinite(g))


# --- reported, saved, resumed ------------------------------------------------------------------
def test_stiff_fit_names_the_choice_everywhere(tmp_path):
    model, data, _ = robertson_problem(n_times=15)
    ckpt = tmp_path / "ck"
    res = dl.fit(model, data, progress=False, checkpoint=str(ckpt))
    assert res.method == "LSODA" and res.config["method"] == "LSODA"
    assert res.method_choice.stiff is True
    assert "solver: LSODA (auto: stiff" in res.summary()
    # kept in the checkpoint, and a resumed fit keeps it without probing again
    rec = read_checkpoint(str(ckpt)).meta["method_choice"]
    assert MethodChoice.from_dict(rec) == res.method_choice
    # saved and loaded
    res.save(tmp_path / "r")
    back = dl.load_result(tmp_path / "r")
    assert back.method == "LSODA" and back.method_choice == res.method_choice
    assert "solver: LSODA (auto: stiff" in back.summary()


def test_resume_keeps_the_recorded_choice(tmp_path):
    """A checkpoint's recorded choice is what a resumed fit uses (here one that differs
    from what the probe would say, to show it is not probed again; the start has finished,
    so the resumed fit only computes its result, with the recorded method)."""
    model, data = lotka_volterra_fit_model(), lotka_volterra_data()
    ckpt = str(tmp_path / "ck")
    dl.fit(model, data, progress=False, checkpoint=ckpt, optimizer=dl.LevenbergMarquardt(
        max_iter=2))
    jpath = json_npz_paths(ckpt)[0]
    meta = json.loads(open(jpath).read())
    assert meta["method_choice"]["method"] == "RK45"
    meta["method_choice"] = MethodChoice("LSODA", True, 50.0, "stiff: recorded").to_dict()
    with open(jpath, "w") as f:
        json.dump(meta, f)
    res = dl.fit(model, data, progress=False, checkpoint=ckpt, resume=True,
                 optimizer=dl.LevenbergMarquardt(max_iter=2))
    assert res.method == "LSODA" and res.method_choice.reason == "stiff: recorded"


def test_model_file_method_auto(tmp_path):
    from dynlearn.cli import main
    model, csv = write_decay_files(tmp_path)
    model.write_text(DECAY_TOML.replace('loss = "ls"\n', 'loss = "ls"\nmethod = "auto"\n'))
    out = tmp_path / "out"
    assert main(["fit", str(model), str(csv), "--out", str(out), "-q", "--no-plots"]) == 0
    res = dl.load_result(out / "result.json")
    assert res.method == "RK45" and res.method_choice.stiff is False
    assert "solver: RK45 (auto: non-stiff" in (out / "summary.txt").read_text()
    model.write_text(DECAY_TOML.replace('loss = "ls"\n', 'loss = "ls"\nmethod = "fast"\n'))
    with pytest.raises(dl.ModelError, match=r"method: 'fast' is not one of \['auto'"):
        load_model_file(model)


# --- a method the user names is never overridden ------------------------------------------
def test_an_explicit_method_is_kept():
    # a stiff method on a non-stiff problem, where auto would choose RK45
    res = dl.fit(lotka_volterra_fit_model(), lotka_volterra_data(), progress=False,
                 method="LSODA")
    assert res.method == "LSODA" and res.method_choice is None
    assert "auto" not in res.summary()
    model, _, _ = robertson_problem(n_times=15)
    sol = dl.simulate(model, [0.0, 1.0, 10.0], [1.0, 0.0, 0.0], method="BDF")
    assert sol.method == "BDF" and sol.method_choice is None
    m, d, theta = lotka_volterra_problem()
    obj = dl.Objective(m, d, method="LSODA")          # a stiff method on a non-stiff problem
    assert obj.method == "LSODA" and obj.method_choice is None
    sol = dl.simulate(m, d[0].t, [0.44, 4.6], theta, method="DOP853")
    assert sol.method == "DOP853" and sol.method_choice is None
    with pytest.raises(dl.OptionError,
                       match=r"is not a solve_ivp method nor 'auto'; use one of \['auto'"):
        dl.fit(m, d, method="rk45", progress=False)
