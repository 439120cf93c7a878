"""Models, networks, the vector field, simulation and bad input."""

import pickle

import numpy as np
import pandas as pd
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import dynlearn as dl
from dynlearn.core.vectorfield import VectorField
from dynlearn.testing import central_difference, lotka_volterra_model, relative_error

x, y, t = sp.symbols("x y t")
alpha, delta = sp.symbols("alpha delta")


def lv_ude_model(**kw):
    nn = dl.MLP("nn", inputs=[x, y], outputs=2, hidden=[5, 5, 5], activation="rbf", seed=0)
    return dl.HybridModel(states=[x, y], params={alpha: 1.3, delta: 1.8},
                          rhs={x: alpha * x + nn[0], y: -delta * y + nn[1]}, **kw)


# --- the public contract ------------------------------------------------------------------
def test_contract_theta_layout_and_names():
    m = lv_ude_model()
    assert m.theta0.shape == (89,) and m.theta0.dtype == np.float64
    assert m.theta_names[:3] == ["alpha", "delta", "nn.W0[0,0]"]
    assert len(m.theta_names) == 89 and len(set(m.theta_names)) == 89
    assert m.theta0[:2].tolist() == [1.3, 1.8]


def test_contract_simulate_to_frame_round_trip():
    m = lv_ude_model()
    sol = dl.simulate(m, t=np.linspace(0, 5, 21), y0=[0.44, 4.63], method="RK45", rtol=1e-8,
                      atol=1e-8)
    df = sol.to_frame()
    assert list(df.columns) == ["t", "x", "y"]
    assert sol.success and sol.nfev > 0
    data = dl.Dataset.from_frame(df, time="t")
    # the simulated data is fitted exactly by the model that made it
    assert dl.loss(m, data, m.theta0, rtol=1e-8, atol=1e-8) < 1e-20


def test_fixed_parameters_are_not_in_theta():
    k, c = sp.symbols("k c")
    m = dl.HybridModel(states=[x], params={k: dl.Parameter(2.0, fixed=True), c: 0.5},
                       rhs={x: -k * x + c})
    assert m.theta_names == ["c"]
    sol = dl.simulate(m, [0, 1], [0.0], rtol=1e-10, atol=1e-12)
    assert sol.y[-1, 0] == pytest.approx(0.25 * (1 - np.exp(-2.0)), rel=1e-8)


def test_models_are_not_mutated_and_with_theta_copies():
    m = lv_ude_model()
    th = m.theta0
    m2 = m.with_theta(th * 2)
    assert np.array_equal(m.theta0, th)
    assert np.allclose(m2.theta0, th * 2)
    th[:] = 0  # theta0 returns a copy
    assert m.theta0[0] == 1.3


def test_fitted_networks_carry_their_weights_and_originals_keep_theirs():
    m = lv_ude_model()
    w0 = m.networks[0].weights
    th = m.theta0 + 0.5
    m2 = m.with_theta(th)
    np.testing.assert_array_equal(m2.networks[0].weights, th[2:])
    np.testing.assert_array_equal(m.networks[0].weights, w0)   # the original is not mutated
    assert m2.networks[0].uid == m.networks[0].uid              # the same network, new weights
    assert m2.networks[0][0] == m.networks[0][0]                # its outputs are the same symbols
    # a model rebuilt from the equations takes the fitted networks with_networks
    m3 = m2.with_params(alpha=2.0)
    np.testing.assert_array_equal(m3.networks[0].weights, th[2:])
    assert m3.theta0[0] == 2.0
    with pytest.raises(dl.ModelError, match="not networks of this model"):
        m.with_networks([dl.MLP("nn", inputs=[x, y], outputs=2, hidden=[5, 5, 5], seed=0)])
    # the fitted model simulates with its weights, exactly as the base model given theta,
    # also after a trip through pickle (to a Dask worker), which recompiles it
    a = dl.simulate(m, [0, 1], [1, 1], theta=th).y
    np.testing.assert_array_equal(dl.simulate(m2, [0, 1], [1, 1]).y, a)
    m4 = pickle.loads(pickle.dumps(m2))
    np.testing.assert_array_equal(m4.networks[0].weights, th[2:])
    np.testing.assert_array_equal(dl.simulate(m4, [0, 1], [1, 1]).y, a)


