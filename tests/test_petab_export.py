"""dl.petab.save: a dynlearn model and dataset written as PEtab (and PEtab SciML) load back
with dl.petab.load to the likelihood dynlearn computes itself: the Gaussian negative
log-likelihood with normalisation constants, from dl.simulate of the same model, here at
tight tolerances; gradients against central differences."""

import math

import numpy as np
import pytest
import sympy as sp

pytest.importorskip("libsbml")
pytest.importorskip("petab")
pytest.importorskip("sbmlmath")
pytest.importorskip("yaml")

import dynlearn as dl  # noqa: E402
import dynlearn.petab as dp  # noqa: E402
from dynlearn.errors import PetabError  # noqa: E402
from dynlearn.petab.export import formula  # noqa: E402
from dynlearn.testing import central_difference  # noqa: E402

x, y, k, b, T = sp.symbols("x y k b t")
TOL = dict(rtol=1e-11, atol=1e-13)


def _simulate(model, exp, y0, theta=None):
    sol = dl.simulate(model, exp.t, y0, theta=theta, method="DOP853", rtol=1e-12, atol=1e-13)
    return dict(zip(sol.observable_names, sol.observables.T))


def _gaussian_nllh(model, dataset, y0s, sigma, theta=None):
    """Sum over measured values of 0.5 log(2 pi s^2) + 0.5 ((m - h) / s)^2; ``sigma`` maps an
    observable to its noise level, or to None when the data's ``<obs>_sigma`` column gives
    it."""
    total = 0.0
    for exp, y0 in zip(dataset, y0s):
        h = _simulate(model, exp, y0, theta)
        for o, m in exp.columns.items():
            if o not in h:
                continue
            s = exp.columns[f"{o}_sigma"] if sigma[o] is None else sigma[o]
            ok = np.isfinite(m)
            r = (m - h[o])[ok] / np.broadcast_to(s, m.shape)[ok]
            total += np.sum(0.5 * np.log(2 * np.pi * np.broadcast_to(s, m.shape)[ok] ** 2)
                            + 0.5 * r ** 2)
    return float(total)


def _dataset(model, y0s, times, noise, seed=0, sigma_columns=False):
    rng = np.random.default_rng(seed)
    exps = []
    for i, (y0, t) in enumerate(zip(y0s, times)):
        h = _simulate(model, dl.Experiment("tmp", t, {}), y0)
        cols = {o: v + rng.normal(0, noise, v.size) for o, v in h.items()}
        if sigma_columns:
            for o in h:
                cols[f"{o}_sigma"] = noise * (1.0 + rng.random(t.size))
        exps.append(dl.Experiment(f"exp{i + 1}", t, cols, y0=np.array(y0, dtype=float)))
    return dl.Dataset(exps)


# --- pure physics ------------------------------------------------------------------------------
def _physics():
    return dl.HybridModel(
        states=[x, y], rhs={x: -k * x, y: k * x - b * y},
        params={k: dl.Parameter(0.7, transform="log"), b: dl.Parameter(0.3, min=0.0, max=5.0)},
        observables={"total": x + y, "x": x})


Y0S = [[1.0, 0.0], [2.0, 0.5]]


@pytest.fixture(scope="module")
def physics(tmp_path_factory):
    model = _physics()
    t = np.linspace(0.0, 4.0, 9)
    ds = _dataset(model, Y0S, [t, t[1:]], 0.05)
    d = tmp_path_factory.mktemp("physics")
    path = dp.save(model, ds, d)
    return model, ds, dp.load(path, **TOL), d


