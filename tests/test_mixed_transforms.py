"""A residual transform per observable (``transform={"A": "log", "B": "log10"}``, issue #14):
residuals ``g_k(model) - g_k(data)`` with ``g_k`` the identity, ``ln`` or ``log10`` per
observable, in one loss, its gradients, noise estimates, results, checkpoints, model files
and the PEtab export."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import sympy as sp

import dynlearn as dl
from dynlearn.objective.losses import Gaussian, LeastSquares, LogLeastSquares, loss_from_name
from dynlearn.testing import central_difference, relative_error

x, y, k1, k2 = sp.symbols("x y k1 k2")
a, b, c, d = sp.symbols("alpha beta gamma delta")
TR = {"A": "log", "B": "log10"}          # C stays on the linear scale
TIGHT = dict(rtol=1e-10, atol=1e-10)


# --- a Lotka-Volterra model with a log, a log10 and a linear observable -----------------------
def _lv():
    return dl.HybridModel(states=[x, y], rhs={x: a * x - b * x * y, y: c * x * y - d * y},
                          params={a: 1.3, b: 0.9, c: 0.8, d: 1.8},
                          observables={"A": x, "B": y, "C": x + 0.5 * y})


def _lv_data(seed=1):
    t = np.linspace(0, 5, 21)
    sol = dl.simulate(_lv(), t, [0.44, 4.6], **TIGHT)
    h = dict(zip(sol.observable_names, sol.observables.T))
    rng = np.random.default_rng(seed)
    cols = {"A": h["A"] * np.exp(0.1 * rng.standard_normal(t.size)),
            "B": h["B"] * 10 ** (0.05 * rng.standard_normal(t.size)),
            "C": h["C"] + 0.05 * rng.standard_normal(t.size)}
    return dl.Dataset([dl.Experiment("e", t, cols, y0=np.array([0.44, 4.6]))])


THETA = np.array([1.2, 1.0, 0.7, 1.7])


@pytest.mark.parametrize("loss", ["ls", "gaussian"])
@pytest.mark.parametrize("method, sensitivity", [
    ("RK45", dl.Adjoint()),                # the discrete adjoint of RK45
    ("LSODA", dl.Adjoint()),               # the continuous adjoint
    ("LSODA", dl.ForwardSensitivity()),
])
def test_gradient_with_log_log10_and_linear_observables(loss, method, sensitivity):
    model, data = _lv(), _lv_data()
    kw = dict(loss=loss, transform=TR, method=method, **TIGHT)
    v, g = dl.loss_and_grad(model, data, THETA, sensitivity, **kw)
    assert v == pytest.approx(dl.loss(model, data, THETA, **kw), rel=1e-8)
    fd = central_difference(lambda z: dl.loss(model, data, z, **kw), THETA, step=1e-4,
                            order=4)
    assert relative_error(g, fd) < 1e-7       # measured 6e-10 to 1.2e-8


def test_the_residuals_are_those_of_each_observables_scale():
    model, data = _lv(), _lv_data()
    sol = dl.simulate(model, data[0].t, [0.44, 4.6], theta=THETA, **TIGHT)
    h = dict(zip(sol.observable_names, sol.observables.T))
    e = data[0].columns
    expected = (np.sum((np.log(h["A"]) - np.log(e["A"])) ** 2)
                + np.sum((np.log10(h["B"]) - np.log10(e["B"])) ** 2)
                + np.sum((h["C"] - e["C"]) ** 2))
    got = dl.loss(model, data, THETA, transform=TR, **TIGHT)
    assert got == pytest.approx(expected, rel=1e-7)


def test_loss_log_is_every_observable_on_the_log_scale():
    model, data = _lv(), _lv_data()
    ref = dl.loss_and_grad(model, data, THETA, dl.Adjoint(), loss="log", **TIGHT)
    for transform in ("log", {"A": "log", "B": "log", "C": "log"}):
        v, g = dl.loss_and_grad(model, data, THETA, dl.Adjoint(), loss="ls",
                                transform=transform, **TIGHT)
        assert v == pytest.approx(ref[0], rel=1e-12)
        np.testing.assert_allclose(g, ref[1], rtol=1e-12)
    # and a redundant transform with loss="log" is accepted
    assert dl.loss(model, data, THETA, loss="log", transform={"A": "log"}, **TIGHT) == \
        pytest.approx(ref[0], rel=1e-12)


def test_the_loss_object_acts_column_by_column():
    loss = LeastSquares(TR).bind(["A", "B", "C"])
    assert loss.transforms == {"A": "log", "B": "log10", "C": "lin"}
    assert loss.transform == "mixed" and LogLeastSquares().transform == "log"
    v = np.array([[2.0, 3.0, -1.0], [0.5, 100.0, 4.0]])
    mask = np.ones_like(v, dtype=bool)
    gv = loss.g(v, mask)
    np.testing.assert_allclose(gv[:, 0], np.log(v[:, 0]))
    np.testing.assert_allclose(gv[:, 1], np.log10(v[:, 1]))
    np.testing.assert_array_equal(gv[:, 2], v[:, 2])        # negative values are fine on lin
    # g(shifted(v, s)) = g(v) + s on every column (how bootstrap resamples and bands move)
    step = np.array([[0.1, -0.2, 0.3], [-0.4, 0.5, -0.6]])
    np.testing.assert_allclose(loss.g(loss.shifted(v, step), mask), gv + step, rtol=1e-13)
    # chain = g' (against central differences, entrywise)
    h = 1e-6 * np.abs(v)
    fd = (loss.g(v + h, mask) - loss.g(v - h, mask)) / (2 * h)
    np.testing.assert_allclose(loss.dg(v, mask), fd, rtol=1e-8)
    # -log g'(data): 0 on lin, log y on log, log(y ln 10) on log10
    assert loss.log_jacobian(v, mask) == pytest.approx(
        np.log(v[:, 0]).sum() + np.log(v[:, 1] * math.log(10)).sum(), rel=1e-13)
    # an entry outside the mask is never read: a non-positive one there is no rejection
    masked = mask.copy()
    masked[0, 0] = False
    v2 = v.copy()
    v2[0, 0] = -5.0
    loss.g(v2, masked)
    with pytest.raises(Exception, match="non-positive prediction under transform 'log' of 'A'"):
        loss.g(v2, mask)


def test_gaussian_noise_levels_are_estimated_on_each_scale():
    """The closed form ``sigma^2 = SS / n`` of each observable's residuals on its own scale,
    and the reported loss is the negative log-likelihood of the data on their own scale
    (PEtab's log-normal and log10-normal noise: ``+ log y`` and ``+ log(y ln 10)``)."""
    model, data = _lv(), _lv_data()
    r = dl.fit(model, data, loss="gaussian", transform=TR, y0=[0.44, 4.6], progress=False,
               **TIGHT)
    assert r.config["transform"] == TR
    assert "residual scales: A log, B log10; the others linear" in r.summary()
    assert f"A={r.sigma['A']:.4g} (log scale)" in r.summary()
    res = r.residuals()
    nll = 0.0
    for o, f in (("A", np.log), ("B", np.log10), ("C", lambda v: v)):
        rows = res[res["observable"] == o]
        dd = f(rows["data"].to_numpy()) - f(rows["fitted"].to_numpy())
        s2 = float(np.mean(dd ** 2))
        assert r.sigma[o] == pytest.approx(math.sqrt(s2), rel=1e-9)
        # the diagnostics judge each observable on its own scale too
        fit_o = next(f for f in r.diagnostics.observables if f.name == o)
        assert fit_o.rms == pytest.approx(math.sqrt(s2), rel=1e-6)
        nll += 0.5 * len(dd) * (math.log(2 * math.pi * s2) + 1.0)
    e = data[0].columns
    nll += np.log(e["A"]).sum() + np.log(e["B"] * math.log(10)).sum()
    assert r.loss == pytest.approx(nll, rel=1e-9)
    # dl.loss with the same options measures the fit's loss
    assert dl.loss(r.model, data, loss="gaussian", transform=TR, y0=[0.44, 4.6], **TIGHT) == \
        pytest.approx(r.loss, rel=1e-9)


# --- recovery: multiplicative noise on one observable, additive on the other -------------
def _decay():
    return dl.HybridModel(
        states=[x, y], rhs={x: -k1 * x, y: k1 * x - k2 * y},
        params={k1: dl.Parameter(0.5, min=0, transform="log"),
                k2: dl.Parameter(0.5, min=0, transform="log")},
        observables={"A": x, "C": y})


def _decay_data(seed):
    t = np.linspace(0, 8, 25)
    sol = dl.simulate(_decay().with_params(k1=1.1, k2=0.35), t, [10.0, 0.0], **TIGHT)
    rng = np.random.default_rng(seed)
    A = sol.observables[:, 0] * np.exp(0.3 * rng.standard_normal(t.size))   # 30 %, 4 decades
    C = sol.observables[:, 1] + 0.3 * rng.standard_normal(t.size)
    return dl.Dataset([dl.Experiment("e", t, {"A": A, "C": C}, y0=np.array([10.0, 0.0]))])


def test_the_right_transforms_recover_the_parameters_better_than_all_linear():
    """A spans four decades with 30 % multiplicative noise, C has additive noise. Over seeds
    0-11 the k1 error of the mixed fit was smaller than the all-linear fit's in 12 of 12
    (RMS 0.011 against 0.047; k2, which C determines, the same); asserted on seed 0."""
    truth = np.array([1.1, 0.35])
    data = _decay_data(0)
    mixed = dl.fit(_decay(), data, loss="gaussian", transform={"A": "log"}, y0=[10.0, 0.0],
                   progress=False)
    linear = dl.fit(_decay(), data, loss="gaussian", y0=[10.0, 0.0], progress=False)
    est, se = mixed.params["value"].to_numpy(), mixed.params["stderr"].to_numpy()
    assert np.all(np.abs(est - truth) < 3 * se)
    err_lin = abs(linear.params["value"].to_numpy()[0] - truth[0])
    assert abs(est[0] - truth[0]) < 0.25 * err_lin
    # the prediction band of the log observable is multiplicative (and positive)
    p = mixed.predict(np.linspace(0.5, 8, 5))
    assert np.all(p["A_pred_lower"] > 0)
    np.testing.assert_allclose(p["A"] / p["A_pred_lower"], p["A_pred_upper"] / p["A"],
                               rtol=1e-10)
    np.testing.assert_allclose(p["C"] - p["C_pred_lower"], p["C_pred_upper"] - p["C"],
                               rtol=1e-10)


def test_bootstrap_resamples_each_observable_on_its_scale():
    """Residual resampling adds resampled log residuals to A multiplicatively: its replicates
    stay positive (its values reach 1e-3 beside residuals of 30 %; an additive
    resample would make some negative, and the refit under the log transform refuse them),
    and every refit keeps the transforms."""
    boot = dl.bootstrap(_decay(), _decay_data(0), n=3, kind="residuals", loss="gaussian",
                        transform={"A": "log"}, y0=[10.0, 0.0], progress=False)
    table = boot.estimates
    assert bool(table["success"].all())
    assert np.all(np.isfinite(table[["k1", "k2"]].to_numpy()))


# --- saved results, checkpoints, model files ------------------------------------------------
def test_a_result_keeps_its_transforms(tmp_path):
    data = _decay_data(1)
    r = dl.fit(_decay(), data, loss="gaussian", transform={"A": "log10"}, y0=[10.0, 0.0],
               progress=False)
    r.save(tmp_path / "fit")
    back = dl.load_result(tmp_path / "fit")
    assert back.config["transform"] == {"A": "log10"}
    assert back.objective().loss.transforms == {"A": "log10", "C": "lin"}
    np.testing.assert_allclose(back.residuals()["scaled"], r.residuals()["scaled"],
                               rtol=1e-12)
    # a fit without transforms records none (as results saved before they existed)
    plain = dl.fit(_decay(), data, y0=[10.0, 0.0], progress=False)
    plain.save(tmp_path / "plain")
    meta = json.loads((tmp_path / "plain.json").read_text())
    assert "transform" not in meta["config"]
    assert dl.load_result(tmp_path / "plain").objective().loss.transform == "identity"


def test_the_report_says_each_observables_scale(tmp_path):
    pytest.importorskip("matplotlib")
    r = dl.fit(_decay(), _decay_data(1), loss="gaussian", transform={"A": "log10"},
               y0=[10.0, 0.0], progress=False)
    r.report(tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "Residuals (data minus model; A on the log10 scale)" in html
    assert f"A {r.sigma['A']:.3g} on the log10 scale" in html     # its noise level's scale
    ax = r.plot("residuals", observable="A")
    assert ax.get_ylabel() == "log10 residual A"
    res = r.residuals()
    rows = res[res["observable"] == "A"]
    np.testing.assert_allclose(ax.lines[-1].get_ydata(),      # the markers (after the 0 line)
                               np.log10(rows["data"]) - np.log10(rows["fitted"]), rtol=1e-12)


def test_a_checkpoint_is_resumed_only_with_its_transforms(tmp_path):
    data = _decay_data(2)
    ck = tmp_path / "ck"
    kw = dict(y0=[10.0, 0.0], progress=False, checkpoint=ck, n_starts=2, seed=0)
    dl.fit(_decay(), data, transform={"A": "log"}, **kw)
    with pytest.raises(dl.OptionError, match=r"transform=\{'A': 'log'\}, not loss='ls', "
                                             "transform=None"):
        dl.fit(_decay(), data, resume=True, **kw)
    again = dl.fit(_decay(), data, transform={"A": "log"}, resume=True, **kw)
    assert again.config["transform"] == {"A": "log"}


def test_the_model_file_passes_transforms_to_the_fit(tmp_path):
    from dynlearn.cli import fit_arguments
    from dynlearn.io.model_file import parse_model_text
    head = ('[model]\nstates = ["x", "y"]\nequations = { x = "-x", y = "x - y" }\n'
            '[model.observables]\nA = "x"\nB = "y"\n[fit]\n')
    args = SimpleNamespace(quiet=True, resume=False, maxiter=None, loss=None, method=None,
                           seed=None, max_time=None, workers=None, n_starts=None)
    mf = parse_model_text(head + 'transform = { A = "log", B = "log10" }\n')
    assert fit_arguments(mf, args, tmp_path)["transform"] == {"A": "log", "B": "log10"}
    for text, match in (('transform = { Z = "log" }\n', "'Z' is not an observable"),
                        ('transform = { A = "ln" }\n', r"'ln' is not one of \['lin', 'log'"),
                        ('loss = "log"\ntransform = { A = "lin" }\n', "loss='log'")):
        with pytest.raises(dl.ModelError, match=match):
            parse_model_text(head + text)
    args.loss = "log"      # --loss log against the file's linear A: before any output
    with pytest.raises(dl.OptionError, match="loss='log'"):
        fit_arguments(parse_model_text(head + 'transform = { A = "lin" }\n'), args, tmp_path)


# --- errors ---------------------------------------------------------------------------------
def test_errors_name_what_is_wrong():
    model, data = _lv(), _lv_data()
    with pytest.raises(dl.OptionError, match=r"loss='log'.*transform=\{'A': 'lin'\}"):
        dl.loss(model, data, loss="log", transform={"A": "lin"})
    with pytest.raises(dl.OptionError, match=r"transform names \['Z'\], which are not "
                                             r"observables; observables are \['A', 'B', 'C'\]"):
        dl.fit(model, data, transform={"Z": "log"}, progress=False)
    with pytest.raises(dl.OptionError, match=r"\{'A': 'ln'\}: unknown transforms"):
        dl.loss(model, data, transform={"A": "ln", "B": "log"})
    with pytest.raises(dl.OptionError, match="'exp': an unknown transform"):
        dl.loss(model, data, transform="exp")
    with pytest.raises(dl.OptionError, match="another transform"):
        loss_from_name(Gaussian({"A": "log"}), {"A": "log10"})
    bad = _lv_data()
    bad[0].columns["B"][3] = 0.0
    with pytest.raises(dl.DataError, match=r"transform 'log10' of 'B' needs positive data; "
                                           r"experiment 'e' has B=0.0 at t=.* \(row 4\)"):
        dl.loss(model, bad, transform=TR)
    dl.loss(model, bad, transform={"A": "log"})      # B on the linear scale: fine


# --- PEtab -------------------------------------------------------------------------------------
def test_petab_export_writes_each_observables_transformation(tmp_path):
    pytest.importorskip("libsbml")
    pytest.importorskip("petab")
    pytest.importorskip("sbmlmath")
    pytest.importorskip("yaml")
    import pandas as pd

    import dynlearn.petab as dp
    from dynlearn.errors import PetabError
    model = dl.HybridModel(states=[x, y], rhs={x: -k1 * x, y: k1 * x - k2 * y},
                           params={k1: dl.Parameter(0.5, min=0, transform="log"), k2: 0.5},
                           observables={"A": x, "B": y, "C": x + y})
    t = np.linspace(0, 6, 13)
    sol = dl.simulate(model.with_params(k1=1.1, k2=0.35), t, [10.0, 1.0], **TIGHT)
    noise = np.random.default_rng(3).standard_normal((t.size, 3))
    h = sol.observables
    data = dl.Dataset([dl.Experiment("e", t, {"A": h[:, 0] * np.exp(0.2 * noise[:, 0]),
                                              "B": h[:, 1] * 10 ** (0.1 * noise[:, 1]),
                                              "C": h[:, 2] + 0.2 * noise[:, 2]},
                                     y0=np.array([10.0, 1.0]))])
    r = dl.fit(model, data, loss="gaussian", transform=TR, y0=[10.0, 1.0], progress=False,
               rtol=1e-10, atol=1e-12)
    prob = dp.load(dp.save(model, data, tmp_path, theta=r), rtol=1e-11, atol=1e-13)
    table = pd.read_csv(tmp_path / "observables.tsv", sep="\t")
    assert dict(zip(table["observableName"], table["observableTransformation"])) == \
        {"A": "log", "B": "log10", "C": "lin"}
    # the same likelihood: the fit's loss at its optimum, where the noise levels (on each
    # observable's scale) are stationary
    f, g = prob.loss_and_grad(prob.x_nominal)
    assert f == pytest.approx(r.loss, rel=1e-8)
    assert np.abs(g[[i for i, n in enumerate(prob.x_names) if n.startswith("sigma")]]).max() \
        < 1e-5
    # a transform given to save wins; non-positive data under it is refused, named
    with pytest.raises(PetabError, match="'C' is on the log scale"):
        data[0].columns["C"][0] = -1.0
        dp.save(model, data, tmp_path / "bad", transform={"C": "log"})
