"""dl.fit: recovery of known parameters (with honest interval coverage), experiments,
partial observation, inputs, NaNs, losses, optimizers, robustness, checkpoints."""

import numpy as np
import pandas as pd
import pytest
import sympy as sp

import dynlearn as dl
from dynlearn.optimizers import Status
from dynlearn.testing import LV_TRUE, central_difference, decay_model
from dynlearn.testing import lotka_volterra_data as lv_data
from dynlearn.testing import lotka_volterra_fit_model as lv_model

x, y, u = sp.symbols("x y u")
k, a, b, c, d = sp.symbols("k alpha beta gamma delta")


def covered(result, truth):
    p = result.params
    return {n: bool(p.loc[n, "ci_lower"] <= v <= p.loc[n, "ci_upper"]) for n, v in truth.items()}


def test_lv_recovers_parameters_and_initial_state():
    data = lv_data()
    model = lv_model()
    before = (model.theta0.copy(), dict(model.params))
    r = dl.fit(model, data, y0="estimate", progress=False)
    assert r.success, r.message
    for n, v in LV_TRUE.items():
        assert abs(r.params.loc[n, "value"] - v) < 4 * r.params.loc[n, "stderr"] + 1e-3
    assert all(covered(r, LV_TRUE).values())
    assert {"y0[x]", "y0[y]"} <= set(r.params.index)
    assert r.params.loc["y0[x]", "kind"] == "initial state"
    assert r.njev < 60
    # the model passed in is never mutated; the fitted one carries the values
    np.testing.assert_array_equal(model.theta0, before[0])
    assert dict(model.params) == before[1]
    assert r.model.params[a].value == pytest.approx(r.params.loc["alpha", "value"])


def test_interval_coverage_over_20_seeds():
    """The 95% intervals must contain the truth in most repeated experiments (n = 20).

    Least squares with the covariance scaled by s^2 = SSR/(n-p) and Student-t intervals:
    the expected coverage is 95%, so 19 of 20 on average; we require at least 16 (the
    binomial probability of fewer than 16 at p=0.95 is 0.3%)."""
    t = np.linspace(0, 4, 15)
    hits, hits_a = 0, 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        ytrue = 2.0 * np.exp(-0.7 * t)
        xs = ytrue + 0.05 * rng.standard_normal(t.size)
        data = dl.Dataset.from_frame(pd.DataFrame({"t": t, "x": xs}))
        model = decay_model(1.0)
        r = dl.fit(model, data, y0="estimate", progress=False)
        assert r.success
        hits += covered(r, {"k": 0.7})["k"]
        hits_a += covered(r, {"y0[x]": 2.0})["y0[x]"]
    assert hits >= 16, hits
    assert hits_a >= 16, hits_a


def test_multi_experiment_with_per_experiment_initial_states():
    truth = decay_model(0.8)
    frames = []
    for name, x0 in (("a", 1.0), ("b", 3.0)):
        t = np.linspace(0, 3, 12) if name == "a" else np.linspace(0.5, 4, 9)
        sol = dl.simulate(truth, t, [x0], t0=0.0)
        rng = np.random.default_rng(len(name) + int(x0))
        frames.append(pd.DataFrame({"exp": name, "t": t,
                                    "x": sol.y[:, 0] + 0.01 * rng.standard_normal(t.size)}))
    data = dl.Dataset.from_frame(pd.concat(frames), group="exp")
    r = dl.fit(decay_model(0.3), data, y0="estimate", progress=False)
    assert r.success
    assert {"y0[x]@a", "y0[x]@b"} <= set(r.params.index)
    assert r.params.loc["k", "value"] == pytest.approx(0.8, rel=0.05)
    # experiment b starts at t=0.5: its estimated state is the one at t=0.5
    assert r.params.loc["y0[x]@b", "value"] == pytest.approx(3 * np.exp(-0.4), rel=0.05)
    assert r.y0["a"][0] == pytest.approx(1.0, rel=0.05)