def test_physics_tables(physics):
    model, ds, prob, d = physics
    assert prob.x_names == ["k", "b", "sigma_total", "sigma_x_obs"]
    assert prob.x_scales == ["log", "lin", "log10", "log10"]
    assert prob.x_nominal[:2] == pytest.approx([math.log(0.7), 0.3], rel=1e-15)
    # dl.Parameter's bounds; an open log bound becomes value / 1e3 .. value * 1e3
    assert prob.upper[1] == 5.0 and prob.lower[1] == 0.0
    assert np.exp([prob.lower[0], prob.upper[0]]) == pytest.approx([7e-4, 700.0])
    n_rows = sum(np.isfinite(v).sum() for e in ds for v in e.columns.values())
    assert len(prob.simulate(prob.x_nominal)) == n_rows
    import libsbml
    import petab.v1 as petab
    assert not petab.lint_problem(petab.Problem.from_yaml(str(d / "problem.yaml")))
    doc = libsbml.readSBMLFromFile(str(d / "model.xml"))
    doc.checkConsistency()
    errors = [doc.getError(i).getMessage() for i in range(doc.getNumErrors())
              if doc.getError(i).getSeverity() >= libsbml.LIBSBML_SEV_ERROR]
    assert errors == []


def test_physics_likelihood_matches_dynlearn(physics):
    model, ds, prob, _ = physics
    for x0 in (prob.x_nominal, prob.x_nominal + np.array([0.3, 0.2, -0.4, 0.1])):
        theta = np.array([math.exp(x0[0]), x0[1]])
        sigma = {"total": 10 ** x0[2], "x": 10 ** x0[3]}
        ref = _gaussian_nllh(model, ds, Y0S, sigma, theta)
        assert prob.nllh(x0) == pytest.approx(ref, rel=1e-8)


def test_physics_gradient_matches_central_differences(physics):
    _, _, prob, _ = physics
    x0 = prob.x_nominal + np.array([0.2, -0.1, 0.3, -0.2])
    f, g = prob.loss_and_grad(x0)
    assert f == pytest.approx(prob.nllh(x0), rel=1e-8)   # with sensitivities: other steps
    fd = central_difference(prob.nllh, x0, step=1e-5, relative=False)
    assert g == pytest.approx(fd, rel=1e-5, abs=1e-6)


def test_known_sigma_per_row_estimated_initial_states(tmp_path):
    model = _physics()
    t = np.linspace(0.0, 3.0, 7)
    ds = _dataset(model, Y0S, [t, t], 0.05, seed=1, sigma_columns=True)
    # some rows without their own sigma: they take the observable's (given) one
    ds[0].columns["x_sigma"][2:4] = np.nan
    path = dp.save(model, ds, tmp_path, y0="estimate", y0_init={"y": 0.2},
                   sigma={"total": 0.2, "x": 0.07})
    prob = dp.load(path, **TOL)
    assert prob.x_names == ["k", "b", "y0_x_exp1", "y0_y_exp1", "y0_x_exp2", "y0_y_exp2"]
    # as dl.fit(y0="estimate") starts: the first row where it measures a state (x), else
    # y0_init (y is measured by no observable that is a state)
    first = [ds[0].columns["x"][0], 0.2, ds[1].columns["x"][0], 0.2]
    assert prob.x_nominal[2:] == pytest.approx(first, rel=1e-15)
    y0s = [prob.x_nominal[2:4], prob.x_nominal[4:6]]
    for e in ds:
        e.columns["x_sigma"] = np.where(np.isfinite(e.columns["x_sigma"]),
                                        e.columns["x_sigma"], 0.07)
    ref = _gaussian_nllh(model, ds, y0s, {"total": None, "x": None})
    assert prob.nllh(prob.x_nominal) == pytest.approx(ref, rel=1e-8)


def test_a_gaussian_fit_exports_its_likelihood_and_noise_levels(tmp_path):
    """After dl.fit(loss="gaussian"), the noise levels stay estimated parameters starting at
    the fitted ones: the PEtab likelihood there is the fit's loss, and the closed-form noise
    levels dynlearn fitted are where its gradient in the sigmas vanishes."""
    model = _physics()
    t = np.linspace(0.0, 4.0, 9)
    ds = _dataset(model, Y0S, [t, t], 0.05, seed=6)
    res = dl.fit(model, ds, loss="gaussian", progress=False, rtol=1e-10, atol=1e-12)
    prob = dp.load(dp.save(model, ds, tmp_path, theta=res), **TOL)
    assert prob.x_names == ["k", "b", "sigma_total", "sigma_x_obs"]
    assert 10 ** prob.x_nominal[2:] == pytest.approx([res.sigma["total"], res.sigma["x"]],
                                                     rel=1e-12)
    f, g = prob.loss_and_grad(prob.x_nominal)
    assert f == pytest.approx(res.loss, rel=1e-8)
    assert np.abs(g[2:]).max() < 1e-6


