"""The objective layer: one loss for dl.loss and dl.fit, loss objects, initial-state
strategies, the one Jacobian choice, and which errors reject a trial point."""

import numpy as np
import pandas as pd
import pytest
import sympy as sp

import dynlearn as dl
from dynlearn.core.parameters import ParameterSpace
from dynlearn.objective import (
    Estimated,
    FirstRow,
    FitObjective,
    Gaussian,
    Given,
    LeastSquares,
    LogLeastSquares,
    PerState,
    Rejected,
    ShootingObjective,
    initial_states,
    loss_from_name,
)
from dynlearn.sensitivity.choice import observable_jacobian
from dynlearn.testing import LV_TRUE, central_difference, decay_model
from dynlearn.testing import lotka_volterra_fit_model as lv_model

x, y = sp.symbols("x y")
k, a, b, c, d = sp.symbols("k alpha beta gamma delta")


def lv_data_with_sigma(seed=0):
    """Positive counts with a known noise level for x (a sigma column), none for y."""
    t = np.linspace(0, 6, 25)
    Y = dl.simulate(lv_model().with_params(**LV_TRUE), t, [0.44, 4.6], rtol=1e-10,
                    atol=1e-10).y
    rng = np.random.default_rng(seed)
    Y = Y * np.exp(0.05 * rng.standard_normal(Y.shape))
    sx = np.where(t < 3, 0.02, 0.08)
    return dl.Dataset.from_frame(pd.DataFrame({"t": t, "x": Y[:, 0], "y": Y[:, 1],
                                               "x_sigma": sx}))


def decay_data():
    t = np.linspace(0, 4, 12)
    return dl.Dataset.from_frame(pd.DataFrame({"t": t, "x": 2.0 * np.exp(-0.7 * t)}))


def fit_objective(model, data, y0="first", **kw):
    strategy = initial_states(y0, model)
    bound = strategy.bind(model, data)
    space = ParameterSpace(model, strategy.parameters(model, data, bound),
                           [e.name for e in data])
    return FitObjective(model, bound, space, **kw)


# --- one loss -------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["ls", "gaussian", "log"])
def test_dl_loss_equals_the_fits_loss_at_the_optimum(loss):
    """dl.loss measures what dl.fit minimises: with sigma columns (known for x, not for y),
    weights, and for every loss (the Gaussian one estimates y's noise at theta)."""
    data = lv_data_with_sigma()
    kw = dict(loss=loss, weights={"y": 0.5})
    r = dl.fit(lv_model(), data, progress=False, **kw)
    assert r.success, r.message
    assert dl.loss(r.model, data, **kw) == pytest.approx(r.loss, rel=1e-8)
    value, grad = dl.loss_and_grad(r.model, data, **kw)
    assert value == pytest.approx(r.loss, rel=1e-8)
    assert np.all(np.isfinite(grad))


def test_dl_loss_equals_the_fits_loss_with_an_l2_term():
    nn = dl.MLP("nn", inputs=[x], outputs=1, hidden=[3], seed=0, scale=0.1)
    model = dl.HybridModel(states=[x], rhs={x: -k * x + nn[0]}, params={k: 0.5})
    data = decay_data()
    r = dl.fit(model, data, l2=0.1, progress=False,
               optimizer=dl.LevenbergMarquardt(max_iter=10))
    assert dl.loss(r.model, data, l2=0.1) == pytest.approx(r.loss, rel=1e-8)
    assert dl.loss(r.model, data) < r.loss          # the L2 term is part of the fit's loss


def test_plain_loss_is_the_sum_of_squares():
    """Without sigma columns, weights or L2, dl.loss is the plain sum of squared residuals
    (the value it always had)."""
    data = decay_data()
    model = decay_model()
    sol = dl.simulate(model, data[0].t, [2.0])
    ssr = float(np.sum((sol.y[:, 0] - data[0].columns["x"]) ** 2))
    assert dl.loss(model, data) == pytest.approx(ssr, rel=1e-6)


def test_sigma_columns_weight_dl_loss():
    data = lv_data_with_sigma()
    model = lv_model().with_params(**LV_TRUE)
    plain = data.to_frame().drop(columns="x_sigma")
    e = data[0]
    H = dl.simulate(model, e.t, [e.columns["x"][0], e.columns["y"][0]]).y
    expect = float(np.sum(((H[:, 0] - e.columns["x"]) / e.columns["x_sigma"]) ** 2)
                   + np.sum((H[:, 1] - e.columns["y"]) ** 2))
    assert dl.loss(model, data) == pytest.approx(expect, rel=1e-5)
    assert dl.loss(model, dl.Dataset.from_frame(plain)) != pytest.approx(expect, rel=1e-2)


