"""Noise models of a fit: noise levels shared by several observables, per experiment, and
their round trips (result files, checkpoints)."""

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

import dynlearn as dl
from dynlearn.objective.objective import Objective, parse_sigma
from dynlearn.testing import LV_TRUE, lotka_volterra_data, lotka_volterra_experiments
from dynlearn.testing import lotka_volterra_fit_model as lv_model


def gaussian_nll(residuals, s):
    """The Gaussian negative log-likelihood of ``residuals`` with one noise level ``s``,
    written out here independently of dynlearn."""
    r = np.asarray(residuals)
    return float(np.sum(0.5 * (r / s) ** 2 + np.log(s)) + 0.5 * r.size * np.log(2 * np.pi))


@pytest.fixture(scope="module")
def shared_fit():
    """x and y measured with the same noise (0.1), one shared level ``s`` estimated."""
    data = lotka_volterra_data(noise=0.1, seed=3)
    r = dl.fit(lv_model(), data, loss="gaussian", sigma={"x": "s", "y": "s"}, y0="estimate",
               progress=False)
    return data, r


# --- parsing -----------------------------------------------------------------------------
def test_parse_sigma_numbers_names_and_errors():
    known, names = parse_sigma({"x": 0.5, "y": "s"}, ["x", "y", "z"])
    assert np.isnan(known[[1, 2]]).all() and known[0] == 0.5
    assert names == ["x", "s", "z"]
    assert parse_sigma("s", ["x", "y"])[1] == ["s", "s"]
    assert parse_sigma(None, ["x"])[1] == ["x"]
    # "y" is y's own level; x may join it, but not while y keeps a different one
    assert parse_sigma({"x": "y"}, ["x", "y"])[1] == ["y", "y"]
    with pytest.raises(dl.OptionError, match="another observable"):
        parse_sigma({"x": "y", "y": "s"}, ["x", "y"])
    with pytest.raises(dl.OptionError, match="not an observable"):
        parse_sigma({"q": "s"}, ["x", "y"])


def test_shared_levels_need_a_loss_that_estimates_noise():
    data = lotka_volterra_data(noise=0.1, seed=3)
    with pytest.raises(dl.OptionError, match="loss='gaussian'"):
        dl.loss(lv_model(), data, sigma={"x": "s", "y": "s"})
    with pytest.raises(dl.OptionError, match="sigma_by"):
        dl.loss(lv_model(), data, loss="gaussian", sigma_by="run")


# --- the closed form -----------------------------------------------------------------------
def test_shared_closed_form_is_the_likelihood_maximum(shared_fit):
    """The closed-form shared level (s^2 = SS_x+y / n_x+y) is where a numerical search over s
    puts the maximum of the Gaussian likelihood of the fitted residuals; dl.loss with the
    same noise model is that maximum's negative log-likelihood (= result.loss)."""
    data, r = shared_fit
    assert r.success
    res = r.residuals()["residual"].to_numpy()
    found = minimize_scalar(lambda s: gaussian_nll(res, s), bounds=(1e-3, 1.0),
                            method="bounded", options={"xatol": 1e-10})
    assert r.sigma["s"] == pytest.approx(found.x, rel=1e-6)
    assert r.loss == pytest.approx(found.fun, rel=1e-9)
    assert r.sigma["x"] == r.sigma["y"] == r.sigma["s"]
    again = dl.loss(r.model, data, loss="gaussian", sigma={"x": "s", "y": "s"},
                    y0=list(r.y0.values())[0])
    assert again == pytest.approx(r.loss, rel=1e-9)
    # one noise parameter, not two
    separate = dl.fit(lv_model(), data, loss="gaussian", y0="estimate", progress=False)
    assert r.n_params == separate.n_params - 1


def test_shared_level_pools_observables_with_the_same_noise(shared_fit):
    """Two observables with the same true noise: the shared estimate is the pooled one,
    sqrt((SS_x + SS_y) / (n_x + n_y)) of the fit's residuals, and lies within three of its
    standard errors (sigma / sqrt(2 (n - p)), about 8 % here) of the true level."""
    _, r = shared_fit
    res = r.residuals()
    ss = res.groupby("observable")["residual"].apply(lambda v: float(np.sum(v * v)))
    n = res.groupby("observable").size()
    pooled = np.sqrt((ss["x"] + ss["y"]) / (n["x"] + n["y"]))
    assert r.sigma["s"] == pytest.approx(pooled, rel=1e-9)
    se = 0.1 / np.sqrt(2 * (n.sum() - r.n_params))
    assert abs(r.sigma["s"] - 0.1) < 3 * se
    assert "s=" in r.summary() and "(x, y)" in r.summary()