def _nllh_per_experiment(model, dataset, y0s, sigma_of, theta=None):
    """:func:`_gaussian_nllh` with the noise levels ``sigma_of(experiment name)``."""
    return sum(_gaussian_nllh(model, dl.Dataset([e]), [y0], sigma_of(e.name), theta)
               for e, y0 in zip(dataset, y0s))


def test_a_noise_level_shared_by_observables(tmp_path):
    model = _physics()
    t = np.linspace(0.0, 4.0, 9)
    ds = _dataset(model, Y0S, [t, t[1:]], 0.05, seed=8)
    prob = dp.load(dp.save(model, ds, tmp_path, sigma={"total": "s", "x": "s"}), **TOL)
    assert prob.x_names == ["k", "b", "sigma_s"]
    pooled = np.concatenate([e.columns[o] for e in ds for o in ("total", "x")])
    assert 10 ** prob.x_nominal[2] == pytest.approx(np.std(pooled), rel=1e-12)
    for x0 in (prob.x_nominal, prob.x_nominal + np.array([0.3, 0.2, -0.4])):
        theta = np.array([math.exp(x0[0]), x0[1]])
        s = 10 ** x0[2]
        ref = _gaussian_nllh(model, ds, Y0S, {"total": s, "x": s}, theta)
        assert prob.nllh(x0) == pytest.approx(ref, rel=1e-8)
    # the shared level given, known
    prob = dp.load(dp.save(model, ds, tmp_path, sigma={"total": "s", "x": "s", "s": 0.07}),
                   **TOL)
    assert prob.x_names == ["k", "b"]
    ref = _gaussian_nllh(model, ds, Y0S, {"total": 0.07, "x": 0.07})
    assert prob.nllh(prob.x_nominal) == pytest.approx(ref, rel=1e-8)


def test_noise_levels_per_experiment(tmp_path):
    import petab.v1 as petab

    model = _physics()
    t = np.linspace(0.0, 4.0, 9)
    ds = _dataset(model, Y0S, [t, t[1:]], 0.05, seed=9)
    path = dp.save(model, ds, tmp_path, sigma={"total": "s", "s@exp2": 0.2, "x": 0.06},
                   sigma_by="experiment")
    assert not petab.lint_problem(petab.Problem.from_yaml(str(path)))
    prob = dp.load(path, **TOL)
    assert prob.x_names == ["k", "b", "sigma_s_exp1"]
    x0 = prob.x_nominal + np.array([0.1, -0.1, 0.3])
    theta = np.array([math.exp(x0[0]), x0[1]])
    levels = {"exp1": {"total": 10 ** x0[2], "x": 0.06}, "exp2": {"total": 0.2, "x": 0.06}}
    ref = _nllh_per_experiment(model, ds, Y0S, levels.get, theta)
    assert prob.nllh(x0) == pytest.approx(ref, rel=1e-8)
    # estimated everywhere: one parameter per observable and experiment
    prob = dp.load(dp.save(model, ds, tmp_path, sigma_by="experiment"), **TOL)
    assert prob.x_names == ["k", "b", "sigma_total_exp1", "sigma_total_exp2",
                            "sigma_x_obs_exp1", "sigma_x_obs_exp2"]
    x0 = prob.x_nominal + np.array([0.0, 0.0, 0.1, -0.2, 0.3, -0.1])
    s = 10 ** x0[2:]
    ref = _nllh_per_experiment(model, ds, Y0S, {"exp1": {"total": s[0], "x": s[2]},
                                                "exp2": {"total": s[1], "x": s[3]}}.get)
    assert prob.nllh(x0) == pytest.approx(ref, rel=1e-8)