def test_gaussian_gradient_is_that_of_the_profiled_likelihood():
    """The Gaussian value is the negative log-likelihood with the noise estimated at theta;
    its gradient (half the cost's, the likelihood being stationary in sigma) matches
    central differences of dl.loss."""
    data = lv_data_with_sigma()
    model = lv_model()
    theta = model.theta0 * np.array([1.05, 0.97, 1.02, 0.99])
    kw = dict(loss="gaussian", rtol=1e-10, atol=1e-10)
    _, g = dl.loss_and_grad(model, data, theta, sensitivity=dl.ForwardSensitivity(), **kw)
    fd = central_difference(lambda th: dl.loss(model, data, th, **kw), theta, step=1e-5,
                            relative=False)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-6 * np.abs(g).max())


# --- loss objects ---------------------------------------------------------------------------
def test_loss_objects_and_names():
    assert [loss_from_name(n).name for n in ("ls", "gaussian", "log")] == ["ls", "gaussian",
                                                                           "log"]
    assert isinstance(loss_from_name("log"), LogLeastSquares)
    assert loss_from_name(g := Gaussian()) is g
    assert Gaussian().estimates_noise and not LeastSquares().estimates_noise
    assert LogLeastSquares().transform == "log" and LeastSquares().transform == "identity"
    with pytest.raises(dl.OptionError, match="loss='l2': use one of"):
        loss_from_name("l2")
    mask = np.array([[True, False]])
    with pytest.raises(Rejected, match="non-positive prediction"):
        LogLeastSquares().g(np.array([[-1.0, -1.0]]), mask)
    v = np.array([[2.0, 3.0]])
    np.testing.assert_allclose(LogLeastSquares().shifted(v, np.log(2.0)), 2 * v)
    np.testing.assert_allclose(LogLeastSquares().dg(v, np.ones_like(mask)), 1 / v)


def test_fit_accepts_loss_objects_and_records_the_name():
    data = lv_data_with_sigma()
    by_name = dl.fit(lv_model(), data, loss="log", progress=False)
    by_object = dl.fit(lv_model(), data, loss=LogLeastSquares(), progress=False)
    assert by_object.config["loss"] == "log"          # result files keep the name
    np.testing.assert_array_equal(by_object.x, by_name.x)


# --- initial-state strategies -------------------------------------------------------------
def test_initial_state_strategies():
    model, data = lv_model(), lv_data_with_sigma()
    assert isinstance(initial_states("first", model), FirstRow)
    assert isinstance(initial_states(None, model), FirstRow)
    assert isinstance(initial_states("estimate", model), Estimated)
    assert isinstance(initial_states({"y": 4.0}, model), PerState)
    assert isinstance(initial_states([1.0, 2.0], model), Given)
    assert isinstance(initial_states({"data": [1.0, 2.0]}, model), Given)
    with pytest.raises(dl.OptionError, match="y0='guess'"):
        initial_states("guess", model)
    with pytest.raises(dl.OptionError, match="y0_init must have one value per state"):
        initial_states("first", model, y0_init=[1.0])
    first = FirstRow()
    rows = first.parameters(model, data, first.bind(model, data))
    assert all(p.fixed for p in rows[0]) and rows[0][0].value == data[0].columns["x"][0]
    est = Estimated({"y": 5.0})
    rows = est.parameters(model, data, est.bind(model, data))
    assert not any(p.fixed for p in rows[0]) and rows[0][1].value == 5.0
    per = PerState({"y": dl.Parameter(4.0, min=0)})
    rows = per.parameters(model, data, per.bind(model, data))
    assert rows[0][0].fixed and not rows[0][1].fixed


# --- the one Jacobian choice --------------------------------------------------------------
class CountingForward(dl.ForwardSensitivity):
    """A user's ForwardSensitivity (with options), counting its uses."""

    calls = 0

    def trajectories(self, prob, wrt_y0=False):
        CountingForward.calls += 1
        return super().trajectories(prob, wrt_y0)