def test_model_dict_round_trip_is_exact():
    import json

    from dynlearn.core.serialise import model_from_dict, model_to_dict
    k = sp.Symbol("k")
    nn = dl.MLP("nn", inputs=[x, y * x], outputs=2, hidden=[4], activation="swish", seed=7,
                scale=0.1)
    m = dl.HybridModel(states=[x, y], params={alpha: dl.Parameter(1.3, min=0, transform="log"),
                                              delta: dl.Parameter(0.5, fixed=True), k: 2.0},
                       rhs={x: alpha * x + nn[0] - k, y: -delta * y + nn[1]},
                       observables={"x": x, "s": k * y}, name="round")
    d = json.loads(json.dumps(model_to_dict(m)))
    m2 = model_from_dict(d)
    np.testing.assert_array_equal(m2.theta0, m.theta0)
    assert m2.params == m.params and m2.name == "round"
    assert [str(e) for e in m2.rhs] == [str(e) for e in m.rhs]
    assert list(m2.observables) == ["x", "s"]
    # descriptions written before seeds and scales were stored rebuild with seed 0, scale 1
    old = dict(d, networks=[{k: v for k, v in d["networks"][0].items()
                             if k not in ("seed", "scale")}])
    np.testing.assert_array_equal(model_from_dict(old).networks[0].weights,
                                  dl.MLP("nn", inputs=[x, y * x], outputs=2, hidden=[4],
                                         activation="swish", seed=0).weights)


def test_model_pickles_without_compiled_functions():
    m = lv_ude_model()
    dl.simulate(m, [0, 1], [1, 1])
    m2 = pickle.loads(pickle.dumps(m))
    a = dl.simulate(m, [0, 1], [1, 1]).y
    b = dl.simulate(m2, [0, 1], [1, 1]).y
    assert np.array_equal(a, b)


def test_pure_physics_and_observables():
    m = dl.HybridModel(states=[x, y], rhs={x: y, y: -x}, observables={"energy": x**2 + y**2})
    sol = dl.simulate(m, np.linspace(0, 3, 7), [1, 0], rtol=1e-10, atol=1e-12)
    assert np.allclose(sol.observables[:, 0], 1.0, atol=1e-8)
    assert "energy" in sol.to_frame().columns


def test_time_dependent_rhs_and_network_on_time():
    nn = dl.MLP("g", inputs=[t], outputs=1, hidden=[3], seed=1)
    m = dl.HybridModel(states=[x], rhs={x: sp.cos(t) + 0 * nn[0]})
    sol = dl.simulate(m, np.linspace(0, 2, 5), [0.0], rtol=1e-10, atol=1e-12)
    assert np.allclose(sol.y[:, 0], np.sin(sol.t), atol=1e-8)


def test_inputs_zoh_and_linear():
    u = sp.Symbol("u")
    m = dl.HybridModel(states=[x], rhs={x: u}, inputs=[u])
    frame = pd.DataFrame({"time": [0.0, 1.0, 2.0], "u": [1.0, 3.0, 3.0]})
    lin = dl.simulate(m, [0, 1, 2], [0.0], inputs=frame, rtol=1e-10, atol=1e-12)
    assert lin.y[1, 0] == pytest.approx(2.0, rel=1e-7)     # integral of 1 + 2 s on [0, 1]
    zoh = dl.simulate(m, [0, 1, 2], [0.0], rtol=1e-10, atol=1e-12, max_step=0.1,
                      inputs=dl.InputSignal(frame["time"], frame[["u"]], kind="zoh"))
    assert zoh.y[1, 0] == pytest.approx(1.0, rel=1e-6)


# --- solvers ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA"])
def test_solver_error_follows_tolerance(method):
    """Global error of a linear oscillator, in units of the tolerance, shrinks with it."""
    lam = sp.Symbol("lam")
    m = dl.HybridModel(states=[x, y], params={lam: 0.1}, rhs={x: -lam * x + y, y: -x - lam * y})
    tt = np.linspace(0, 10, 11)
    exact = np.exp(-0.1 * tt)[:, None] * np.column_stack([np.cos(tt), -np.sin(tt)])
    errors = []
    for tol in (1e-5, 1e-8):
        sol = dl.simulate(m, tt, [1, 0], method=method, rtol=tol, atol=tol)
        errors.append(np.abs(sol.y - exact).max())
    assert errors[1] < errors[0] / 30
    assert errors[1] < 1e-8 * 1e3