@pytest.mark.parametrize("sigma, sigma_by", [({"total": "s", "x": "s"}, None),
                                             (None, "experiment"),
                                             ({"total": "s", "x": "s"}, "experiment")],
                         ids=["shared", "per-experiment", "shared-per-experiment"])
def test_a_fit_with_grouped_noise_levels_exports_its_likelihood(tmp_path, sigma, sigma_by):
    """dl.fit estimates shared and per-experiment noise levels in closed form; exported
    from its result they are PEtab noise parameters starting at the fitted values: the
    likelihood there is the fit's loss, and its gradient in the noise levels vanishes."""
    model = _physics()
    t = np.linspace(0.0, 4.0, 9)
    ds = _dataset(model, Y0S, [t, t], 0.05, seed=6)
    res = dl.fit(model, ds, loss="gaussian", sigma=sigma, sigma_by=sigma_by, progress=False,
                 rtol=1e-10, atol=1e-12)
    groups = res.config["noise_groups"]
    prob = dp.load(dp.save(model, ds, tmp_path, theta=res), **TOL)
    # one noise parameter per fitted level, named after it, at its fitted value
    table = prob.petab_problem.parameter_df
    names = list(table.loc[prob.x_names[2:], "parameterName"])
    assert sorted(names) == sorted(f"sigma[{g}]" for g in groups)
    assert 10 ** prob.x_nominal[2:] == pytest.approx([res.sigma[n[6:-1]] for n in names],
                                                     rel=1e-12)
    f, g = prob.loss_and_grad(prob.x_nominal)
    assert f == pytest.approx(res.loss, rel=1e-8)
    assert np.abs(g[2:]).max() < 1e-6


def test_noise_levels_petab_cannot_take_are_named(tmp_path):
    model = _physics()
    t = np.linspace(0.0, 2.0, 5)
    ds = _dataset(model, Y0S, [t, t], 0.05, seed=10)
    with pytest.raises(PetabError, match=r"sigma names \['q'\]"):
        dp.save(model, ds, tmp_path, sigma={"total": "s", "q": 0.1})
    with pytest.raises(PetabError, match="shares the noise level 'x'"):
        dp.save(model, ds, tmp_path, sigma={"total": "x", "x": "s"})
    with pytest.raises(PetabError, match="sigma_by='hour'"):
        dp.save(model, ds, tmp_path, sigma_by="hour")


def test_start_time_of_a_time_dependent_model(tmp_path):
    """dynlearn starts an experiment at its first time; PEtab at 0: the equations keep the
    experiment's own clock through a per-condition t_start."""
    model = dl.HybridModel(states=[x], rhs={x: -k * x + sp.sin(T)},
                           params={k: dl.Parameter(0.5, transform="log")},
                           observables={"xt": x + 0.1 * T})
    ds = _dataset(model, [[1.0], [0.5]], [np.linspace(1.0, 4.0, 7), np.linspace(0.0, 2.0, 5)],
                  0.05, seed=2)
    prob = dp.load(dp.save(model, ds, tmp_path, sigma=0.05), **TOL)
    ref = _gaussian_nllh(model, ds, [[1.0], [0.5]], {"xt": 0.05})
    assert prob.nllh(prob.x_nominal) == pytest.approx(ref, rel=1e-8)


def test_names_that_are_not_sbml_ids(tmp_path):
    """Greek letters, subscripts and names SBML reserves become valid, unique ids."""
    tm, alpha, lam = sp.symbols("time α λ₁")
    model = dl.HybridModel(states=[tm, alpha], rhs={tm: -lam * tm, alpha: lam * tm},
                           params={lam: dl.Parameter(0.4, transform="log")})
    t = np.linspace(0.0, 2.0, 5)
    ds = _dataset(model, [[1.0, 0.0]], [t], 0.05, seed=7)
    prob = dp.load(dp.save(model, ds, tmp_path, sigma=0.05), **TOL)
    assert prob.x_names == ["lamda1"]      # Unicode spells it GREEK SMALL LETTER LAMDA
    assert prob.sbml.states == ["time_", "alpha"]
    assert prob.nllh(prob.x_nominal) == pytest.approx(
        _gaussian_nllh(model, ds, [[1.0, 0.0]], {"time": 0.05, "α": 0.05}), rel=1e-8)


