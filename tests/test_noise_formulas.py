"""Noise levels as formulas of predictions, time and estimated noise parameters
(``sigma={"x": "a + b*x"}`` with ``loss="gaussian"``)."""

import pickle
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import sympy as sp

import dynlearn as dl
from dynlearn.errors import PetabError
from dynlearn.objective.objective import Objective
from dynlearn.testing import decay_model, lotka_volterra_data
from dynlearn.testing import lotka_volterra_fit_model as lv_model

A, B, K = 0.05, 0.1, 0.7        # the simulated noise sigma = A + B*h of x = 10 exp(-K t)
FORMULA = {"x": "a + b*x"}


def decay_data(n: int = 300, seed: int = 0, a: float = A, b: float = B) -> dl.Dataset:
    """A decay measured with noise of standard deviation ``a + b*h`` (h: the true value)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 4, n)
    h = 10.0 * np.exp(-K * t)
    y = h + (a + b * h) * rng.standard_normal(n)
    return dl.Dataset.from_frame(pd.DataFrame({"t": t, "x": y}))


def hand_nll(y, h, a, b) -> float:
    """The Gaussian negative log-likelihood of data ``y`` around predictions ``h`` with
    noise ``a + b*h``, written out here independently of dynlearn."""
    s = a + b * np.asarray(h)
    r = np.asarray(y) - np.asarray(h)
    return float(np.sum(0.5 * (r / s) ** 2 + np.log(s)) + 0.5 * r.size * np.log(2 * np.pi))


@pytest.fixture(scope="module")
def formula_fit():
    data = decay_data()
    r = dl.fit(decay_model(), data, loss="gaussian", sigma=FORMULA, y0=[10.0], progress=False)
    res = r.residuals()
    return data, r, res["data"].to_numpy(), res["fitted"].to_numpy()


# --- estimation ------------------------------------------------------------------------------
def test_recovers_the_noise_parameters(formula_fit):
    """(a, b) of sigma = a + b*h are recovered within three standard errors, taken from the
    observed information (the Hessian of the likelihood in (a, b), by central differences
    here); k within three of its reported standard errors."""
    _, r, y, h = formula_fit
    assert r.success
    est = np.array([r.sigma["a"], r.sigma["b"]])
    e = 1e-5 * est
    H = np.zeros((2, 2))

    def f(i, j, di, dj):
        p = est.copy()
        p[i] += di * e[i]
        p[j] += dj * e[j]
        return hand_nll(y, h, *p)
    for i in range(2):
        for j in range(2):
            H[i, j] = (f(i, j, 1, 1) - f(i, j, 1, -1) - f(i, j, -1, 1)
                       + f(i, j, -1, -1)) / (4 * e[i] * e[j])
    se = np.sqrt(np.diag(np.linalg.inv(H)))
    assert np.all(np.abs(est - [A, B]) < 3 * se), (est, se)
    assert abs(r.params.loc["k", "value"] - K) < 3 * r.params.loc["k", "stderr"]


def test_noise_parameters_are_the_inner_optimum(formula_fit):
    """At the fitted predictions, no point of a fine grid over (a, b) has a lower
    likelihood than the fit's noise parameters, and the grid's best is next to them."""
    _, r, y, h = formula_fit
    a0, b0 = r.sigma["a"], r.sigma["b"]
    ga = np.linspace(0.5 * a0, 1.5 * a0, 201)
    gb = np.linspace(0.5 * b0, 1.5 * b0, 201)
    grid = np.array([[hand_nll(y, h, a, b) for b in gb] for a in ga])
    i, j = np.unravel_index(np.argmin(grid), grid.shape)
    best = hand_nll(y, h, a0, b0)
    assert best <= grid.min() + 1e-9
    assert abs(ga[i] - a0) <= ga[1] - ga[0] and abs(gb[j] - b0) <= gb[1] - gb[0]


def test_loss_is_the_negative_log_likelihood(formula_fit):
    """result.loss is the exact likelihood at the final point (computed by hand), and
    dl.loss with the same noise model gives it again (estimating a, b at theta)."""
    data, r, y, h = formula_fit
    assert r.loss == pytest.approx(hand_nll(y, h, r.sigma["a"], r.sigma["b"]), rel=1e-10)
    again = dl.loss(r.model, data, loss="gaussian", sigma=FORMULA, y0=[10.0])
    assert again == pytest.approx(r.loss, rel=1e-9)


def test_fit_ends_at_the_joint_likelihood_optimum(formula_fit):
    """The fit ends with a joint optimisation of the exact likelihood: there the exact
    gradient (dl.loss_and_grad, noise parameters re-estimated) vanishes, and a direct
    maximisation of the likelihood in (k, a, b) (h = 10 exp(-k t) in closed form, written
    here) finds nothing better."""
    from scipy.optimize import minimize
    data, r, y, h = formula_fit
    k = r.params.loc["k", "value"]
    _, g = dl.loss_and_grad(r.model, data, loss="gaussian", sigma=FORMULA, y0=[10.0])
    assert abs(g[0] * k) < 1e-3          # d loss / d log k: the loss is flat to 1e-3
    t = data.experiments[0].t

    def nll(p):
        hh = 10.0 * np.exp(-p[0] * t)
        return hand_nll(y, hh, p[1], p[2]) if np.all(p[1] + p[2] * hh > 0) else np.inf
    best = minimize(nll, [k, r.sigma["a"], r.sigma["b"]], method="Nelder-Mead",
                    options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
    assert r.loss <= best.fun + 1e-6
    assert best.x[0] == pytest.approx(k, rel=1e-4)


def test_loss_and_grad_is_the_exact_gradient():
    """dl.loss_and_grad's gradient follows the levels through the predictions: it is the
    derivative of dl.loss (the likelihood with a, b re-estimated at every theta)."""
    data = decay_data(n=80, seed=2)
    model = decay_model(0.6)
    kw = dict(loss="gaussian", sigma=FORMULA, y0=[10.0], rtol=1e-10, atol=1e-12)
    th = model.theta0
    v, g = dl.loss_and_grad(model, data, th, **kw)
    step = 1e-6
    fd = (dl.loss(model, data, th + step, **kw)
          - dl.loss(model, data, th - step, **kw)) / (2 * step)
    assert v == pytest.approx(dl.loss(model, data, th, **kw), rel=1e-12)
    assert g[0] == pytest.approx(fd, rel=1e-5)


def test_constant_formula_is_the_named_group():
    """sigma={"x": "s"} with s a noise parameter (named in noise_params) gives the fit
    of the closed-form noise group s, to optimizer tolerance."""
    data = decay_data(a=0.3, b=0.0, seed=5)
    grp = dl.fit(decay_model(), data, loss="gaussian", sigma={"x": "s"}, y0=[10.0],
                 progress=False)
    frm = dl.fit(decay_model(), data, loss="gaussian", sigma={"x": "s"}, y0=[10.0],
                 noise_params={"s": 1.0}, progress=False)
    assert frm.config["noise_formulas"] == {"x": "s"} and "noise_formulas" not in grp.config
    assert frm.loss == pytest.approx(grp.loss, rel=1e-7)
    assert frm.sigma["s"] == pytest.approx(grp.sigma["s"], rel=1e-5)
    assert frm.params.loc["k", "value"] == pytest.approx(grp.params.loc["k", "value"],
                                                         rel=1e-5)
    assert frm.n_params == grp.n_params == 2


def test_shared_noise_parameters():
    """One parameter in several formulas is one parameter; the levels are those of each
    observable's own prediction."""
    data = lotka_volterra_data(noise=0.1, seed=3)
    sigma = {"x": "s0 + s1*x", "y": "s0 + s1*y"}
    obj = Objective(lv_model(), data, loss="gaussian", sigma=sigma).fit_objective
    assert obj.noise_group_members() == {"s0": ["x", "y"], "s1": ["x", "y"]}
    assert obj.noise_groups[-2:] == ["s0", "s1"] and int(obj.estimated.sum()) == 2
    value = dl.loss(lv_model(), data, loss="gaussian", sigma=sigma)
    # the same by hand, at the noise parameters dl.loss estimates
    o = Objective(lv_model(), data, loss="gaussian", sigma=sigma)
    assert o.value() == value
    fo = o.fit_objective
    s0, s1 = fo.sigma_hat[-2:]
    H = fo.noise_predictions(fo.space.x0)[0]
    b = fo.bound[0]
    by_hand = sum(hand_nll(b.Y[:, k][b.mask[:, k]], H[:, k][b.mask[:, k]], s0, s1)
                  for k in range(2))
    assert value == pytest.approx(by_hand, rel=1e-10)