def test_objective_pools_statistics_by_group():
    """The closed form from the objective at any theta: one level for the group, equal to
    the root mean square of all the group's residuals."""
    data = lotka_volterra_data(noise=0.1, seed=3)
    theta = lv_model().with_params(**LV_TRUE).theta0
    obj = Objective(lv_model(), data, loss="gaussian", sigma="s")
    v = obj.value(theta)
    fo = obj.fit_objective
    assert fo.noise_groups == ["s"] and fo.sigma_hat.shape == (1,)
    sol = dl.simulate(lv_model().with_params(**LV_TRUE), data[0].t, [data[0].columns["x"][0],
                                                                      data[0].columns["y"][0]])
    res = np.concatenate([data[0].columns["x"] - sol.y[:, 0],
                          data[0].columns["y"] - sol.y[:, 1]])
    res = res[np.abs(res) > 0]          # the first rows are the initial state: zero residual
    n = 2 * data[0].t.size
    s = np.sqrt(np.sum(res ** 2) / n)
    assert fo.sigma_hat[0] == pytest.approx(s, rel=1e-5)
    assert v == pytest.approx(gaussian_nll(np.r_[res, np.zeros(n - res.size)], s), rel=1e-6)


def test_per_experiment_levels():
    """sigma_by="experiment": each experiment's own level, the RMS of its residuals; the
    observable's entry pools them."""
    data = lotka_volterra_experiments(2, seed=1)
    frame = data.to_frame()
    # the second experiment four times noisier
    rng = np.random.default_rng(0)
    second = frame["experiment"] == "r1"
    for c in ("x", "y"):
        frame.loc[second, c] += 0.2 * rng.standard_normal(int(second.sum()))
    data = dl.Dataset.from_frame(frame, group="experiment")
    r = dl.fit(lv_model(), data, loss="gaussian", sigma="s", sigma_by="experiment",
               y0="estimate", progress=False)
    assert r.success
    assert r.config["noise_groups"] == {"s@r0": ["x", "y"], "s@r1": ["x", "y"]}
    res = r.residuals()
    for e in ("r0", "r1"):
        v = res.loc[res["experiment"] == e, "residual"].to_numpy()
        assert r.sigma[f"s@{e}"] == pytest.approx(np.sqrt(np.mean(v ** 2)), rel=1e-9)
    assert r.sigma["s@r1"] > 2.5 * r.sigma["s@r0"]
    assert r.sigma["x"] == pytest.approx(np.sqrt((r.sigma["s@r0"] ** 2
                                                  + r.sigma["s@r1"] ** 2) / 2), rel=1e-9)


# --- round trips ---------------------------------------------------------------------------
def test_saved_result_keeps_the_shared_level(shared_fit, tmp_path):
    data, r = shared_fit
    r.save(tmp_path / "res")
    back = dl.load_result(tmp_path / "res")
    assert back.sigma == r.sigma
    assert back.config["noise_groups"] == {"s": ["x", "y"]}
    obj = back.objective()
    assert obj.noise_groups == ["s"] and obj.sigma_hat[0] == r.sigma["s"]
    assert back.residuals()["scaled"].to_numpy() == pytest.approx(
        r.residuals()["scaled"].to_numpy(), rel=1e-12)


def test_checkpoint_resume_keeps_the_shared_level(tmp_path):
    data = lotka_volterra_data(noise=0.1, seed=3)
    ck = tmp_path / "ck"

    def stop_after_2(info):
        return info["iteration"] >= 2
    kw = dict(loss="gaussian", sigma={"x": "s", "y": "s"}, y0="estimate", progress=False)
    r1 = dl.fit(lv_model(), data, checkpoint=ck, callback=stop_after_2, **kw)
    assert not r1.success
    # a checkpoint of one shared level does not resume a fit with two levels
    other = dict(kw, sigma=None)
    with pytest.raises(dl.DataError, match="holds 1 noise levels, not 2"):
        dl.fit(lv_model(), data, checkpoint=ck, resume=True, **other)
    r2 = dl.fit(lv_model(), data, checkpoint=ck, resume=True, **kw)
    full = dl.fit(lv_model(), data, **kw)
    assert r2.success
    assert r2.loss == pytest.approx(full.loss, rel=1e-6)
    assert r2.sigma["s"] == pytest.approx(full.sigma["s"], rel=1e-5)
    # nor, once finished, a fit with another noise model
    with pytest.raises(dl.OptionError, match="other noise levels"):
        dl.fit(lv_model(), data, checkpoint=ck, resume=True, **other)


