"""Scale-out on Dask (issue 6): every path against the serial run, faults, errors.

One local cluster (2 worker processes, 127.0.0.1 only; tests/conftest.py's ``client``) serves
every test; tests that kill workers get a cluster of their own (``own_client``), so no test
waits for a worker to come back. Problems are small (dynlearn.testing): the point is
equality with the serial results, not speed (see benchmarks/scale_out.py for that).
"""

import importlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import dynlearn as dl
from dynlearn.testing import LV_TRUE
from dynlearn.testing import decay_experiments as decay_data
from dynlearn.testing import hybrid_decay_model as hybrid_decay
from dynlearn.testing import lotka_volterra_experiments as lv_data
from dynlearn.testing import lotka_volterra_fit_model as lv_model

distributed = pytest.importorskip("distributed")

x, y = sp.symbols("x y")
k, a, b, c, d = sp.symbols("k alpha beta gamma delta")


def dask_keys(client, fn, prefix):
    """Run ``fn()`` and return (its result, keys of the tasks it ran whose name starts with
    ``prefix``)."""
    with distributed.get_task_stream(client) as ts:
        out = fn()
    keys = [t["key"] for t in ts.data]
    keys = [str(k if isinstance(k, str) else k[0]) for k in keys]
    return out, [k_ for k_ in keys if k_.startswith(prefix)]