def test_jacobian_choice_honours_the_users_forward_sensitivity():
    model, data = decay_model(), decay_data()
    sens = CountingForward(sparse_jacobian=True)
    obj = fit_objective(model, data, method="Radau", sensitivity=sens)
    prob = obj.experiment_problem(0, model.theta0, np.array([2.0]))
    CountingForward.calls = 0
    H, dH = observable_jacobian(prob, sens, wrt_y0=True)
    assert CountingForward.calls == 1 and dH.shape == (12, 1, 2)
    H0, dH0 = observable_jacobian(prob, None, wrt_y0=True)    # default ForwardSensitivity()
    np.testing.assert_array_equal(dH, dH0)
    assert CountingForward.calls == 1
    rk = fit_objective(model, data, sensitivity=sens)            # RK45: the discrete tangent
    observable_jacobian(rk.experiment_problem(0, model.theta0, np.array([2.0])), sens)
    assert CountingForward.calls == 1
    # the fit's Jacobian, the multiple-shooting Jacobian and the prediction bands all use it
    CountingForward.calls = 0
    obj.jacobian(obj.space.x0)
    assert CountingForward.calls == 1
    ms = ShootingObjective(obj, 3, 10.0)
    ms.jacobian(ms.initial(obj.space.x0))
    assert CountingForward.calls == 1 + 3
    r = dl.fit(model, data, method="Radau", sensitivity=sens, progress=False)
    CountingForward.calls = 0
    frame = r.predict(np.linspace(0, 4, 5))
    assert CountingForward.calls == 1 and "x_lower" in frame


# --- which errors reject a trial point ----------------------------------------------------
def test_a_bug_inside_a_shooting_segment_propagates():
    """A failed solve rejects the trial point; any other error (a bug in a network's code,
    in dynlearn) surfaces instead of being taken for a rejected point."""
    armed = {"on": False}

    def fun(w, v):
        if armed["on"]:
            raise ValueError("a bug in the network code")
        return w[0] * v
    nn = dl.Network("nn", inputs=[x], outputs=1, fun=fun, weights=[0.0])
    model = dl.HybridModel(states=[x], rhs={x: -k * x + nn[0]}, params={k: 0.5})
    obj = fit_objective(model, decay_data())
    ms = ShootingObjective(obj, 3, 10.0)
    z = ms.initial(obj.space.x0)
    assert np.all(np.isfinite(ms.residuals(z)))
    bad = z.copy()
    bad[0] = np.nan                     # unusable parameters: a rejected point
    with pytest.raises(Rejected):
        ms.residuals(bad)
    with pytest.raises(Rejected):
        ms.jacobian(bad)
    armed["on"] = True
    with pytest.raises(ValueError, match="a bug in the network code"):
        ms.residuals(z + 1e-3)
    with pytest.raises(ValueError, match="a bug in the network code"):
        ms.jacobian(z + 2e-3)
    with pytest.raises(ValueError, match="a bug in the network code"):
        obj.residuals(obj.space.x0 + 1e-3)


# --- the per-experiment interface -----------------------------------------------------------
def test_per_experiment_pieces_make_the_whole():
    frames = [pd.DataFrame({"run": f"r{i}", "t": np.linspace(0, 3, 8),
                            "x": (2.0 + i) * np.exp(-0.6 * np.linspace(0, 3, 8))})
              for i in range(3)]
    data = dl.Dataset.from_frame(pd.concat(frames), group="run")
    obj = fit_objective(decay_model(), data, y0="estimate", loss="gaussian")
    xs = obj.space.x0 + 0.01
    assert obj.n_experiments == 3
    np.testing.assert_array_equal(
        obj.residuals(xs), np.concatenate([obj.experiment_residuals(i, xs) for i in range(3)]))
    r, J = obj.jacobian(xs)
    pieces = [obj.experiment_jacobian(i, xs) for i in range(3)]
    np.testing.assert_array_equal(r, np.concatenate([p[0] for p in pieces]))
    np.testing.assert_array_equal(J, np.vstack([p[1] for p in pieces]))
    v, g = obj.cost_and_grad(xs)
    parts = [obj.experiment_cost_and_grad(i, xs) for i in range(3)]
    assert v == pytest.approx(sum(p[0] for p in parts), rel=1e-14)
    np.testing.assert_allclose(g, sum(p[1] for p in parts), rtol=1e-13)
    ssr, cnt = obj.noise_statistics(xs)
    assert cnt.tolist() == [24.0]
    assert ssr == pytest.approx(sum(obj.experiment_noise_statistics(i, xs)[0]
                                    for i in range(3)))
    H = obj.experiment_prediction(1, xs)
    np.testing.assert_array_equal(obj.data_residuals(1, H), obj.experiment_residuals(1, xs))
    assert obj.experiment_columns(2).tolist() == [0, 3]