def test_recording_solver_reproduces_solve_ivp_exactly():
    from scipy.integrate import solve_ivp

    from dynlearn.sensitivity.scipy_rk import RecordingRK45
    vf = VectorField(lv_ude_model(), None)
    tt = np.linspace(0, 5, 21)
    a = solve_ivp(vf.fun, (0, 5), [0.44, 4.63], t_eval=tt, rtol=1e-6, atol=1e-6)
    b = solve_ivp(vf.fun, (0, 5), [0.44, 4.63], t_eval=tt, rtol=1e-6, atol=1e-6,
                  method=RecordingRK45)
    assert np.array_equal(a.y, b.y)


@pytest.mark.parametrize("method, order", [("RK45", 5), ("RK23", 3)])
def test_discrete_rk_step_order(method, order):
    """The steps the discrete adjoint differentiates have the method's order: halving a fixed
    step divides the one-step error by ~2**(order + 1)."""
    from dynlearn.sensitivity.scipy_rk import RECORDING_SOLVERS, rk_step, tableau
    cls = RECORDING_SOLVERS[method]
    f = lambda s, v: np.array([v[1], -v[0]])  # noqa: E731
    errs = []
    for h in (0.2, 0.1):
        K = np.empty((tableau(cls).n_stages + 1, 2))
        y1, _ = rk_step(cls, f, 0.0, np.array([1.0, 0.0]), f(0, [1.0, 0.0]), h, K)
        errs.append(np.abs(y1 - [np.cos(h), -np.sin(h)]).max())
    assert 2 ** (order + 0.5) < errs[0] / errs[1] < 2 ** (order + 1.5)


# --- Jacobians and network derivatives ----------------------------------------------------
def test_vector_field_jacobian_is_exact():
    m = lv_ude_model()
    vf = VectorField(m, m.theta0 * 1.1)
    yv = np.array([0.7, 2.1])
    J = vf.jac(0.3, yv)
    h = 1e-6
    Jfd = central_difference(lambda v: vf.fun(0.3, v), yv, step=h, relative=False)
    assert relative_error(J, Jfd) < 1e-8
    Jb, _ = vf.jac_batch(np.array([0.3, 0.3]), np.vstack([yv, yv]))
    assert np.allclose(Jb[0], J, rtol=1e-13, atol=1e-13)
    _, Jt = vf.jac_and_theta_jac(0.3, yv)
    th = vf.theta
    Jtfd = central_difference(lambda p: VectorField(m, p).fun(0.3, yv), th, step=h,
                              relative=False)
    assert relative_error(Jt, Jtfd) < 1e-7


@pytest.mark.parametrize("model", [lv_ude_model, lotka_volterra_model])
def test_theta_vjp_over_points_is_the_sum_of_pointwise_products(model):
    """``theta_vjp_points`` (the adjoint's quadrature of ``lambda^T df/dtheta``) equals the
    sum of ``C_i^T df/dtheta(t_i, y_i)`` point by point, across its chunks, with a network
    in the model and without."""
    m = model()
    vf = VectorField(m, m.theta0 * 1.1)
    rng = np.random.default_rng(3)
    T = rng.uniform(0, 2, 11)
    Y = rng.uniform(0.2, 2.5, (11, vf.n))
    C = rng.normal(size=(11, vf.n))
    want = sum(C[i] @ vf.jac_and_theta_jac(T[i], Y[i])[1] for i in range(11))
    assert np.any(want != 0)
    for chunk in (4, 64):
        got = vf.theta_vjp_points(T, Y, C, chunk=chunk)
        assert relative_error(got, want) < 1e-13


@settings(max_examples=25, deadline=None)
@given(hidden=st.lists(st.integers(1, 6), min_size=0, max_size=3),
       n_in=st.integers(1, 3), n_out=st.integers(1, 3),
       activation=st.sampled_from(["tanh", "rbf", "sigmoid", "softplus", "swish"]),
       seed=st.integers(0, 1000))