def test_time_in_a_formula():
    """``t`` is time: sigma = c*(1 + t) recovers c from data made that way."""
    rng = np.random.default_rng(4)
    t = np.linspace(0, 4, 400)
    h = 10.0 * np.exp(-K * t)
    data = dl.Dataset.from_frame(pd.DataFrame({"t": t, "x": h + 0.1 * (1 + t)
                                               * rng.standard_normal(t.size)}))
    r = dl.fit(decay_model(), data, loss="gaussian", sigma={"x": "c*(1 + t)"}, y0=[10.0],
               progress=False)
    # sd of the estimate of a scale from n values: c / sqrt(2n) (about 3.5 % here)
    assert r.sigma["c"] == pytest.approx(0.1, rel=3 * np.sqrt(1 / 800))


# --- reporting and round trips ------------------------------------------------------------------
def test_result_reports_the_noise_parameters(formula_fit, tmp_path):
    data, r, _, _ = formula_fit
    assert r.n_params == 3                     # k, a, b
    assert set(r.sigma) == {"a", "b"}          # x's level varies with its prediction
    assert r.config["noise_groups"] == {"a": ["x"], "b": ["x"]}
    assert "a=" in r.summary() and "b=" in r.summary()
    r.save(tmp_path / "res")
    back = dl.load_result(tmp_path / "res")
    assert back.sigma == r.sigma and back.n_params == 3
    assert back.config["noise_formulas"] == FORMULA
    assert back.residuals()["scaled"].to_numpy() == pytest.approx(
        r.residuals()["scaled"].to_numpy(), rel=1e-10)
    # results and objectives travel (Dask tasks pickle them): the formulas are rebuilt
    obj = pickle.loads(pickle.dumps(r.objective()))
    assert obj.cost(r.x) == r.objective().cost(r.x)
    assert obj.penalty() == r.objective().penalty()