def test_default_groups_are_the_observables():
    """Without names, one level per observable, as before (sigma_hat in observable order)."""
    data = lotka_volterra_data(noise=0.1, seed=3)
    obj = Objective(lv_model(), data, loss="gaussian").fit_objective
    assert obj.noise_groups == ["x", "y"]
    frame = data.to_frame()
    frame["x_sigma"] = 0.1
    obj = Objective(lv_model(), dl.Dataset.from_frame(frame), loss="gaussian",
                    sigma="s").fit_objective
    # x's noise is known: the shared level covers y alone
    assert list(obj.estimated) == [True] and obj.noise_group_members() == {"s": ["y"]}


def test_model_file_noise_names_and_sigma_by(tmp_path):
    """[noise] sigma = { x = "s", y = "s" } and sigma_by become dl.fit's arguments (with the
    Gaussian likelihood, which estimates them)."""
    from types import SimpleNamespace

    from dynlearn.cli import fit_arguments
    from dynlearn.io.model_file import parse_model_text
    text = ('[model]\nstates = ["x", "y"]\nequations = { x = "-k*x", y = "-k*y" }\n'
            '[model.params]\nk = 0.5\n[noise]\nsigma = { x = "s", y = 0.2 }\n'
            'sigma_by = "experiment"\n')
    mf = parse_model_text(text)
    assert mf.noise["sigma"] == {"x": "s", "y": 0.2} and mf.noise["sigma_by"] == "experiment"
    args = SimpleNamespace(quiet=True, resume=False, maxiter=None, loss=None, method=None,
                           seed=None, max_time=None, workers=None)
    kw = fit_arguments(mf, args, tmp_path)
    assert kw["loss"] == "gaussian" and kw["sigma_by"] == "experiment"
    assert kw["sigma"] == {"x": "s", "y": 0.2}
    with pytest.raises(dl.ModelError, match=r"line 8: \[noise\] sigma_by"):
        parse_model_text(text.replace('"experiment"', '"run"'))


def test_fanned_objective_pools_groups_like_the_serial_one(client):
    """On Dask, the per-experiment noise statistics come back from the workers and pool
    into the same groups (shared across observables, split by experiment)."""
    from dynlearn.core.parameters import ParameterSpace
    from dynlearn.distributed.dask import Parallel
    from dynlearn.distributed.fanned import FannedObjective
    from dynlearn.objective.binding import initial_states
    from dynlearn.objective.objective import FitObjective
    model, data = lv_model(), lotka_volterra_experiments(3, seed=2)
    strategy = initial_states("first", model)
    bound = strategy.bind(model, data)
    space = ParameterSpace(model, strategy.parameters(model, data, bound),
                           [e.name for e in data])
    settings = dict(model=model, bound=bound, space=space, loss="gaussian",
                    sigma={"x": "s", "y": "s"}, sigma_by="experiment")
    serial = FitObjective(**settings)
    fanned = FannedObjective(Parallel(client, batch_size=2), **settings)
    try:
        assert serial.noise_groups == ["s@r0", "s@r1", "s@r2"]
        s1, s0 = fanned.estimate_sigma(space.x0), serial.estimate_sigma(space.x0)
        np.testing.assert_allclose(s1, s0, rtol=1e-14)
        for obj in (serial, fanned):
            obj.set_sigma(s0)
        np.testing.assert_array_equal(fanned.residuals(space.x0), serial.residuals(space.x0))
    finally:
        fanned.close()


def test_noise_groups_count_as_fitted_values():
    """One fitted value per estimated group, as the command line announces and AIC counts."""
    from dynlearn.results.diagnostics import count_fitted_values
    data = lotka_volterra_experiments(3)

    def count(**kw):
        return count_fitted_values(lv_model(), data, loss="gaussian", **kw)["noise"]
    assert count() == 2
    assert count(sigma="s") == 1
    assert count(sigma="s", sigma_by="experiment") == 3
    assert count(sigma_by="experiment") == 6
    assert count(sigma={"x": 0.1}, sigma_by="experiment") == 3