def test_mlp_closed_forms_match_autograd(hidden, n_in, n_out, activation, seed):
    import autograd.numpy as anp
    from autograd import elementwise_grad, jacobian
    syms = sp.symbols(f"v0:{n_in}")
    net = dl.MLP("n", inputs=list(syms), outputs=n_out, hidden=hidden, activation=activation,
                 seed=seed)
    acts = {"tanh": anp.tanh, "rbf": lambda z: anp.exp(-z * z),
            "sigmoid": lambda z: 1 / (1 + anp.exp(-z)),
            "softplus": lambda z: anp.log1p(anp.exp(z)), "swish": lambda z: z / (1 + anp.exp(-z))}

    def ref(w, v):
        a = v
        layers = []
        off = 0
        for n1, n2 in zip(net.sizes[:-1], net.sizes[1:]):
            layers.append((anp.reshape(w[off:off + n1 * n2], (n1, n2)),
                           w[off + n1 * n2:off + n1 * n2 + n2]))
            off += n1 * n2 + n2
        for W, b in layers[:-1]:
            a = acts[activation](anp.dot(a, W) + b)
        return anp.dot(a, layers[-1][0]) + layers[-1][1]

    rng = np.random.default_rng(seed)
    w = net.weights
    V = rng.standard_normal((4, n_in))
    assert np.allclose(net.forward(w, V), ref(w, V), rtol=1e-12, atol=1e-12)
    Jv = net.input_jacobian(w, V)
    for i in range(4):
        assert np.allclose(Jv[i], jacobian(lambda v: ref(w, v))(V[i]), rtol=1e-9, atol=1e-12)
    Jw = net.weight_jacobian(w, V)
    for i in range(4):
        assert np.allclose(Jw[i], jacobian(lambda ww, i=i: ref(ww, V[i]))(w), rtol=1e-9, atol=1e-12)
    cot = rng.standard_normal((4, n_out))
    vjp = elementwise_grad(lambda ww: anp.sum(ref(ww, V) * cot))(w)
    assert np.allclose(net.weight_vjp(w, V, cot), vjp, rtol=1e-9, atol=1e-12)


def test_default_mlp_weights_are_reproducible_and_none_draws_fresh_ones():
    # a default network built twice starts from the same weights, so a default fit run
    # again is the same fit; seed=None asks for fresh random weights
    a = dl.MLP("nn", inputs=[x, y], outputs=2)
    b = dl.MLP("nn", inputs=[x, y], outputs=2)
    assert a.seed == 0 and np.array_equal(a.weights, b.weights)
    assert np.array_equal(a.weights, dl.MLP("nn", inputs=[x, y], outputs=2, seed=0).weights)
    c = dl.MLP("nn", inputs=[x, y], outputs=2, seed=None)
    d = dl.MLP("nn", inputs=[x, y], outputs=2, seed=None)
    assert not np.array_equal(c.weights, d.weights)
    # explicit weights carry no seed: a saved model must not claim a seed drew them
    e = dl.MLP("nn", inputs=[x, y], outputs=2, weights=a.weights * 2)
    assert e.seed is None and np.array_equal(e.weights, a.weights * 2)


def test_custom_autograd_network_gives_same_gradient_as_mlp():
    import autograd.numpy as anp
    mlp = dl.MLP("nn", inputs=[x, y], outputs=2, hidden=[4], activation="tanh", seed=3)

    def fun(w, v):
        W0 = anp.reshape(w[:8], (2, 4))
        b0 = w[8:12]
        W1 = anp.reshape(w[12:20], (4, 2))
        return anp.dot(anp.tanh(anp.dot(v, W0) + b0), W1) + w[20:22]

    custom = dl.Network("nn", inputs=[x, y], outputs=2, fun=fun, weights=mlp.weights)
    data = dl.simulate(lotka_volterra_model(), np.linspace(0, 2, 9), [1.0, 2.0]).to_frame()
    data = dl.Dataset.from_frame(data)
    grads = []
    for net in (mlp, custom):
        m = dl.HybridModel(states=[x, y], rhs={x: x - net[0], y: -y + net[1]})
        grads.append(dl.loss_and_grad(m, data, m.theta0, rtol=1e-10, atol=1e-10)[1])
    assert relative_error(grads[1], grads[0]) < 1e-10