def test_checkpoint_resume_continues_the_formula_fit(tmp_path):
    """A fit with a noise formula stopped after two iterations and resumed from its
    checkpoint ends where the uninterrupted fit ends."""
    data = decay_data(n=100)
    kw = dict(loss="gaussian", sigma=FORMULA, y0=[10.0], progress=False)
    ck = tmp_path / "ck"
    stopped = dl.fit(decay_model(), data, checkpoint=ck,
                     callback=lambda info: info["iteration"] >= 2, **kw)
    assert not stopped.success
    resumed = dl.fit(decay_model(), data, checkpoint=ck, resume=True, **kw)
    full = dl.fit(decay_model(), data, **kw)
    assert resumed.loss == pytest.approx(full.loss, rel=1e-7)
    for name in ("a", "b"):
        assert resumed.sigma[name] == pytest.approx(full.sigma[name], rel=1e-5)


def test_model_file_noise_formula(tmp_path):
    from dynlearn.cli import fit_arguments
    from dynlearn.io.model_file import parse_model_text
    text = ('[model]\nstates = ["x"]\nequations = { x = "-k*x" }\n\n[model.params]\n'
            'k = 0.5\n\n[noise]\nsigma = { x = "a + b*x" }\n'
            'noise_params = { a = [0.1, 1e-6, inf], b = 0.2 }\n')
    mf = parse_model_text(text)
    assert mf.noise["sigma"] == FORMULA
    assert mf.noise["noise_params"] == {"a": (0.1, 1e-6, np.inf), "b": 0.2}
    args = SimpleNamespace(quiet=True, resume=False, maxiter=None, loss=None, method=None,
                           seed=None, max_time=None, workers=None)
    kw = fit_arguments(mf, args, tmp_path)
    assert kw["loss"] == "gaussian" and kw["sigma"] == FORMULA
    assert kw["noise_params"] == mf.noise["noise_params"]
    with pytest.raises(dl.ModelError, match="start"):
        parse_model_text(text.replace("b = 0.2", "b = [0.2, 0.0]"))