def test_partial_observation_and_nans():
    """Only x + y is measured, with gaps; initial state known."""
    model = dl.HybridModel(states=[x, y], rhs={x: a * x - b * x * y, y: c * x * y - d * y},
                           params={a: dl.Parameter(1.2, min=0, transform="log"), b: 0.9,
                                   c: dl.Parameter(0.8, fixed=True), d: 1.7},
                           observables={"total": x + y})
    truth = model.with_params(alpha=1.3, delta=1.8)
    t = np.linspace(0, 6, 40)
    sol = dl.simulate(truth, t, [0.44, 4.6])
    rng = np.random.default_rng(3)
    total = sol.observables[:, 0] + 0.01 * rng.standard_normal(t.size)
    total[[3, 10, 11, 25]] = np.nan
    data = dl.Dataset.from_frame(pd.DataFrame({"t": t, "total": total}))
    r = dl.fit(model, data, y0=[0.44, 4.6], progress=False)
    assert r.success
    assert r.n_data == 36
    assert r.params.loc["gamma", "fixed"] and r.params.loc["gamma", "value"] == 0.8
    assert r.params.loc["alpha", "value"] == pytest.approx(1.3, rel=0.02)
    assert r.params.loc["delta", "value"] == pytest.approx(1.8, rel=0.02)
    assert len(r.residuals()) == 36


@pytest.mark.parametrize("kind", ["zoh", "linear"])
def test_inputs_drive_the_model(kind):
    model = dl.HybridModel(states=[x], rhs={x: -k * x + b * u}, inputs=[u],
                           params={k: dl.Parameter(0.3, min=0, transform="log"), b: 0.5},
                           observables={"level": x})
    t = np.arange(0, 20, 0.5)
    uu = (np.sin(0.4 * t) > 0).astype(float) * 2.0
    truth = model.with_params(k=0.7, beta=1.5)
    sig = dl.InputSignal(t, uu, kind=kind)
    sol = dl.simulate(truth, t, [0.0], inputs=sig, rtol=1e-10, atol=1e-12)
    data = dl.Dataset.from_frame(pd.DataFrame({"t": t, "u": uu, "level": sol.y[:, 0]}),
                                 input_kind=kind)
    r = dl.fit(model, data, y0=[0.0], progress=False, rtol=1e-9, atol=1e-11)
    assert r.success
    assert r.params.loc["k", "value"] == pytest.approx(0.7, rel=1e-3)
    assert r.params.loc["beta", "value"] == pytest.approx(1.5, rel=1e-3)
    # predict with a new input frame
    frame = pd.DataFrame({"time": t, "u": np.ones_like(t)})
    p = r.predict(t, y0=[0.0], inputs=frame)
    assert p["level"].iloc[-1] == pytest.approx(1.5 / 0.7, rel=1e-3)


def test_gaussian_estimates_noise_levels():
    data = lv_data(noise=0.1, seed=4)
    r = dl.fit(lv_model(), data, loss="gaussian", y0="estimate", progress=False)
    assert r.success
    assert r.sigma["x"] == pytest.approx(0.1, rel=0.3)
    assert r.sigma["y"] == pytest.approx(0.1, rel=0.3)
    assert all(covered(r, LV_TRUE).values())


def test_known_sigma_columns_weight_the_fit():
    t = np.linspace(0, 4, 30)
    rng = np.random.default_rng(5)
    sig = np.where(t < 2, 0.01, 0.3)
    xs = 2 * np.exp(-0.7 * t) + sig * rng.standard_normal(t.size)
    data = dl.Dataset.from_frame(pd.DataFrame({"t": t, "x": xs, "x_sigma": sig}))
    r = dl.fit(decay_model(), data, y0="estimate", progress=False)
    assert r.success
    # chi-square statistics: the loss is about n - p when the sigmas are right
    assert 10 < r.loss < 60
    assert covered(r, {"k": 0.7})["k"]