# --- bad input ----------------------------------------------------------------------------
def test_all_errors_derive_from_one_base():
    import dynlearn.errors as errors
    for name in errors.__all__:
        if name == "FitInterrupted":   # Ctrl-C: a KeyboardInterrupt, which no handler of
            cls = errors.FitInterrupted    # Exception (or DynlearnError) may swallow
            assert issubclass(cls, KeyboardInterrupt) and not issubclass(cls, Exception)
            continue
        cls = getattr(errors, name)
        if issubclass(cls, Warning):    # a warning is not an error: the work goes on
            assert issubclass(cls, UserWarning) and not issubclass(cls, dl.DynlearnError)
            continue
        assert issubclass(cls, dl.DynlearnError)
    # bad values are ValueErrors; wrong types are TypeErrors of the same kind
    for value, typ in ((dl.ModelError, dl.ModelTypeError), (dl.DataError, dl.DataTypeError),
                       (dl.ParameterError, dl.ParameterTypeError),
                       (dl.OptionError, dl.OptionTypeError)):
        assert issubclass(value, ValueError) and not issubclass(value, TypeError)
        assert issubclass(typ, value) and issubclass(typ, TypeError)
    assert issubclass(dl.SolveError, RuntimeError) and issubclass(dl.TaskError, RuntimeError)
    assert issubclass(dl.MissingDependencyError, ImportError)
    with pytest.raises(TypeError, match="states must be a list"):
        dl.HybridModel(states="x", rhs={x: -x})
    with pytest.raises(dl.ModelError, match="no equation"):
        dl.HybridModel(states=[x, y], rhs={x: -x})
    with pytest.raises(TypeError, match="expected a pandas DataFrame"):
        dl.Dataset.from_frame([[0, 1]])
    with pytest.raises(TypeError, match="unknown keyword argument"):
        dl.simulate(dl.HybridModel(states=[x], rhs={x: -x}), [0, 1], [1.0], max_stp=1)
    with pytest.raises(ValueError, match="not a solve_ivp method"):
        dl.simulate(dl.HybridModel(states=[x], rhs={x: -x}), [0, 1], [1.0], method="Euler")
    with pytest.raises(dl.ParameterTypeError):
        dl.Parameter("a lot")


def test_unknown_symbol_in_rhs():
    z = sp.Symbol("z")
    with pytest.raises(dl.ModelError, match=r"rhs of 'x' uses undeclared symbol\(s\) \['z'\]"):
        dl.HybridModel(states=[x], rhs={x: -z * x})


def test_state_without_equation():
    with pytest.raises(dl.ModelError, match=r"state\(s\) \['y'\] have no equation"):
        dl.HybridModel(states=[x, y], rhs={x: -x})


def test_equation_for_non_state():
    with pytest.raises(dl.ModelError, match="equation for 'q', which is not a state"):
        dl.HybridModel(states=[x], rhs={x: -x, "q": 1})


def test_network_output_index_out_of_range():
    nn = dl.MLP("nn", inputs=[x], outputs=2, hidden=[3])
    with pytest.raises(dl.ModelError, match=r"'nn' has 2 outputs .* index 5 is out of range"):
        nn[5]


def test_two_networks_with_one_name():
    a = dl.MLP("nn", inputs=[x], outputs=1, hidden=[2])
    b = dl.MLP("nn", inputs=[x], outputs=1, hidden=[2])
    with pytest.raises(dl.ModelError, match="both named 'nn'"):
        dl.HybridModel(states=[x], rhs={x: a[0] + b[0]})


def test_duplicate_names_and_time_clash():
    with pytest.raises(dl.ModelError, match="'t' is declared twice.*time="):
        dl.HybridModel(states=[t], rhs={t: 1})


def test_unknown_activation():
    with pytest.raises(dl.ModelError, match="unknown activation 'gelu2'"):
        dl.MLP("nn", inputs=[x], outputs=1, activation="gelu2")


def test_simulate_bad_inputs():
    m = lotka_volterra_model()
    with pytest.raises(dl.DataError, match=r"y0.* must be finite; y0\[1\] \(y\) = nan"):
        dl.simulate(m, [0, 1], [1.0, np.nan])
    with pytest.raises(dl.DataError, match=r"must have shape \(2,\)"):
        dl.simulate(m, [0, 1], [1.0, 2.0, 3.0])
    with pytest.raises(dl.DataError, match=r"strictly increasing; t\[2\]=1.0 <= t\[1\]=2.0"):
        dl.simulate(m, [0, 2, 1], [1.0, 1.0])
    with pytest.raises(dl.OptionError, match=r"unknown keyword argument\(s\) \['tol'\]"):
        dl.simulate(m, [0, 1], [1.0, 1.0], tol=1e-3)
    with pytest.raises(dl.OptionError, match="not a solve_ivp method"):
        dl.simulate(m, [0, 1], [1.0, 1.0], method="Euler")
    with pytest.raises(dl.ParameterError, match=r"theta must have shape \(4,\)"):
        dl.simulate(m, [0, 1], [1.0, 1.0], theta=[1.0, 2.0])