def test_no_dask_import_without_a_client():
    code = ("import sys, numpy as np, pandas as pd, dynlearn as dl; import sympy as sp\n"
            "x, k = sp.symbols('x k')\n"
            "m = dl.HybridModel(states=[x], rhs={x: -k*x}, params={k: 0.5})\n"
            "t = np.linspace(0, 2, 9)\n"
            "data = pd.DataFrame({'t': t, 'x': np.exp(-0.7*t)})\n"
            "r = dl.fit(m, data, n_starts=2, seed=0, progress=False)\n"
            "assert r.success\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


PLACE = ["worker", "task", "seconds", "task_seconds"]


def test_multistart_runs_starts_as_tasks_and_matches_serial(client):
    model, data = lv_model(), lv_data()
    serial = dl.fit(model, data, n_starts=3, seed=0, progress=False)
    # one start per task, on the cluster whatever the cost (over="starts" forces it)
    one_each = dl.Parallel(client, over="starts", task_seconds=None)
    par, keys = dask_keys(client, lambda: dl.fit(model, data, n_starts=3, seed=0,
                                                 progress=False, client=one_each),
                          "dynlearn-starts")
    assert len(keys) == 3
    assert not set(PLACE) & set(serial.starts.columns)     # a serial fit says nothing
    assert par.starts["task"].tolist() == [0, 1, 2]
    assert set(par.starts["worker"]) <= set(client.scheduler_info()["workers"])
    pd.testing.assert_frame_equal(par.starts.drop(columns=PLACE), serial.starts, rtol=1e-10)
    assert {"loss", "success", "alpha", "gamma"} <= set(par.starts.columns)
    np.testing.assert_allclose(par.x, serial.x, rtol=1e-10)
    assert par.loss == pytest.approx(serial.loss, rel=1e-10)
    for name, v in LV_TRUE.items():
        assert par.params.loc[name, "value"] == pytest.approx(v, rel=0.1)


def test_one_start_fans_experiments_out_and_matches_serial(client):
    model, data = lv_model(), lv_data(4)
    serial = dl.fit(model, data, y0="estimate", progress=False)
    par, keys = dask_keys(client, lambda: dl.fit(model, data, y0="estimate", progress=False,
                                                 client=dl.Parallel(client, batch_size=3)),
                          "dynlearn-")
    assert any(k_.startswith("dynlearn-system") for k_ in keys)
    # On Dask, Levenberg-Marquardt works on the triangular factor of [J r] (reduced on the
    # workers), whose normal equations equal the serial ones to rounding (see
    # test_fanned_objective_equals_serial_everywhere); the fits then agree to the
    # optimizer's tolerance, not bit for bit.
    assert par.success and par.loss == pytest.approx(serial.loss, rel=1e-10)
    np.testing.assert_allclose(par.x, serial.x, rtol=1e-6)
    # the covariance comes from the same factor: the standard errors agree too
    np.testing.assert_allclose(par.params["stderr"], serial.params["stderr"], rtol=1e-5)


def test_multiple_shooting_segments_run_on_the_workers(client):
    """The default optimizer of a network model (multiple shooting, then a single-shooting
    polish): both phases evaluate their experiments on Dask, and the fit is the serial one,
    bit for bit."""
    model = hybrid_decay()
    data = decay_data(4)
    serial = dl.fit(model, data, progress=False, l2=1e-4)
    par, keys = dask_keys(client, lambda: dl.fit(model, data, progress=False, l2=1e-4,
                                                 client=client), "dynlearn-")
    assert any(k_.startswith("dynlearn-shooting-jacobian") for k_ in keys)
    assert any(k_.startswith("dynlearn-system") for k_ in keys)      # the polish
    # the shooting phase stacks the workers' rows as the serial run does (bit for bit); the
    # polish works on the triangular factor (equal to rounding): see the test above
    assert par.loss == pytest.approx(serial.loss, rel=1e-9)
    np.testing.assert_allclose(par.x, serial.x, rtol=1e-6)


def test_a_failing_segment_is_named(client):
    from dynlearn.distributed.dask import Parallel
    from dynlearn.distributed.fanned import FannedObjective
    from dynlearn.objective.objective import FitObjective
    from dynlearn.objective.shooting import ShootingObjective
    model, data = hybrid_decay(), decay_data(2)
    fit = dl.fit(model, data, progress=False, optimizer=dl.LevenbergMarquardt(max_iter=1))
    settings = dict(model=model, bound=fit.objective().bound, space=fit.objective().space)
    fanned = FannedObjective(Parallel(client, batch_size=1), **settings)
    try:
        ms = ShootingObjective(fanned, None, 10.0)
        z = ms.initial(fit.x)
        serial = ShootingObjective(FitObjective(**settings), None, 10.0)
        serial.initial(fit.x)
        r, J = ms.jacobian(z)
        r_s, J_s = serial.jacobian(z)
        np.testing.assert_array_equal(r, r_s)
        np.testing.assert_array_equal(J, J_s)
        ms.scale = np.ones(3)                # one scale per state expected: the task fails
        with pytest.raises(dl.TaskError, match="experiment 'd[01]' failed .* while "
                                               "computing the shooting jacobian"):
            ms.jacobian(z + 1e-3)
    finally:
        fanned.close()


def test_fanned_objective_equals_serial_everywhere(client):
    """Residuals, Jacobian and gradient (network weights, log parameters, estimated initial
    states, L2) against the serial objective, batch by batch."""
    from dynlearn.core.parameters import ParameterSpace
    from dynlearn.distributed.dask import Parallel
    from dynlearn.distributed.fanned import FannedObjective
    from dynlearn.objective.binding import initial_states
    from dynlearn.objective.objective import FitObjective
    model, data = hybrid_decay(), decay_data(3)
    y0s = initial_states("estimate", model)
    bound = y0s.bind(model, data)
    space = ParameterSpace(model, y0s.parameters(model, data, bound),
                           [e.name for e in data])
    settings = dict(model=model, bound=bound, space=space, loss="gaussian", l2=0.1)
    serial = FitObjective(**settings)
    fanned = FannedObjective(Parallel(client, batch_size=2), **settings)
    try:
        xs = space.x0 + 0.05 * np.random.default_rng(1).standard_normal(space.size)
        for obj in (serial, fanned):
            obj.set_sigma(np.array([0.3]))
        np.testing.assert_array_equal(fanned.residuals(xs), serial.residuals(xs))
        r1, J1 = fanned.jacobian(xs)
        r0, J0 = serial.jacobian(xs)
        np.testing.assert_array_equal(r1, r0)
        np.testing.assert_array_equal(J1, J0)
        v1, g1 = fanned.cost_and_grad(xs)
        v0, g0 = serial.cost_and_grad(xs)
        assert v1 == pytest.approx(v0, rel=1e-13)
        np.testing.assert_allclose(g1, g0, rtol=1e-12, atol=1e-14 * np.abs(g0).max())
        # what Levenberg-Marquardt asks on Dask: the triangular factor of [J r], reduced
        # batch by batch on the workers; the same normal equations and predicted decreases
        r2, A, b = fanned.compute_system(xs)
        np.testing.assert_array_equal(r2, r0)
        assert A.shape[1] == J0.shape[1] and A.shape[0] <= J0.shape[1] + 1
        scale = np.abs(J0.T @ J0).max()
        np.testing.assert_allclose(A.T @ A, J0.T @ J0, rtol=1e-11, atol=1e-13 * scale)
        np.testing.assert_allclose(A.T @ b, J0.T @ r0, rtol=1e-11,
                                   atol=1e-13 * np.abs(J0.T @ r0).max())
        step = 0.01 * np.random.default_rng(2).standard_normal(space.size)
        assert (b + A @ step) @ (b + A @ step) - b @ b == pytest.approx(
            (r0 + J0 @ step) @ (r0 + J0 @ step) - r0 @ r0, rel=1e-10)
        # the Gaussian loss's noise estimate, summed over the workers' experiments
        s1, s0 = fanned.estimate_sigma(xs), serial.estimate_sigma(xs)
        np.testing.assert_allclose(s1, s0, rtol=1e-14)
        assert not np.allclose(s0, 0.3)
        # the workers that ran a batch now cache the objective: later rounds send them only
        # its token (which worker ran which batch is up to Dask: usually both, not always)
        assert fanned.holders and fanned.holders <= set(client.nthreads())
    finally:
        fanned.close()


def test_a_failing_experiment_is_named(client):
    def fun(w, v):
        if np.any(np.asarray(getattr(v, "_value", v)) > 5):
            raise ValueError("input outside the calibrated range")
        return w[0] * v
    nn = dl.Network("nn", inputs=[x], outputs=1, fun=fun, weights=[0.0])
    model = dl.HybridModel(states=[x], rhs={x: -k * x + nn[0]}, params={k: 0.5})
    t = np.linspace(0, 1, 6)
    data = dl.Dataset.from_frame(pd.DataFrame({
        "run": ["cold"] * 6 + ["hot"] * 6, "t": np.r_[t, t],
        "x": np.r_[np.exp(-0.5 * t), 9 * np.exp(-0.5 * t)]}), group="run")
    # the solver is named: with method="auto" the stiffness probe solves every experiment
    # on the client first, where the error is raised as itself, as in a serial fit
    with pytest.raises(dl.TaskError, match="experiment 'hot' failed on worker tcp://127.0.0.1"
                                           ".*ValueError: input outside the calibrated range"):
        dl.fit(model, data, progress=False, method="RK45",
               client=dl.Parallel(client, batch_size=1, retries=0))
    with pytest.raises(ValueError, match="input outside"):  # the probe of method="auto"
        dl.fit(model, data, progress=False, client=dl.Parallel(client, batch_size=1,
                                                               retries=0))
    with pytest.raises(ValueError, match="input outside"):  # serially: the error itself
        dl.fit(model, data, progress=False)


def test_a_rejected_point_is_not_an_error():
    from dynlearn.distributed.dask import forget
    from dynlearn.distributed.fanned import CacheMiss, RejectedAt, experiment_task
    from dynlearn.objective.objective import FitObjective
    model, data = lv_model(), lv_data(2)
    r = dl.fit(model, data, progress=False, optimizer=dl.LevenbergMarquardt(max_iter=1))
    obj = FitObjective(model=model, bound=r.objective().bound, space=r.objective().space)
    x_bad = r.x.copy()
    x_bad[0] = np.nan        # as after a diverged step: rejected, like in a serial fit
    assert isinstance(experiment_task("tok", "tok", (0,), "residuals", r.x, obj.sigma_hat),
                      CacheMiss)     # only a token, and nothing cached under it
    out = experiment_task(obj, "tok", (0, 1), "residuals", x_bad, obj.sigma_hat)
    assert isinstance(out, RejectedAt)
    _, good, seconds, _ = experiment_task("tok", "tok", (0, 1), "residuals", r.x,
                                           obj.sigma_hat)
    np.testing.assert_array_equal(np.concatenate(good), obj.residuals(r.x))
    assert len(seconds) == 2 and np.isnan(seconds).all()   # first use: one-off work inside
    _, _, seconds, _ = experiment_task("tok", "tok", (0, 1), "residuals", r.x, obj.sigma_hat)
    assert len(seconds) == 2 and min(seconds) > 0
    forget(["tok"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 100.0), min_size=1, max_size=60), st.integers(1, 8))