def test_log_loss_for_positive_counts():
    data = lv_data(noise=0.0)
    e = data[0]
    rng = np.random.default_rng(6)
    for s in ("x", "y"):
        e.columns[s] = e.columns[s] * np.exp(0.1 * rng.standard_normal(e.t.size))
    r = dl.fit(lv_model(), data, loss="log", y0="estimate", progress=False)
    assert r.success
    assert all(covered(r, LV_TRUE).values())
    neg = lv_data(noise=0.2, seed=1)
    with pytest.raises(dl.DataError, match="loss='log' needs positive data"):
        dl.fit(lv_model(), neg, loss="log", progress=False)


@pytest.mark.parametrize("opt", [dl.GaussNewton(), dl.LBFGSB(200),
                                 dl.Staged([dl.Adam(30, lr=0.05), dl.LBFGSB(200)])])
def test_other_optimizers(opt):
    data = lv_data(seed=7)
    r = dl.fit(lv_model((1.2, 1.0, 0.9, 1.7)), data, optimizer=opt, progress=False)
    assert r.success, r.message
    for n, v in LV_TRUE.items():
        assert r.params.loc[n, "value"] == pytest.approx(v, rel=0.03)


def test_multistart_and_mapper():
    data = lv_data(seed=8)
    calls = []

    def mapper(f, specs):
        specs = list(specs)
        calls.append(len(specs))
        return [f(s) for s in specs]
    r = dl.fit(lv_model(), data, n_starts=3, seed=1, progress=False, client=mapper,
               optimizer=dl.LevenbergMarquardt(max_iter=25))
    assert calls == [3]
    assert len(r.starts) == 3
    assert r.loss == pytest.approx(r.starts["loss"].min())
    assert "alpha" in r.starts.columns
    assert list(r.starts["start"]) == [0, 1, 2]


def test_executors():
    """client= resolves to an executor; the serial one runs starts one after another, each
    with an objective it makes; any Executor can be passed to dl.fit."""
    from dynlearn.distributed.executor import MapExecutor, SerialExecutor, resolve_executor
    assert isinstance(resolve_executor(None), SerialExecutor)
    assert isinstance(resolve_executor(map), MapExecutor)
    serial = SerialExecutor()
    assert resolve_executor(serial) is serial
    with pytest.raises(dl.OptionError, match="client must be a dask.distributed.Client"):
        resolve_executor(object())
    def task(item, b):
        return divmod(item, b)
    assert serial.map(task, [7, 9], ["a", "b"], {"b": 4}) == [(1, 3), (2, 1)]
    assert MapExecutor(map).map(task, [7, 9], ["a", "b"], {"b": 4}) == [(1, 3), (2, 1)]

    class Counting(SerialExecutor):
        made = 0

        def objective(self, settings):
            Counting.made += 1
            return super().objective(settings)
    data = lv_data(seed=8)
    opt = dl.LevenbergMarquardt(max_iter=25)
    r = dl.fit(lv_model(), data, n_starts=2, seed=1, progress=False, client=Counting(),
               optimizer=opt)
    assert Counting.made == 2
    pd.testing.assert_frame_equal(r.starts, dl.fit(lv_model(), data, n_starts=2, seed=1,
                                                   progress=False, optimizer=opt).starts)


def test_solver_failure_mid_fit_is_rejected_and_fit_completes(monkeypatch):
    """Trial points where the solver fails are rejected; the optimizer backs off."""
    import dynlearn.objective.objective as objective
    calls = {"n": 0}

    def flaky(real):      # forward solves and solves with sensitivities alike
        def solve(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] in (3, 4, 5, 9):
                raise dl.SolveError("simulated failure: step size too small", status=-1)
            return real(*args, **kwargs)
        return solve
    for name in ("solve_observed", "observable_jacobian"):
        monkeypatch.setattr(objective, name, flaky(getattr(objective, name)))
    r = dl.fit(lv_model(), lv_data(seed=9), progress=False)
    assert r.success, r.message
    assert r.rejected >= 3
    monkeypatch.undo()
    clean = dl.fit(lv_model(), lv_data(seed=9), progress=False)
    assert clean.rejected == 0
    assert r.loss == pytest.approx(clean.loss, rel=1e-6)