# --- hybrid (PEtab SciML) ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def hybrid(tmp_path_factory):
    pytest.importorskip("h5py")
    pytest.importorskip("autograd")
    nn = dl.MLP("nn", inputs=[x, y ** 2], outputs=1, hidden=[3], activation="tanh", seed=1,
                scale=0.5)
    model = dl.HybridModel(states=[x, y], rhs={x: -k * x + nn[0], y: x - b * y},
                           params={k: dl.Parameter(0.7, transform="log"), b: 0.5},
                           observables={"x": x, "y": y})
    t = np.linspace(0.0, 2.0, 5)
    ds = _dataset(model, Y0S, [t, t], 0.05, seed=3)
    d = tmp_path_factory.mktemp("hybrid")
    path = dp.save(model, ds, d, sigma={"x": 0.05, "y": 0.1})
    return model, ds, dp.load(path, **TOL)


def test_hybrid_layout_and_weights(hybrid):
    model, _, prob = hybrid
    assert prob.x_names[:2] == ["k", "b"]
    assert len(prob.x_names) == 2 + model.networks[0].n_weights
    # PyTorch layout: Linear.weight is (out, in), dynlearn's W0 is (in, out)
    W0, b0 = model.networks[0].unflatten(model.networks[0].weights)[0]
    assert prob.x_nominal[2:8] == pytest.approx(W0.T.ravel(), rel=1e-15)
    assert prob.x_nominal[8:11] == pytest.approx(b0, rel=1e-15)


def test_hybrid_likelihood_and_gradient(hybrid):
    model, ds, prob = hybrid
    sigma = {"x": 0.05, "y": 0.1}
    ref = _gaussian_nllh(model, ds, Y0S, sigma)
    assert prob.nllh(prob.x_nominal) == pytest.approx(ref, rel=1e-8)
    # another point: k, b and the weights moved (theta = physical values then weights)
    rng = np.random.default_rng(4)
    x1 = prob.x_nominal + rng.normal(0, 0.1, prob.x_nominal.size)
    arrays, off = [], 2
    for W, _ in model.networks[0].unflatten(model.networks[0].weights):
        n_in, n_out = W.shape
        arrays += [x1[off:off + n_in * n_out].reshape(n_out, n_in).T.ravel(),
                   x1[off + n_in * n_out:off + n_in * n_out + n_out]]
        off += n_in * n_out + n_out
    theta = np.r_[math.exp(x1[0]), x1[1], np.concatenate(arrays)]
    assert prob.nllh(x1) == pytest.approx(_gaussian_nllh(model, ds, Y0S, sigma, theta),
                                          rel=1e-8)
    f, g = prob.loss_and_grad(x1)
    fd = central_difference(prob.nllh, x1, step=1e-5, relative=False)
    assert g == pytest.approx(fd, rel=1e-5, abs=1e-5)


def test_hybrid_shared_noise_level_and_no_levels_per_experiment(tmp_path):
    pytest.importorskip("h5py")
    pytest.importorskip("autograd")
    nn = dl.MLP("nn", inputs=[x], outputs=1, hidden=[2], activation="tanh", seed=1, scale=0.5)
    model = dl.HybridModel(states=[x, y], rhs={x: -k * x + nn[0], y: x - b * y},
                           params={k: dl.Parameter(0.7, transform="log"), b: 0.5},
                           observables={"x": x, "y": y})
    t = np.linspace(0.0, 2.0, 5)
    ds = _dataset(model, Y0S, [t, t], 0.05, seed=3)
    prob = dp.load(dp.save(model, ds, tmp_path, sigma={"x": "s", "y": "s"}), **TOL)
    assert prob.x_names[:3] == ["k", "b", "sigma_s"]
    x1 = prob.x_nominal.copy()
    x1[2] += 0.2
    s = 10 ** x1[2]
    assert prob.nllh(x1) == pytest.approx(_gaussian_nllh(model, ds, Y0S, {"x": s, "y": s}),
                                          rel=1e-8)
    with pytest.raises(PetabError, match="per experiment.*noiseParameters"):
        dp.save(model, ds, tmp_path / "e", sigma_by="experiment")