def test_balanced_batches_cover_every_experiment_once_and_balance(costs, n_tasks):
    from dynlearn.distributed.fanned import balanced_batches
    costs = np.array(costs)
    batches = balanced_batches(costs, n_tasks)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(costs.size))           # each experiment once
    assert all(list(b) == sorted(b) for b in batches)         # in order inside a batch
    assert len(batches) <= min(n_tasks, costs.size)
    worst = max(costs[list(b)].sum() for b in batches)
    m = min(n_tasks, costs.size)
    # any greedy list schedule: at most the mean load plus (1 - 1/m) of the dearest one
    assert worst <= costs.sum() / m + (1 - 1 / m) * costs.max() + 1e-9
    if costs.size <= 8 and m <= 3:   # longest-first is within 4/3 of the best split
        best = min(np.bincount(a, costs, m).max()
                   for a in itertools.product(range(m), repeat=costs.size))
        assert worst <= 4 / 3 * best + 1e-9


def test_batches_follow_the_measured_cost_of_experiments(client):
    """Experiments of very different cost: once the cost of every experiment is measured,
    the batches are re-cut from those costs so that the workers' loads are near equal;
    results stay in the serial order whatever the batches.

    The costs are timings and which worker runs a batch is up to Dask, so nothing here
    assumes a timing or a placement: the rounds run until every cost is measured (a
    worker does not time an experiment's first evaluation there, so with 2 workers that
    takes at most 3 rounds); the next round must be cut from those costs; then costs set
    by the test put the dear experiment in a batch of its own."""
    from dynlearn.distributed.dask import Parallel
    from dynlearn.distributed.fanned import FannedObjective, balanced_batches
    from dynlearn.objective.objective import FitObjective
    model = lv_model()
    t_long = np.linspace(0, 80, 400)       # experiment 0 is far dearer than the others
    Y = dl.simulate(model.with_params(**LV_TRUE), t_long, [1.0, 3.0]).y
    long = pd.DataFrame({"experiment": "long", "t": t_long, "x": Y[:, 0], "y": Y[:, 1]})
    data = dl.Dataset.from_frame(pd.concat([long, lv_data(5).to_frame()]),
                                 group="experiment")
    fit = dl.fit(model, data, progress=False, optimizer=dl.LevenbergMarquardt(max_iter=1))
    settings = dict(model=model, bound=fit.objective().bound, space=fit.objective().space)
    serial = FitObjective(**settings)
    fanned = FannedObjective(Parallel(client), **settings)
    try:
        assert fanned.batches == [(0, 1, 2), (3, 4, 5)]     # contiguous until measured
        r_s = serial.compute_residuals(fit.x)
        for _ in range(3):
            np.testing.assert_array_equal(fanned.compute_residuals(fit.x), r_s)
            assert fanned.batches == [(0, 1, 2), (3, 4, 5)]
            if np.isfinite(fanned.seconds).all():
                break
        measured = fanned.seconds
        assert np.all(measured > 0), measured
        r, J = fanned.compute_jacobian(fit.x)
        assert fanned.batches == balanced_batches(measured, 2)
        r_s, J_s = serial.compute_jacobian(fit.x)
        np.testing.assert_array_equal(r, r_s)
        np.testing.assert_array_equal(J, J_s)
        fanned.seconds = [20.0, 1.0, 1.0, 1.0, 1.0, 1.0]
        v, g = fanned.compute_cost_and_grad(fit.x)
        assert fanned.batches == [(0,), (1, 2, 3, 4, 5)]     # the dear one alone
        v_s, g_s = serial.compute_cost_and_grad(fit.x)
        assert v == pytest.approx(v_s, rel=1e-14)    # sums: equal to rounding
        np.testing.assert_allclose(g, g_s, rtol=1e-12)
    finally:
        fanned.close()