def test_blow_up_is_rejected():
    """x' = p x^2 - x blows up in finite time when p x0 > 1: big trial steps fail to solve."""
    p = sp.Symbol("p")
    model = dl.HybridModel(states=[x], rhs={x: p * x ** 2 - x}, params={p: 0.1})
    t = np.linspace(0, 8, 30)
    truth = model.with_params(p=0.9)
    sol = dl.simulate(truth, t, [1.0])
    data = dl.Dataset.from_frame(pd.DataFrame({"t": t, "x": sol.y[:, 0]}))
    r = dl.fit(model, data, optimizer=dl.GaussNewton(), progress=False)
    assert r.success, r.message
    assert r.params.loc["p", "value"] == pytest.approx(0.9, rel=1e-3)
    assert r.rejected >= 1


def test_interrupt_and_resume_from_checkpoint(tmp_path):
    data = lv_data(seed=10)
    ck = tmp_path / "ck"

    def stop_after_3(info):
        return info["iteration"] >= 3
    r1 = dl.fit(lv_model(), data, checkpoint=ck, callback=stop_after_3, progress=False)
    assert not r1.success and r1.status is Status.CALLBACK and "callback" in r1.message
    assert (tmp_path / "ck.json").exists() and (tmp_path / "ck.npz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.json", "ck.npz"]  # no temp files
    r2 = dl.fit(lv_model(), data, checkpoint=ck, resume=True, progress=False)
    full = dl.fit(lv_model(), data, progress=False)
    assert r2.success
    assert r2.loss == pytest.approx(full.loss, rel=1e-6)
    assert r2.njev > r1.njev   # the counts continue
    assert r2.njev < r1.njev + full.njev

    def ctrl_c(info):
        if info["iteration"] == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt) as info:   # Ctrl-C stops the script, too
        dl.fit(lv_model(), data, callback=ctrl_c, progress=False)
    assert isinstance(info.value, dl.FitInterrupted)
    r3 = info.value.result                             # the best point so far
    assert not r3.success and r3.status is Status.INTERRUPTED and "interrupted" in r3.message
    assert np.isfinite(r3.loss) and r3.loss < dl.loss(lv_model(), data)


def test_time_limit_keeps_best_point():
    r = dl.fit(lv_model(), lv_data(), max_time=0.0, progress=False)
    assert not r.success and r.status is Status.MAX_TIME and "max_time" in r.message


def test_network_l2_and_staged_fit_runs():
    nn = dl.MLP("nn", inputs=[x], outputs=1, hidden=[4], activation="tanh", seed=0, scale=0.1)
    model = dl.HybridModel(states=[x], rhs={x: -k * x + nn[0]}, params={k: 0.5})
    t = np.linspace(0, 3, 15)
    data = dl.Dataset.from_frame(pd.DataFrame({"t": t, "x": 2 * np.exp(-0.7 * t) + 0.1 * t}))
    r0 = dl.fit(model, data, optimizer=dl.LevenbergMarquardt(max_iter=30), progress=False)
    r1 = dl.fit(model, data, optimizer=dl.LevenbergMarquardt(max_iter=30), l2=1.0, progress=False)
    assert r0.loss < dl.loss(model, data)
    assert np.linalg.norm(r1.weights["nn"]) < np.linalg.norm(r0.weights["nn"])
    r2 = dl.fit(model, data, optimizer=dl.Staged([dl.Adam(20), dl.LBFGSB(20)]), progress=False)
    assert r2.ngev > 20 and r2.loss < dl.loss(model, data)