def test_missing_inputs_are_reported():
    u = sp.Symbol("u")
    m = dl.HybridModel(states=[x], rhs={x: u}, inputs=[u])
    with pytest.raises(dl.DataError, match=r"pass inputs="):
        dl.simulate(m, [0, 1], [0.0])


def test_solver_failure_carries_status_and_message():
    m = dl.HybridModel(states=[x], rhs={x: x**2})   # blows up at t = 1
    with pytest.raises(dl.SolveError, match="failed at t=") as err:
        dl.simulate(m, [0, 2], [1.0])
    assert err.value.status == -1 and err.value.solver_message
    sol = dl.simulate(m, [0, 0.5, 2], [1.0], throw=False)
    assert not sol.success and sol.status == -1 and sol.message


def test_loss_unknown_keyword_and_sensitivity():
    m = lotka_volterra_model()
    data = dl.Dataset.from_frame(dl.simulate(m, [0, 1, 2], [1, 1]).to_frame())
    with pytest.raises(dl.OptionError, match="unknown keyword"):
        dl.loss(m, data, rtoll=1e-3)
    with pytest.raises(dl.OptionError, match="sensitivity must be"):
        dl.loss_and_grad(m, data, sensitivity="adjoint")
    with pytest.raises(dl.OptionError, match="kind='discrete'"):
        dl.loss_and_grad(m, data, method="Radau", sensitivity=dl.Adjoint(kind="discrete"))


def test_domain_errors_become_rejected_steps_not_crashes():
    # sqrt of a state that an overshooting trial step may push below zero: Torricelli outflow
    k = sp.Symbol("k")
    m = dl.HybridModel(states=[x], params={k: 1.0}, rhs={x: -k * sp.sqrt(x)})
    from dynlearn.core.vectorfield import VectorField
    vf = VectorField(m, None)
    assert np.isnan(vf.fun(0.0, np.array([-1.0]))[0])
    # the tank empties at t = 2; trial steps past it make x < 0. The solve must end as a
    # Solution (success or a solver status), never with a math domain error from inside
    sol = dl.simulate(m, [0, 1, 3], [1.0], rtol=1e-6, atol=1e-9, throw=False)
    assert isinstance(sol, dl.Solution)
    assert sol.success or sol.status == -1
    sol = dl.simulate(m, [0, 1, 1.5], [1.0], rtol=1e-10, atol=1e-12)
    assert sol.y[-1, 0] == pytest.approx((1 - 0.75) ** 2, rel=1e-6)


# --- issue 13: errors at construction, saying exactly what is wrong -----------------------------
def test_parameter_with_min_above_max_says_so():
    with pytest.raises(dl.ParameterError, match="min 2 is greater than its max 1"):
        dl.Parameter(1.5, min=2.0, max=1.0)
    with pytest.raises(dl.ParameterError, match="min must be a number, got nan"):
        dl.Parameter(1.0, min=float("nan"))


def test_undefined_sympy_function_is_a_model_error_naming_it():
    """``sp.Function("exq")(x)`` compiled to a printer error deep in sympy; now the model
    refuses it at construction, naming it and the functions model files allow."""
    x, k = sp.symbols("x k")
    exq = sp.Function("exq")
    with pytest.raises(dl.ModelError, match=r"rhs of 'x' calls the undefined function\(s\) "
                                            r"\['exq'\].*'exp'"):
        dl.HybridModel([x], {x: -k * exq(x)}, params={k: 1.0})
    with pytest.raises(dl.ModelError, match=r"observable 'y' calls .*\['g'\]"):
        dl.HybridModel([x], {x: -x}, observables={"y": sp.Function("g")(x)})
    net = dl.MLP("nn", inputs=[sp.Function("h")(x)], outputs=1, hidden=[2])
    with pytest.raises(dl.ModelError, match=r"network 'nn' input 0 .* calls .*\['h'\]"):
        dl.HybridModel([x], {x: net[0]})
    # sympy's own functions are fine
    dl.HybridModel([x], {x: -k * sp.exp(-x) + sp.sin(x)}, params={k: 1.0})