def test_bootstrap_on_dask_matches_serial(client):
    model, data = lv_model(), lv_data(1, n_times=31)
    kw = dict(n=3, seed=2, progress=False)
    serial = dl.bootstrap(model, data, **kw)
    par, keys = dask_keys(client, lambda: dl.bootstrap(model, data, client=client, **kw),
                          "dynlearn-bootstrap")
    # (replicates are packed into tasks by cost; the first ones always go to the cluster)
    assert serial.kind == par.kind == "residuals" and 1 <= len(keys) <= 3
    pd.testing.assert_frame_equal(par.estimates, serial.estimates, rtol=1e-9)
    np.testing.assert_allclose(par.thetas, serial.thetas, rtol=1e-9)
    summ = par.summary()
    assert {"value", "mean", "std", "ci_lower", "ci_upper", "n"} <= set(summ.columns)
    assert (summ.loc["alpha", "ci_lower"] <= summ.loc["alpha", "ci_upper"])
    # resampling experiments: repeated experiments get their own names
    boot = dl.bootstrap(model, lv_data(3), n=2, kind="experiments", seed=0,
                        progress=False)
    assert len(boot.estimates) == 2 and boot.kind == "experiments"


def test_profile_refits_run_as_tasks_and_match_serial(client):
    model, data = lv_model(), lv_data(2)
    res = dl.fit(model, data, progress=False)
    serial = res.profile("beta", n=4)
    par, keys = dask_keys(client, lambda: res.profile("beta", n=4, client=client),
                          "dynlearn-profile")
    assert 1 <= len(keys) <= 4
    pd.testing.assert_frame_equal(par.frame, serial.frame)
    assert par.interval == serial.interval


def test_ensemble_on_dask_matches_serial(client):
    model, data = hybrid_decay(), decay_data(1)
    kw = dict(n=2, seed=3, progress=False, l2=1e-3,
              optimizer=dl.LevenbergMarquardt(max_iter=15))
    serial = dl.ensemble(model, data, **kw)
    with dl.parallel(client):           # the context supplies the client
        par, keys = dask_keys(client, lambda: dl.ensemble(model, data, **kw),
                              "dynlearn-ensemble")
    assert 1 <= len(keys) <= 2
    pd.testing.assert_frame_equal(par.table, serial.table, rtol=1e-9)
    # members start from different weights
    w = [m.model0.theta0[1:] for m in par.members]
    assert not np.allclose(w[0], w[1])
    band = par.predict(np.linspace(0, 4, 9))
    assert {"x_mean", "x_std", "x_lower", "x_upper"} <= set(band.columns)
    assert np.all(band["x_lower"] <= band["x_upper"])


def test_options_are_checked(client):
    with pytest.raises(dl.OptionError, match="client must be a dask.distributed.Client"):
        dl.fit(lv_model(), lv_data(1), client=object(), progress=False)
    with pytest.raises(dl.OptionError, match="needs a client"):
        with dl.parallel():
            pass
    with pytest.raises(dl.OptionError, match="over='everything'"):
        dl.Parallel(client, over="everything")
    with pytest.raises(dl.OptionError, match="no network"):
        dl.ensemble(lv_model(), lv_data(1), n=2)


def test_a_worker_killed_mid_fit_does_not_lose_it(own_client, tmp_path):
    """A worker dies while it runs a start: the scheduler runs the start again elsewhere
    and the fit is the serial one. The first start to finish an iteration kills its own
    worker, once (the marker file says which process), so what dies and when depends on
    no timing."""
    client = own_client
    model, data = lv_model(), lv_data(2)
    serial = dl.fit(model, data, n_starts=4, seed=0, progress=False)
    marker = tmp_path / "killed"

    def kill_own_worker_once(info):      # the fit's callback: runs in a start, on a worker
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
    pids = set(client.run(os.getpid).values())
    # over="starts": every start on the cluster, however cheap (never this process)
    r = dl.fit(model, data, n_starts=4, seed=0, progress=False,
               client=dl.Parallel(client, over="starts"), callback=kill_own_worker_once)
    victim = int(marker.read_text())
    assert victim in pids and victim not in client.run(os.getpid).values()  # it really died
    pd.testing.assert_frame_equal(r.starts.drop(columns=PLACE), serial.starts, rtol=1e-10)
    np.testing.assert_allclose(r.x, serial.x, rtol=1e-10)


def test_a_worker_killed_while_experiments_are_split(own_client):
    """The objective was scattered to both workers: the survivor carries the fit on."""
    client = own_client
    model, data = lv_model(), lv_data(4)
    serial = dl.fit(model, data, progress=False)
    pids = client.run(os.getpid)
    killed = []

    def kill_once(info):      # runs on the client between evaluations
        if info["iteration"] == 2 and not killed:
            victim = sorted(pids)[0]
            os.kill(pids[victim], signal.SIGKILL)
            killed.append(victim)
    r = dl.fit(model, data, progress=False, callback=kill_once,
               client=dl.Parallel(client, batch_size=1))
    assert killed and killed[0] not in client.run(os.getpid)
    assert r.success and r.loss == pytest.approx(serial.loss, rel=1e-10)
    np.testing.assert_allclose(r.x, serial.x, rtol=1e-6)