def test_option_errors():
    data = lv_data()
    with pytest.raises(dl.OptionError, match="loss='l2': use one of"):
        dl.fit(lv_model(), data, loss="l2")
    with pytest.raises(dl.OptionError, match="optimizer must be an optimizer object"):
        dl.fit(lv_model(), data, optimizer="lbfgs")
    with pytest.raises(dl.OptionError, match="resume=True needs checkpoint"):
        dl.fit(lv_model(), data, resume=True)
    with pytest.raises(dl.OptionError, match="y0='guess'"):
        dl.fit(lv_model(), data, y0="guess")
    with pytest.raises(dl.OptionError, match=r"unknown keyword argument\(s\) \['maxiter'\]"):
        dl.fit(lv_model(), data, maxiter=3)
    with pytest.raises(dl.OptionError, match="n_starts must be a positive integer"):
        dl.fit(lv_model(), data, n_starts=0)
    with pytest.raises(dl.DataError, match=r"needs a starting guess for state\(s\) \['y'\]"):
        dl.fit(lv_model(), lv_data(observed=("x",)), y0="estimate")
    with pytest.raises(dl.DataError, match=r"state\(s\) \['y'\] are not measured"):
        dl.fit(lv_model(), lv_data(observed=("x",)))


def test_y0_dict_frees_states_one_by_one():
    data = lv_data(observed=("x",), seed=11, noise=0.01)
    # with only x measured, beta and y0[y] are confounded (only their product is
    # identifiable), so beta is fixed here
    model = lv_model().with_params(beta=dl.Parameter(0.9, fixed=True))
    r = dl.fit(model, data, y0={"y": dl.Parameter(4.0, min=0)}, progress=False)
    assert r.success
    assert "y0[y]" in r.params.index and "y0[x]" not in r.params.index
    assert r.params.loc["y0[y]", "value"] == pytest.approx(4.6, rel=0.1)


def test_multiple_shooting_escapes_the_local_minimum_of_single_shooting():
    """A long oscillating series from a poor start: single shooting stalls in a local
    minimum, multiple shooting (then a single-shooting polish) finds the truth."""
    data = lv_data(noise=0.05, t=np.linspace(0, 20, 81))
    model = lv_model((0.5, 0.5, 0.5, 0.5))
    single = dl.fit(model, data, y0="estimate", progress=False)
    ms = dl.fit(model, data, y0="estimate", optimizer=dl.MultipleShooting(segments=5),
                progress=False)
    assert ms.success, ms.message
    assert ms.loss < 0.01 * single.loss
    for n, v in LV_TRUE.items():
        assert ms.params.loc[n, "value"] == pytest.approx(v, rel=0.02)


def test_multiple_shooting_jacobian_matches_finite_differences():
    from dynlearn.core.parameters import ParameterSpace
    from dynlearn.objective.binding import initial_states
    from dynlearn.objective.objective import FitObjective
    from dynlearn.objective.shooting import ShootingObjective
    data = lv_data(t=np.linspace(0, 6, 13))
    model = lv_model()
    y0s = initial_states("estimate", model)
    bound = y0s.bind(model, data)
    space = ParameterSpace(model, y0s.parameters(model, data, bound), ["data"])
    ms = ShootingObjective(FitObjective(model, bound, space),
                           4, 10.0)
    z = ms.initial(space.x0)
    r, J = ms.jacobian(z)
    fd = central_difference(ms.residuals, z, step=1e-6, relative=False)
    assert np.abs(J - fd).max() < 1e-4 * np.abs(J).max()