@pytest.mark.parametrize("activation", ["rbf", "softplus", "swish", "relu", "sigmoid",
                                        "identity"])
def test_every_mlp_activation_round_trips(tmp_path, activation):
    pytest.importorskip("h5py")
    pytest.importorskip("autograd")
    nn = dl.MLP("nn", inputs=[x], outputs=1, hidden=[2], activation=activation, seed=2)
    model = dl.HybridModel(states=[x], rhs={x: -x + nn[0]})
    ds = _dataset(model, [[1.0]], [np.linspace(0.0, 1.0, 4)], 0.05, seed=5)
    prob = dp.load(dp.save(model, ds, tmp_path, sigma=0.05), **TOL)
    ref = _gaussian_nllh(model, ds, [[1.0]], {"x": 0.05})
    assert prob.nllh(prob.x_nominal) == pytest.approx(ref, rel=1e-8)


# --- formulas and what PEtab cannot express ---------------------------------------------------
EXPRS = [sp.exp(-x) * sp.log(y), sp.sin(x) ** 2 + y ** sp.Rational(1, 3), x ** 2.5,
         sp.Piecewise((x, x > 0.5), (y, y < 0.3), (x * y, True)), sp.Max(x, y, 0.7),
         sp.Min(x, y) + sp.Abs(x - y) + sp.tanh(x) + sp.atan(y),
         sp.sign(x - 0.4) + sp.Heaviside(y - 0.6, sp.Rational(1, 2)),
         sp.Piecewise((1.0, sp.And(x > 0.2, sp.Or(y < 0.5, sp.Not(x > 0.9)))), (0, True)),
         -3 * x / (1e-5 + y), sp.sqrt(x) * sp.pi + sp.E ** y]


@pytest.mark.parametrize("expr", EXPRS, ids=[str(i) for i in range(len(EXPRS))])
def test_formula_round_trips_through_libsbml_and_petab_math(expr):
    import libsbml
    import sbmlmath
    from petab.v1.math import sympify_petab

    ids = {x: "x", y: "y"}
    doc = libsbml.SBMLDocument(3, 2)
    rule = doc.createModel().createAssignmentRule()
    rule.setVariable("v")
    rule.setMath(libsbml.parseL3Formula(formula(expr, ids, "sbml")))
    back_sbml = sbmlmath.sbml_math_to_sympy(rule)
    back_petab = sympify_petab(formula(expr, ids, "petab"))
    f0 = sp.lambdify([x, y], expr)
    names = {s.name: s for s in (x, y)}
    for back in (back_sbml, back_petab):
        back = back.xreplace({s: names[s.name] for s in back.free_symbols})
        f1 = sp.lambdify([x, y], back)
        for xv, yv in np.random.default_rng(0).uniform(0.05, 1.0, (20, 2)):
            assert float(f1(xv, yv)) == pytest.approx(float(f0(xv, yv)), rel=1e-14, abs=1e-15)


def test_what_petab_cannot_express_is_named(tmp_path):
    t = np.linspace(0, 1, 3)
    ds = dl.Dataset([dl.Experiment("e", t, {"x": np.ones(3), "u": np.zeros(3)},
                                   y0=np.array([1.0]))])
    u = sp.Symbol("u")
    with pytest.raises(PetabError, match=r"inputs \['u'\]"):
        dp.save(dl.HybridModel(states=[x], rhs={x: -x + u}, inputs=[u]), ds, tmp_path)
    net = dl.Network("custom", inputs=[x], outputs=1, fun=lambda w, v: w[0] * v[..., :1],
                     weights=[0.5])
    with pytest.raises(PetabError, match="network 'custom' is a Network"):
        dp.save(dl.HybridModel(states=[x], rhs={x: -net[0]}), ds, tmp_path)
    with pytest.raises(PetabError, match="erf"):
        dp.save(dl.HybridModel(states=[x], rhs={x: -sp.erf(x)}), ds, tmp_path)