@pytest.mark.parametrize("n_starts", [1, 3])
def test_scattered_inputs_lost_with_their_worker_are_sent_again(own_client, monkeypatch,
                                                                n_starts):
    """Dask's memory manager may leave a scattered input on one worker only; when that
    worker dies, the tasks needing it are cancelled ("lost dependencies"). The fit sends
    the input again and completes: reproduced here by scattering the first copy to one
    worker and killing it before any task runs."""
    client = own_client
    par = sys.modules["dynlearn.distributed.dask"]
    scatter, lost = par.scatter, []

    def scatter_then_lose(cl, obj):
        if lost:
            return scatter(cl, obj)
        pids = cl.run(os.getpid)
        victim = sorted(pids)[0]
        fut = cl.scatter([obj], workers=[victim], broadcast=False, hash=False)[0]
        os.kill(pids[victim], signal.SIGKILL)
        while victim in cl.scheduler_info()["workers"]:    # the scheduler will notice
            time.sleep(0.05)
        lost.append(victim)
        return fut
    monkeypatch.setattr(par, "scatter", scatter_then_lose)
    monkeypatch.setattr(importlib.import_module("dynlearn.distributed.fanned"), "scatter",
                        scatter_then_lose)
    model, data = lv_model(), lv_data(4)
    serial = dl.fit(model, data, n_starts=n_starts, seed=0, progress=False)
    r = dl.fit(model, data, n_starts=n_starts, seed=0, progress=False, client=client)
    assert lost and lost[0] not in client.run(os.getpid)
    assert r.loss == pytest.approx(serial.loss, rel=1e-10)
    np.testing.assert_allclose(r.x, serial.x, rtol=1e-6)
    if n_starts > 1:     # each start runs in-process on a worker: the serial computation
        pd.testing.assert_frame_equal(r.starts.drop(columns=PLACE), serial.starts, rtol=1e-12)


# --- sizing the tasks of independent fits (issue 16) ---------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.integers(0, 300), st.floats(1e-4, 5.0), st.integers(1, 16),
       st.floats(0.01, 2.0), st.integers(1, 4))