def test_objective_remembers_its_last_evaluation_only():
    """An optimizer asks again for what it has (the cost at the accepted point, the Jacobian
    there for the covariance); the objective answers from memory, with read-only arrays,
    and forgets when x or the noise levels change."""
    from dynlearn.core.parameters import ParameterSpace
    from dynlearn.objective.binding import initial_states
    from dynlearn.objective.objective import FitObjective
    model, data = lv_model(), lv_data()
    y0s = initial_states("first", model)
    bound = y0s.bind(model, data)
    space = ParameterSpace(model, y0s.parameters(model, data, bound),
                           [e.name for e in data])
    obj = FitObjective(model=model, bound=bound, space=space)
    solves = []
    for name in ("compute_residuals", "compute_jacobian"):
        f = getattr(obj, name)
        setattr(obj, name, lambda x, f=f, name=name: solves.append(name) or f(x))
    x0 = space.x0
    r, J = obj.jacobian(x0)
    assert obj.residuals(x0.copy()) is r and obj.jacobian(x0)[1] is J
    assert solves == ["compute_jacobian"]
    with pytest.raises(ValueError):
        J[0, 0] = 1.0                       # nobody can change what is remembered
    x1 = x0 + 1e-3
    r1 = obj.residuals(x1)
    assert not np.array_equal(r1, r)
    obj.jacobian(x1)                        # residuals alone do not make a Jacobian
    assert solves == ["compute_jacobian", "compute_residuals", "compute_jacobian"]
    obj.set_sigma(2.0 * obj.sigma_hat)      # new scales: forget
    np.testing.assert_allclose(obj.residuals(x1), 0.5 * r1, rtol=1e-12)
    assert solves[-1] == "compute_residuals"


def test_fit_reuses_the_final_jacobian_for_the_covariance(monkeypatch):
    from dynlearn.objective.objective import FitObjective
    made = []
    jac = FitObjective.compute_jacobian
    monkeypatch.setattr(FitObjective, "compute_jacobian",
                        lambda self, x: made.append(1) or jac(self, x))
    res = dl.fit(lv_model(), lv_data(), progress=False)
    assert res.success and np.all(np.isfinite(res.params["stderr"]))
    assert len(made) == res.njev        # none extra for the covariance


def test_jacobian_at_trial_changes_the_cost_not_the_iterates():
    """LM may evaluate trial points with their Jacobian (one solve per accepted step
    instead of two); the iterates are those of the plain method."""
    data = lv_data(seed=3)
    runs = {}
    for setting in ("auto", False, True):
        opt = dl.LevenbergMarquardt(jacobian_at_trial=setting)
        runs[setting] = dl.fit(lv_model(), data, optimizer=opt, progress=False)
    plain, auto = runs[False], runs["auto"]
    np.testing.assert_allclose(auto.x, plain.x, rtol=1e-10)
    assert auto.nit == plain.nit
    # RK45's discrete Jacobians are cheap: "auto" evaluates most steps once
    assert auto.nfev + auto.njev < plain.nfev + plain.njev
    assert auto.nfev < plain.nfev / 2
    np.testing.assert_array_equal(runs[True].x, auto.x)
    # forward sensitivities are dear: "auto" keeps to forward solves for trials
    lsoda = [dl.fit(lv_model(), data, method="LSODA", progress=False,
                    optimizer=dl.LevenbergMarquardt(jacobian_at_trial=s)) for s in ("auto", False)]
    assert (lsoda[0].nfev, lsoda[0].njev) == (lsoda[1].nfev, lsoda[1].njev)
    with pytest.raises(dl.OptionError, match="jacobian_at_trial"):
        dl.LevenbergMarquardt(jacobian_at_trial="yes")


def test_multiple_shooting_caps_its_segment_states():
    """Many experiments: the pieces lengthen so that the segment states stay within
    max_states (the Jacobian's columns); one experiment keeps its pieces of 3 times."""
    from dynlearn.core.parameters import ParameterSpace
    from dynlearn.objective.binding import initial_states
    from dynlearn.objective.objective import FitObjective
    from dynlearn.objective.shooting import ShootingObjective
    one = lv_data().to_frame()
    many = pd.concat([one.assign(run=f"r{i}") for i in range(20)])
    model = lv_model()
    for frame, group in ((one, None), (many, "run")):
        data = dl.Dataset.from_frame(frame, group=group)
        y0s = initial_states("first", model)
        bound = y0s.bind(model, data)
        space = ParameterSpace(model, y0s.parameters(model, data, bound),
                               [e.name for e in data])
        obj = FitObjective(model, bound, space)
        ms = ShootingObjective(obj, None, 10.0, 3, 50, max_states=600)
        free = ShootingObjective(obj, None, 10.0, 3, 50)
        states = ms.size - space.size
        if group is None:
            assert states == free.size - space.size == 2 * 19   # 20 pieces of 3 times
        else:
            assert free.size - space.size == 20 * 2 * 19        # 760 without the cap
            assert 0.8 * 600 <= states <= 600
            assert len({len(p) for p in ms.plan}) == 1          # every piece alike
        z = ms.initial(space.x0)
        assert ms.residuals(z).size == ms.jacobian(z)[1].shape[0]