def test_petab_save_writes_the_noise_formula(tmp_path):
    """dl.petab.save of a fit with a noise formula writes it as the noiseFormula, its
    parameters in the parameter table (from the fitted values): the PEtab likelihood there
    is the fit's loss, and its gradient in the noise parameters vanishes (their inner
    optimum)."""
    dp = pytest.importorskip("dynlearn.petab")
    pytest.importorskip("petab")
    data = decay_data(n=60, seed=1)
    r = dl.fit(decay_model(), data, loss="gaussian", sigma=FORMULA, y0=[10.0],
               progress=False, rtol=1e-10, atol=1e-12)
    prob = dp.load(dp.save(r.model, data, tmp_path / "p", theta=r), rtol=1e-11, atol=1e-13)
    assert prob.x_names == ["k", "a", "b"]
    obs = pd.read_csv(tmp_path / "p" / "observables.tsv", sep="\t")
    assert sp.sympify(obs["noiseFormula"].iloc[0]) == sp.sympify("a + b*x")
    assert 10 ** prob.x_nominal[1:] == pytest.approx([r.sigma["a"], r.sigma["b"]],
                                                     rel=1e-12)
    f, g = prob.loss_and_grad(prob.x_nominal)
    assert f == pytest.approx(r.loss, rel=1e-8)
    assert np.abs(g[1:]).max() < 1e-4 * np.abs(g).max() + 1e-6
    # a formula given by hand (not a fit's) is refused, saying what is written
    with pytest.raises(PetabError, match="noise formulas of a fit"):
        dp.save(decay_model(), data, tmp_path / "q", sigma=FORMULA)


# --- errors ---------------------------------------------------------------------------------------
def test_errors():
    data = decay_data(n=40)
    kw = dict(loss="gaussian", y0=[10.0])
    with pytest.raises(dl.OptionError, match=r"'k' \(a model parameter\)"):
        dl.loss(decay_model(), data, sigma={"x": "a + k*x"}, **kw)
    x, k = sp.symbols("x k")
    observed = dl.HybridModel(states=[x], rhs={x: -k * x}, params={k: 0.5},
                              observables={"y": 2 * x})
    ydata = dl.Dataset.from_frame(pd.DataFrame({"t": [0.0, 1.0, 2.0], "y": [2.0, 1.2, 0.7]}))
    with pytest.raises(dl.OptionError, match=r"'x' \(a state\)"):
        dl.loss(observed, ydata, sigma={"y": "a + b*x"}, **kw)
    with pytest.raises(dl.OptionError, match="must be positive"):
        dl.loss(decay_model(), data, sigma={"x": "a - 1"}, noise_params={"a": 0.5}, **kw)
    with pytest.raises(dl.OptionError, match="must be positive"):
        dl.loss(decay_model(), data, sigma={"x": "a"},
                noise_params={"a": (-1.0, -5.0, 5.0)}, **kw)
    with pytest.raises(dl.OptionError, match="loss='gaussian'"):
        dl.loss(decay_model(), data, sigma=FORMULA, y0=[10.0])
    with pytest.raises(dl.OptionError, match="no sigma formula uses"):
        dl.loss(decay_model(), data, sigma=FORMULA, noise_params={"c": 1.0}, **kw)
    with pytest.raises(dl.OptionError, match="without a sigma formula"):
        dl.loss(decay_model(), data, noise_params={"c": 1.0}, **kw)
    with pytest.raises(dl.OptionError, match="give a start value"):
        dl.loss(decay_model(), data, sigma=FORMULA, noise_params={"a": "big"}, **kw)
    with pytest.raises(dl.OptionError, match="within its bounds"):
        dl.loss(decay_model(), data, sigma=FORMULA, noise_params={"a": (5.0, 0.0, 1.0)},
                **kw)
    with pytest.raises(dl.OptionError, match="sigma_by"):
        dl.loss(decay_model(), data, sigma=FORMULA, sigma_by="experiment", **kw)
    with pytest.raises(dl.OptionError, match="sigma formula of 'x'"):
        dl.loss(decay_model(), data, sigma={"x": "a + * x"}, **kw)
    with pytest.raises(dl.OptionError, match="sigma formula of 'x'"):
        dl.loss(decay_model(), data, sigma={"x": "__import__('os').getcwd()"}, **kw)
    with pytest.raises(dl.OptionError, match="not observables"):
        dl.loss(decay_model(), data, sigma={"q": "a + b*q"}, **kw)
    lv = lotka_volterra_data(noise=0.1, seed=3)
    with pytest.raises(dl.OptionError, match="both a noise group and a noise parameter"):
        dl.loss(lv_model(), lv, loss="gaussian", sigma={"x": "s + b*x", "y": "s"})


def test_split_over_workers_is_refused(client):
    """A fit split over Dask workers by experiment cannot carry the formulas' levels yet:
    refused, naming the way out."""
    frames = [decay_data(n=20, seed=s).to_frame().assign(run=f"r{s}") for s in (0, 1)]
    data = dl.Dataset.from_frame(pd.concat(frames), group="run")
    with pytest.raises(dl.OptionError, match="cannot yet be split over workers"):
        dl.fit(decay_model(), data, loss="gaussian", sigma=FORMULA, y0=[10.0],
               progress=False, client=client)