def test_chunk_sizes_cover_the_items_and_shrink_towards_the_end(n, cost, workers, target,
                                                                per_worker):
    from dynlearn.distributed.dask import chunk_sizes
    sizes = chunk_sizes(n, cost, workers, target, per_worker)
    assert sum(sizes) == n and all(s >= 1 for s in sizes)
    assert sizes == sorted(sizes, reverse=True)           # big tasks first, then the tail
    cap = max(1, int(np.ceil(target / cost)))
    assert all(s <= cap for s in sizes)                   # about `target` seconds each
    left = n
    for s in sizes:                                       # never more than a fair share
        assert s <= max(1, -(-left // (per_worker * workers)))
        left -= s
    if n >= 2 * per_worker * workers and cap >= 2:       # enough work: fewer tasks than items
        assert len(sizes) < n
    if sizes and per_worker * workers > 1:               # the last task holds one item
        assert sizes[-1] == 1


def test_chunk_sizes_without_a_cost_or_target_give_one_item_per_task():
    from dynlearn.distributed.dask import chunk_sizes
    assert chunk_sizes(5, None, 2) == [1] * 5
    assert chunk_sizes(5, 0.01, 2, task_seconds=None) == [1] * 5
    assert chunk_sizes(14, 0.1, 2) == [3, 3, 2, 2, 1, 1, 1, 1]
    assert chunk_sizes(4, 2.0, 2) == [1, 1, 1, 1]         # dear items: one per task
    assert chunk_sizes(0, 0.1, 2) == []


def test_only_enough_work_pays_for_the_cluster():
    from dynlearn.distributed.dask import pays_for_cluster
    assert pays_for_cluster(0.5, 2, 0.3) and not pays_for_cluster(0.2, 2, 0.3)
    assert pays_for_cluster(0.3, 1, 0.3) and pays_for_cluster(100.0, 8, 0.3)
    assert pays_for_cluster(0.0, 2, None)                 # sizing off: always the cluster


def test_the_summary_line_says_where_the_starts_ran():
    from dynlearn.results.result import scale_out_line
    frame = pd.DataFrame({"start": range(5), "loss": 1.0,
                          "worker": ["tcp://a:1", "tcp://b:2", "tcp://a:1", "tcp://a:1",
                                     "client"],
                          "task": [0, 1, 2, 2, -1], "seconds": 0.1,
                          "task_seconds": [0.1, 0.2, 0.4, 0.4, 0.1]})
    line = scale_out_line(frame)
    assert line.startswith("4 starts in 3 tasks on 2 workers (tcp://a:1: 3, tcp://b:2: 1;")
    assert "1 start run on the client: too little work" in line
    assert scale_out_line(frame.drop(columns=["worker", "task"])) == ""
    assert scale_out_line(None) == ""


def test_task_seconds_is_checked():
    class FakeClient:
        submit = gather = scatter = None
    for bad in (-1.0, "0.3"):
        with pytest.raises(dl.OptionError, match="task_seconds"):
            dl.Parallel(FakeClient(), task_seconds=bad)
    assert dl.Parallel(FakeClient(), task_seconds=None).task_seconds is None


def test_items_are_packed_into_tasks_and_come_back_in_order(client):
    from dynlearn.distributed.dask import Parallel, run_tasks

    def slow_double(item, offset):
        time.sleep(0.01)
        return 2 * item + offset
    seen, where = [], []
    out = run_tasks(Parallel(client, task_seconds=0.05), slow_double, list(range(40)),
                    [f"item {i}" for i in range(40)], {"offset": 1}, desc="pack",
                    on_result=seen.append, placement=where)
    assert out == [2 * i + 1 for i in range(40)]
    assert sorted(seen) == out                     # every result reported once
    tasks = [p.task for p in where]
    assert tasks == sorted(tasks)                  # consecutive items share a task
    sizes = np.bincount(tasks)
    assert sizes.max() > 1 and len(sizes) < 40     # packed...
    assert sizes[-1] == 1                          # ...with a tail of single items
    workers = set(client.scheduler_info()["workers"])
    assert {p.worker for p in where} <= workers
    assert all(p.task_seconds >= p.seconds > 0 for p in where)


def test_an_error_in_a_packed_task_names_its_item(client):
    from dynlearn.distributed.dask import Parallel, run_tasks

    def fail_on_7(item):
        time.sleep(0.005)
        if item == 7:
            raise ValueError("seven")
        return item
    with pytest.raises(dl.TaskError, match="item 7 failed on worker tcp://.*seven"):
        run_tasks(Parallel(client, task_seconds=0.05, retries=0), fail_on_7, list(range(12)),
                  [f"item {i}" for i in range(12)], {}, desc="fail")


def test_a_result_forgotten_before_its_fetch_is_computed_again(client, monkeypatch):
    """A task seen finished whose result cannot be fetched because the scheduler forgot it
    (its worker died in between: "already forgotten", met under load by
    test_workers_started_by_hand_join_and_leave_mid_fit) is submitted again, not raised."""
    from distributed import Future
    from distributed.client import FutureCancelledError

    from dynlearn.distributed.dask import Parallel, run_tasks

    result = Future.result
    forgotten = []

    def forgetting(self, *args, **kwargs):
        if not forgotten and str(self.key).startswith("dynlearn-forget"):
            forgotten.append(self.key)
            raise FutureCancelledError(self.key, reason="already forgotten")
        return result(self, *args, **kwargs)

    monkeypatch.setattr(Future, "result", forgetting)
    out = run_tasks(Parallel(client, task_seconds=None), lambda item: 3 * item,
                    list(range(6)), [f"item {i}" for i in range(6)], {}, desc="forget")
    assert forgotten
    assert out == [3 * i for i in range(6)]


def test_packed_starts_equal_serial_bit_for_bit_with_checkpoints(client, tmp_path):
    from dynlearn.fitting.checkpoint import read_checkpoint
    model, data = lv_model(), lv_data(1, n_times=31)
    n = 12     # 2 first starts price the others; then tasks of 3, 2, 2, 1, 1, 1 starts
    serial = dl.fit(model, data, n_starts=n, seed=0, progress=False)
    ckpt = tmp_path / "fit"
    # over="starts": all on the cluster; a large task size packs the starts
    par = dl.fit(model, data, n_starts=n, seed=0, progress=False, checkpoint=ckpt,
                 client=dl.Parallel(client, over="starts", task_seconds=100.0))
    st_ = par.starts
    assert st_["start"].tolist() == list(range(n))
    assert st_["task"].tolist() == [0, 1, 2, 2, 2, 3, 3, 4, 4, 5, 6, 7]
    pd.testing.assert_frame_equal(st_.drop(columns=PLACE), serial.starts, check_exact=True)
    assert np.array_equal(par.x, serial.x)
    assert set(st_["worker"]) <= set(client.scheduler_info()["workers"])
    assert (st_["seconds"] > 0).all() and (st_["task_seconds"] >= st_["seconds"]).all()
    # (which worker runs what is the scheduler's choice)
    assert re.search(r"12 starts in 8 tasks on [12] workers? \(tcp://", str(par.summary()))
    done = read_checkpoint(ckpt).meta["done"]           # one record per start, by the client
    assert sorted(int(r["start"]) for r in done) == list(range(n))


def test_a_fit_too_small_for_the_cluster_runs_here_and_says_so(client):
    model, data = lv_model(), lv_data(1, n_times=31)
    serial = dl.fit(model, data, n_starts=4, seed=0, progress=False)
    # no fit is worth 1000 s: after the first ones, the rest runs on the client
    par = dl.fit(model, data, n_starts=4, seed=0, progress=False,
                 client=dl.Parallel(client, task_seconds=1000.0))
    workers = par.starts["worker"].tolist()
    assert workers[2:] == ["client", "client"]           # 2 workers price the first two
    assert set(workers[:2]) <= set(client.scheduler_info()["workers"])
    assert "2 starts run on the client: too little work" in str(par.summary())
    pd.testing.assert_frame_equal(par.starts.drop(columns=PLACE), serial.starts,
                                  check_exact=True)
    # over="starts" forces the cluster
    forced = dl.fit(model, data, n_starts=4, seed=0, progress=False,
                    client=dl.Parallel(client, over="starts", task_seconds=1000.0))
    assert "client" not in set(forced.starts["worker"])


# --- compiled models kept across fits (issue 16) -------------------------------------------
def test_model_key_follows_the_structure_not_the_values():
    import pickle

    from dynlearn.distributed.dask import model_key
    model = lv_model()
    key = model_key(model)
    assert len(key) == 64 and key == model_key(pickle.loads(pickle.dumps(model)))
    assert key == model_key(model.with_params(alpha=0.7))                   # values: no
    assert key == model_key(model.with_theta(model.theta0 * 1.1))
    assert key != model_key(model.with_params(alpha=dl.Parameter(0.7, fixed=True)))
    rhs = {x: a * x - b * x * y, y: c * x * y - d * y}
    params = {s: 1.0 for s in (a, b, c, d)}
    base = dl.HybridModel(states=[x, y], rhs=rhs, params=params)
    nudged = dl.HybridModel(states=[x, y], rhs={**rhs, x: a * x - b * x * y + 1e-17},
                            params=params)
    same = dl.HybridModel(states=[x, y], rhs=dict(rhs), params=params, name="another")
    assert model_key(base) == model_key(same) != model_key(nudged)
    observed = dl.HybridModel(states=[x, y], rhs=rhs, params=params,
                              observables={"total": x + y})
    assert model_key(observed) != model_key(base)

    def with_net(net):
        return dl.HybridModel(states=[x], rhs={x: -k * x + net[0]}, params={k: 0.5})
    mlp = lambda seed, hidden=(4,): dl.MLP("nn", inputs=[x], outputs=1,    # noqa: E731
                                           hidden=hidden, seed=seed)
    # an MLP by its architecture (its weights come with every call)...
    assert model_key(with_net(mlp(0))) == model_key(with_net(mlp(1)))
    assert model_key(with_net(mlp(0))) != model_key(with_net(mlp(0, (5,))))

    # ...any other network by its identity: its function is its own
    def fun(w, v):
        return w[0] * v
    net = dl.Network("nn", inputs=[x], outputs=1, fun=fun, weights=[0.0])
    twin = dl.Network("nn", inputs=[x], outputs=1, fun=fun, weights=[0.0])
    assert model_key(with_net(net)) == model_key(with_net(net).with_theta([0.5, 2.0]))
    assert model_key(with_net(net)) != model_key(with_net(twin))


def test_equal_models_share_one_compiled_model_and_the_cache_is_bounded():
    import pickle

    from dynlearn.distributed.dask import (
        MODEL_CACHE_SIZE,
        clear_compiled_models,
        model_cache_info,
        model_key,
        share_compiled,
    )
    from dynlearn.objective.objective import FitObjective
    clear_compiled_models()
    try:
        model, data = lv_model(), lv_data(2)
        fit = dl.fit(model, data, progress=False, optimizer=dl.LevenbergMarquardt(max_iter=1))
        ship = lambda: pickle.loads(pickle.dumps(fit.objective()))   # noqa: E731 - a worker's copy
        first, second = ship(), ship()
        assert first.model is not second.model
        assert share_compiled(first) == 0                  # compiled here, and kept
        assert share_compiled({"settings": [second]}) == 1
        assert second.model.compiled is first.model.compiled
        fresh = ship()                                     # compiles its own on first use
        np.testing.assert_array_equal(second.residuals(fit.x), fresh.residuals(fit.x))
        np.testing.assert_array_equal(second.jacobian(fit.x)[1], fresh.jacobian(fit.x)[1])
        info = model_cache_info()
        assert info["keys"] == [model_key(model)] and (info["hits"], info["misses"]) == (1, 1)
        # other structures (another parameter fixed each): the oldest goes first
        names = ["alpha", "beta", "gamma", "delta"]
        for name in names[:MODEL_CACHE_SIZE]:
            other = model.with_params(**{name: dl.Parameter(1.0, fixed=True)})
            share_compiled(FitObjective(model=other, bound=first.bound, space=first.space))
        keys = model_cache_info()["keys"]
        assert len(keys) == MODEL_CACHE_SIZE and model_key(model) not in keys
    finally:
        clear_compiled_models()


def test_a_second_fit_does_not_compile_the_model_again(client):
    """Two fits of one model, every start a task: each worker compiles the model once for
    both fits, and a worker that ran both got the second its compiled model from the cache
    (the counts, not timing: the gain itself is measured by benchmarks/scale_out.py)."""
    from dynlearn.distributed.dask import clear_compiled_models, model_cache_info, model_key
    model, data = lv_model(), lv_data(1, n_times=31)
    client.run(clear_compiled_models)
    one_each = dl.Parallel(client, over="starts", task_seconds=None)
    ran = [set(dl.fit(model, data, n_starts=4, seed=s, progress=False,
                      client=one_each).starts["worker"]) for s in (0, 1)]
    info = client.run(model_cache_info)
    for w in ran[0] | ran[1]:
        assert info[w]["misses"] == 1 and model_key(model) in info[w]["keys"]
    for w in ran[0] & ran[1]:
        assert info[w]["hits"] >= 1
    # a bootstrap of the same model on the same cluster compiles nothing either
    dl.bootstrap(model, data, n=4, seed=0, progress=False, client=one_each)
    after = client.run(model_cache_info)
    assert all(after[w]["misses"] == info[w]["misses"] for w in info)
    client.run(clear_compiled_models)


# --- beyond one machine (issue 16) ----------------------------------------------------------
def lynx_hare():
    """The bundled lynx-hare example (benchmarks/scale_out.py's small model): a multi-start
    fit of it is many short starts."""
    from pathlib import Path
    hare, lynx = sp.symbols("hare lynx")
    al, be, ga, de = sp.symbols("alpha beta gamma delta")
    params = {s: dl.Parameter(v, min=0.0, transform="log")
              for s, v in ((al, 0.5), (be, 0.02), (ga, 0.8), (de, 0.02))}
    model = dl.HybridModel(states=[hare, lynx], params=params,
                           rhs={hare: al * hare - be * hare * lynx,
                                lynx: de * hare * lynx - ga * lynx})
    csv = Path(dl.__file__).parent / "bundled" / "models" / "lynx_hare.csv"
    return model, dl.Dataset.from_frame(pd.read_csv(csv).rename(columns={"year": "t"}))


LYNX = dict(loss="log", y0="estimate", progress=False)


@pytest.mark.dask
@pytest.mark.slow
def test_eight_worker_processes_give_the_serial_fit_bit_for_bit():
    from distributed import Client, LocalCluster
    model, data = lynx_hare()
    serial = dl.fit(model, data, n_starts=24, seed=3, **LYNX)
    # LocalCluster returns once all eight workers are up, however long that takes
    with LocalCluster(n_workers=8, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as cl:
        par = dl.fit(model, data, n_starts=24, seed=3, client=cl, **LYNX)
        workers = set(cl.scheduler_info()["workers"])
    assert len(workers) == 8 and set(par.starts["worker"]) <= workers
    assert par.loss == serial.loss and np.array_equal(par.x, serial.x)
    pd.testing.assert_frame_equal(par.starts.drop(columns=PLACE), serial.starts,
                                  check_exact=True)


class _Processes:
    """Subprocesses of a hand-started Dask cluster, each in a process group of its own (a
    ``dask worker`` is a nanny and its worker process): ``kill`` ends the whole group."""

    def __init__(self, folder):
        self.folder, self.procs = folder, []

    def start(self, *args, name: str):
        cwd = self.folder / name        # nothing shared with the client's directory
        cwd.mkdir()
        log = open(cwd / "log.txt", "w")
        proc = subprocess.Popen([sys.executable, "-m", "dask", *args], cwd=cwd, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    @staticmethod
    def kill(proc):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=60)

    def close(self):
        for proc in self.procs:
            self.kill(proc)


def _wait_until(condition, what: str, timeout: float = 180.0):
    """Poll ``condition()`` until it holds (for a state the cluster reports, such as a
    worker gone); fail after ``timeout`` seconds (generous: start-up on a loaded machine)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.dask
@pytest.mark.slow
def test_workers_started_by_hand_join_and_leave_mid_fit(tmp_path):
    """A scheduler and workers started with ``dask scheduler`` / ``dask worker`` as separate
    processes over loopback, each in its own directory. When the first result of a
    multi-start fit is back (in the client's own result loop, which waits meanwhile: no
    timing), a third worker joins and the worker holding the other first start (running or
    finished, its result not yet fetched) is killed with everything it held; then the rest
    of the starts go out. The fit ends with the serial starts, bit for bit, and the new
    worker ran some of them."""
    from distributed import Client

    from dynlearn.distributed import DaskExecutor
    model, data = lynx_hare()
    n = 32
    serial = dl.fit(model, data, n_starts=n, seed=0, **LYNX)
    procs = _Processes(tmp_path)
    client = None
    try:
        address_file = tmp_path / "scheduler.json"
        procs.start("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                    "--scheduler-file", str(address_file), name="scheduler")
        _wait_until(address_file.exists, "the scheduler's address")
        _wait_until(lambda: "address" in address_file.read_text(), "the scheduler's address")
        address = json.loads(address_file.read_text())["address"]

        def worker(name):
            return procs.start("worker", address, "--nworkers", "1", "--nthreads", "1",
                               "--host", "127.0.0.1", "--no-dashboard", name=name)
        first = [worker("w1"), worker("w2")]
        client = Client(address, timeout=120)
        client.wait_for_workers(2, timeout=300)
        pids = client.run(os.getppid)        # worker address -> its `dask worker` process
        change: dict = {}

        def join_and_leave():
            before = set(client.scheduler_info()["workers"])
            worker("w3")
            client.wait_for_workers(3, timeout=300)
            change["joined"] = set(client.scheduler_info()["workers"]) - before
            # the worker with the other first start: on it, or finished and held there
            busy = [w for holds in (client.processing(), client.has_what())
                    for w, keys in holds.items()
                    if any(str(k_).startswith("dynlearn-starts") for k_ in keys)]
            victim = sorted(busy)[0] if busy else sorted(pids)[0]
            procs.kill(next(p for p in first if p.pid == pids[victim]))
            _wait_until(lambda: victim not in client.scheduler_info()["workers"],
                        "the scheduler to drop the killed worker")
            change["left"] = victim

        class Elastic(DaskExecutor):     # the client's result loop, as a fit runs it
            def map(self, fn, items, labels, shared, *, on_result=None, **kw):
                seen = []

                def hook(bar, result):
                    seen.append(result)
                    if len(seen) == 1:    # the rest goes out when this returns
                        join_and_leave()
                    if on_result is not None:
                        on_result(bar, result)
                return super().map(fn, items, labels, shared, on_result=hook, **kw)
        par = dl.fit(model, data, n_starts=n, seed=0,
                     client=Elastic(dl.Parallel(client, over="starts")), **LYNX)
        assert change.get("left") and len(change.get("joined", ())) == 1
        assert change["left"] not in client.scheduler_info()["workers"]
        assert change["joined"] <= set(par.starts["worker"])       # the new worker ran starts
        assert par.loss == serial.loss and np.array_equal(par.x, serial.x)
        pd.testing.assert_frame_equal(par.starts.drop(columns=PLACE), serial.starts,
                                      check_exact=True)
    finally:
        if client is not None:
            client.close()
        procs.close()