@pytest.mark.parametrize("network", [False, True])
def test_block_steps_of_multiple_shooting_equal_the_dense_ones(network):
    """Eliminating each experiment's segment states by QR gives the damped least-squares
    step of the whole shooting Jacobian, as its SVD does (with a network, its L2 rows use
    the shared columns only)."""
    from dynlearn.core.parameters import ParameterSpace
    from dynlearn.objective.binding import initial_states
    from dynlearn.objective.objective import FitObjective
    from dynlearn.objective.shooting import ShootingObjective
    from dynlearn.optimizers.steps import BlockSteps, DenseSteps
    frames = [lv_data(seed=i, y0=(0.4 + 0.1 * i, 4.0 + 0.3 * i)).to_frame().assign(run=f"r{i}")
              for i in range(4)]
    data = dl.Dataset.from_frame(pd.concat(frames), group="run")
    model = lv_model()
    if network:
        nn = dl.MLP("nn", inputs=[x, y], outputs=2, hidden=[4], seed=0, scale=0.1)
        model = dl.HybridModel(states=[x, y], params=model.params,
                               rhs={x: model.rhs[0] + nn[0], y: model.rhs[1] + nn[1]})
    y0s = initial_states("estimate", model)
    bound = y0s.bind(model, data)
    space = ParameterSpace(model, y0s.parameters(model, data, bound),
                           [e.name for e in data])
    ms = ShootingObjective(FitObjective(model, bound, space, l2=1e-2 if network else 0.0),
                           None, 10.0)
    z = ms.initial(space.x0)
    r, J = ms.jacobian(z)
    assert J.shape[1] > 3 * ms.n_shared                   # e.g. 12 shared, 160 segment
    ds = np.maximum(np.linalg.norm(J, axis=0), 1e-12)
    dense, block = DenseSteps(J, r, ds), BlockSteps(J, r, ds, ms.n_shared, ms.blocks())
    assert block.smax2 == pytest.approx(dense.smax2, rel=1e-3)
    np.testing.assert_allclose(block.g, dense.g, rtol=1e-12, atol=1e-12 * np.abs(dense.g).max())
    for lam in (1e-6, 1e-2, 1.0, 1e3):
        a, b = block.step(lam * dense.smax2), dense.step(lam * dense.smax2)
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9 * np.abs(b).max())


def test_a_log_parameter_driven_past_underflow_stays_a_valid_parameter():
    """An optimizer can drive a log parameter the data cannot tell from 0 to log values whose
    exp underflows (seen in an ensemble member whose network took over the decay: the
    member's fit crashed building its result with k = 0.0). The physical value stays the
    smallest positive float (and the largest finite one the other way), and the fitted
    model can be built from it."""
    from dynlearn.core.parameters import ParameterSpace
    from dynlearn.objective.binding import initial_states
    model, data = decay_model(), dl.Dataset.from_frame(
        pd.DataFrame({"t": [0.0, 1.0, 2.0], "x": [1.0, 0.6, 0.4]}))
    y0s = initial_states("first", model)
    space = ParameterSpace(model, y0s.parameters(model, data, y0s.bind(model, data)),
                           [e.name for e in data])
    assert space.is_log[0]
    for x, want in ((-800.0, np.finfo(float).tiny), (800.0, np.finfo(float).max)):
        v = space.physical(np.array([x]))
        assert v[0] == want
        fitted = model.with_theta(v[:space.n_theta])
        assert fitted.params[sp.Symbol("k")].value == want
