"""dl.petab on a small PEtab SciML problem written here: an SBML model (libsbml), PEtab v2
tables, two networks (YAML + HDF5 parameters), one in the right-hand side and one in an
observable, against a likelihood computed independently (solve_ivp of the same ODE with the
networks written out in numpy) and gradients against central differences."""

import math

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("libsbml")
pytest.importorskip("petab")
pytest.importorskip("sbmlmath")
h5py = pytest.importorskip("h5py")
yaml = pytest.importorskip("yaml")
pytest.importorskip("autograd")

from petab_builders import Sbml, write_tsv, write_v2_yaml  # noqa: E402

import dynlearn.petab as dp  # noqa: E402
from dynlearn.errors import PetabError  # noqa: E402
from dynlearn.testing import central_difference  # noqa: E402

A, B, X0, Y0 = 0.8, 0.6, 1.0, 0.5
SIGMA_X, SIGMA_Y = 0.1, 0.2
TIMES = np.array([0.5, 1.0, 1.5, 2.0, 3.0])
RNG = np.random.default_rng(3)
# net1 (right-hand side): Linear(2, 3) - tanh - Linear(3, 1); net2 (observable):
# Linear(1, 2) - tanh - Linear(2, 1). PyTorch layouts: weight (out, in), bias (out,).
W = {"net1": {"layer1": {"weight": RNG.normal(0, 0.5, (3, 2)), "bias": RNG.normal(0, 0.5, 3)},
              "layer2": {"weight": RNG.normal(0, 0.5, (1, 3)), "bias": RNG.normal(0, 0.5, 1)}},
     "net2": {"layer1": {"weight": RNG.normal(0, 0.5, (2, 1)), "bias": RNG.normal(0, 0.5, 2)},
              "layer2": {"weight": RNG.normal(0, 0.5, (1, 2)), "bias": RNG.normal(0, 0.5, 1)}}}


def _mlp(w, v):
    h = np.tanh(w["layer1"]["weight"] @ v + w["layer1"]["bias"])
    return float((w["layer2"]["weight"] @ h + w["layer2"]["bias"])[0])


def _rhs(t, u, w1, a, b):
    x, y = u
    return [-a * x + _mlp(w1, np.array([x, y])), x - b * y]


def _sbml(path):
    """dx/dt = -a x + gamma, dy/dt = x - b y as rate rules; the network replaces gamma."""
    return (Sbml("hybrid").species("x", X0, amount=True).species("y", Y0, amount=True)
            .parameters({"a": A, "b": B, "gamma": 0.0})
            .rate_rule("x", "-a * x + gamma").rate_rule("y", "x - b * y").write(path))


def _net_yaml(path, net, n_in, n_hidden):
    spec = {"nn_model_id": net, "inputs": [{"input_id": "input0"}],
            "layers": [{"layer_id": "layer1", "layer_type": "Linear",
                        "args": {"in_features": n_in, "out_features": n_hidden, "bias": True}},
                       {"layer_id": "layer2", "layer_type": "Linear",
                        "args": {"in_features": n_hidden, "out_features": 1, "bias": True}}],
            "forward": [
                {"name": "net_input", "op": "placeholder", "target": "net_input", "args": [],
                 "kwargs": {}},
                {"name": "layer1", "op": "call_module", "target": "layer1",
                 "args": ["net_input"], "kwargs": {}},
                {"name": "tanh", "op": "call_function", "target": "tanh", "args": ["layer1"],
                 "kwargs": {}},
                {"name": "layer2", "op": "call_module", "target": "layer2", "args": ["tanh"],
                 "kwargs": {}},
                {"name": "output", "op": "output", "target": "output", "args": ["layer2"],
                 "kwargs": {}}]}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))


def _simulate_reference(w1, a=A, b=B):
    from scipy.integrate import solve_ivp
    sol = solve_ivp(_rhs, (0.0, TIMES[-1]), [X0, Y0], t_eval=TIMES, args=(w1, a, b),
                    method="DOP853", rtol=1e-12, atol=1e-12)
    return sol.y.T


def _observables(Y, w2):
    x, y = Y[:, 0], Y[:, 1]
    return x, np.array([_mlp(w2, np.array([v])) for v in y]) + x


@pytest.fixture(scope="module")
def problem_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sciml")
    _sbml(d / "model.xml")
    _net_yaml(d / "net1.yaml", "net1", 2, 3)
    _net_yaml(d / "net2.yaml", "net2", 1, 2)
    with h5py.File(d / "ps.hdf5", "w") as fh:
        fh.create_group("metadata").create_dataset("pytorch_format", data=True)
        for net, layers in W.items():
            for lid, arrays in layers.items():
                for name, value in arrays.items():
                    fh.create_dataset(f"parameters/{net}/{lid}/{name}", data=value)
    # synthetic data from the true model plus noise
    Y = _simulate_reference(W["net1"])
    hx, hy = _observables(Y, W["net2"])
    meas = []
    for oid, h, s in (("obs_x", hx, SIGMA_X), ("obs_y", hy, SIGMA_Y)):
        for t, v in zip(TIMES, h + RNG.normal(0, s, h.size)):
            meas.append([oid, "e1", float(v), float(t)])
    write_tsv(d / "measurements.tsv", meas, ["observableId", "experimentId", "measurement", "time"])
    write_tsv(d / "observables.tsv",
              [["obs_x", "x", SIGMA_X, "normal"], ["obs_y", "net2_output1 + x", SIGMA_Y, "normal"]],
              ["observableId", "observableFormula", "noiseFormula", "noiseDistribution"])
    write_tsv(d / "experiments.tsv", [["e1", 0.0, ""]], ["experimentId", "time", "conditionId"])
    write_tsv(d / "parameters.tsv",
              [["a", "log10", 0.01, 10.0, A, "true"], ["b", "lin", 0.0, 5.0, B, "true"],
               ["net1_ps", "lin", "-inf", "inf", "array", "true"],
               ["net2_ps", "lin", "-inf", "inf", "array", "true"],
               ["net2_layer1", "lin", "-inf", "inf", "array", "false"]],
              ["parameterId", "parameterScale", "lowerBound", "upperBound", "nominalValue",
               "estimate"])
    write_tsv(d / "mapping.tsv",
              [["net1_in1", "net1.inputs[0][0]"], ["net1_in2", "net1.inputs[0][1]"],
               ["net1_output1", "net1.outputs[0][0]"], ["net1_ps", "net1.parameters"],
               ["net2_in", "net2.inputs[0][0]"], ["net2_output1", "net2.outputs[0][0]"],
               ["net2_ps", "net2.parameters"], ["net2_layer1", "net2.parameters[layer1]"]],
              ["petabEntityId", "modelEntityId"])
    write_tsv(d / "hybridization.tsv",
              [["net1_in1", "x"], ["net1_in2", "y"], ["gamma", "net1_output1"], ["net2_in", "y"]],
              ["targetId", "targetValue"])
    write_v2_yaml(d, model_id="hybrid", conditions=False, mapping="mapping.tsv",
                  extensions={"sciml": {
                      "array_files": ["ps.hdf5"], "hybridization_files": ["hybridization.tsv"],
                      "neural_nets": {n: {"location": f"{n}.yaml", "format": "YAML",
                                          "pre_initialization": False}
                                      for n in ("net1", "net2")}}})
    return d


@pytest.fixture(scope="module")
def prob(problem_dir):
    return dp.load(problem_dir / "problem.yaml", rtol=1e-11, atol=1e-12)


def _nllh(prob, problem_dir, a=A, b=B):
    meas = pd.read_csv(problem_dir / "measurements.tsv", sep="\t")
    Y = _simulate_reference(W["net1"], a, b)
    hx, hy = _observables(Y, W["net2"])
    total = 0.0
    for oid, h, s in (("obs_x", hx, SIGMA_X), ("obs_y", hy, SIGMA_Y)):
        m = meas.loc[meas["observableId"] == oid, "measurement"].to_numpy()
        total += np.sum(0.5 * np.log(2 * np.pi * s ** 2) + 0.5 * ((m - h) / s) ** 2)
    return total, np.concatenate([hx, hy])


def test_layout_names_mechanistic_then_networks_without_frozen_layer(prob):
    n1 = 3 * 2 + 3 + 3 + 1
    assert prob.x_names[:2] == ["a", "b"]
    assert len(prob.x_names) == 2 + n1 + 3          # net2's layer1 is frozen
    assert prob.x_names[2] == "net1.layer1.weight[0]"
    assert prob.x_names[-3:] == ["net2.layer2.weight[0]", "net2.layer2.weight[1]",
                                 "net2.layer2.bias[0]"]
    assert prob.x_nominal[0] == pytest.approx(math.log10(A))
    # weights come from the HDF5 file in PyTorch (row-major) order
    assert prob.x_nominal[2:8] == pytest.approx(W["net1"]["layer1"]["weight"].ravel())
    assert prob.x_nominal[-3:] == pytest.approx(np.r_[W["net2"]["layer2"]["weight"].ravel(),
                                                      W["net2"]["layer2"]["bias"]])


def test_nllh_and_simulations_match_an_independent_solution(prob, problem_dir):
    ref, h_ref = _nllh(prob, problem_dir)
    x = prob.x_nominal
    assert prob.nllh(x) == pytest.approx(ref, rel=1e-8, abs=1e-8)
    assert np.max(np.abs(prob.simulate(x) - h_ref)) < 1e-8
    # away from the nominal point: another a and b
    x2 = x.copy()
    x2[0], x2[1] = math.log10(0.5), 0.9
    ref2, _ = _nllh(prob, problem_dir, a=0.5, b=0.9)
    assert prob.nllh(x2) == pytest.approx(ref2, rel=1e-8, abs=1e-8)


def test_gradient_matches_central_differences(prob):
    x = prob.x_nominal + 0.05 * np.random.default_rng(0).normal(size=len(prob.x_names))
    f, g = prob.loss_and_grad(x)
    # the same likelihood, integrated with and without sensitivities (rtol 1e-11)
    assert f == pytest.approx(prob.nllh(x), rel=1e-8)
    rng = np.random.default_rng(1)
    # mechanistic parameters, one weight of each network block, and two random directions
    dirs = [np.eye(len(x))[i] for i in (0, 1, 2, len(x) - 1)]
    dirs += [rng.normal(size=len(x)) for _ in range(2)]
    D = np.column_stack(dirs)
    fds = central_difference(lambda s: prob.nllh(x + D @ s), np.zeros(len(dirs)), step=1e-5,
                             relative=False)
    for v, fd in zip(dirs, fds):
        an = float(g @ v)
        # relative error of the directional derivative
        assert abs(an - fd) <= 1e-5 * max(abs(fd), 1.0), (an, fd)


def test_unsupported_constructs_are_named(problem_dir, tmp_path):
    import shutil
    d = tmp_path / "p"
    shutil.copytree(problem_dir, d)
    write_tsv(d / "experiments.tsv", [["e1", "-inf", ""], ["e1", 0.0, ""]],
              ["experimentId", "time", "conditionId"])
    with pytest.raises(PetabError, match="preequilibration"):
        dp.load(d / "problem.yaml")
    write_tsv(d / "experiments.tsv", [["e1", 0.0, ""]], ["experimentId", "time", "conditionId"])
    write_tsv(d / "hybridization.tsv",
              [["net1_in1", "x"], ["net1_in2", "y"], ["gamma", "net1_output1"], ["net2_in", "y"],
               ["nowhere", "net2_output1"]], ["targetId", "targetValue"])
    with pytest.raises(PetabError, match="'nowhere'"):
        dp.load(d / "problem.yaml")


def test_plain_v2_problem_with_conditions(problem_dir, tmp_path):
    """A v2 problem without networks (experiments, a long condition table) loads through
    the v1 evaluator and gives the likelihood of an independent solution."""
    from scipy.integrate import solve_ivp

    d = tmp_path / "plain"
    d.mkdir()
    _sbml(d / "model.xml")
    gamma, b2 = 0.3, 1.4
    meas = []
    ys = {}
    for eid, b in (("e1", B), ("e2", b2)):
        sol = solve_ivp(lambda t, u, b=b: [-A * u[0] + gamma, u[0] - b * u[1]],
                        (0, TIMES[-1]), [X0, Y0], t_eval=TIMES, rtol=1e-12, atol=1e-12)
        ys[eid] = sol.y[1]
        for t, v in zip(TIMES, sol.y[1] + RNG.normal(0, SIGMA_Y, TIMES.size)):
            meas.append(["obs_y", eid, float(v), float(t)])
    write_tsv(d / "measurements.tsv", meas, ["observableId", "experimentId", "measurement", "time"])
    write_tsv(d / "observables.tsv", [["obs_y", "y", SIGMA_Y, "normal"]],
              ["observableId", "observableFormula", "noiseFormula", "noiseDistribution"])
    write_tsv(d / "experiments.tsv", [["e1", 0.0, ""], ["e2", 0.0, "c2"]],
              ["experimentId", "time", "conditionId"])
    write_tsv(d / "conditions.tsv", [["c2", "b", "b_c2"]],
              ["conditionId", "targetId", "targetValue"])
    write_tsv(d / "parameters.tsv",
              [["a", 0.01, 10.0, A, "false"], ["b", 0.0, 5.0, B, "true"],
               ["b_c2", 0.0, 5.0, b2, "true"], ["gamma", 0.0, 5.0, gamma, "true"]],
              ["parameterId", "lowerBound", "upperBound", "nominalValue", "estimate"])
    write_v2_yaml(d, model_id="hybrid")
    prob = dp.load(d / "problem.yaml")
    assert prob.x_names == ["b", "b_c2", "gamma"]
    m = pd.read_csv(d / "measurements.tsv", sep="\t")
    ref = 0.0
    for eid in ("e1", "e2"):
        r = (m.loc[m["experimentId"] == eid, "measurement"].to_numpy() - ys[eid]) / SIGMA_Y
        ref += np.sum(0.5 * np.log(2 * np.pi * SIGMA_Y ** 2) + 0.5 * r ** 2)
    assert prob.nllh(prob.x_nominal) == pytest.approx(ref, rel=1e-7)


def test_priors_on_network_arrays_make_the_objective_a_posterior(problem_dir, tmp_path):
    """A normal prior on all of net1's parameters and a wider one on its layer1.weight (the
    more specific row wins): objective - nllh is the negative log prior density."""
    import shutil
    d = tmp_path / "prior"
    shutil.copytree(problem_dir, d)
    par = pd.read_csv(d / "parameters.tsv", sep="\t")
    par["priorDistribution"] = ["", "", "normal", "", ""]
    par["priorParameters"] = ["", "", "0.0;1.0", "", ""]
    extra = pd.DataFrame([["net1_l1w", "lin", "-inf", "inf", "array", "true", "normal",
                           "0.5;2.0"]], columns=par.columns)
    write_tsv(d / "parameters.tsv", pd.concat([par, extra]))
    mp = pd.read_csv(d / "mapping.tsv", sep="\t")
    mp.loc[len(mp)] = ["net1_l1w", "net1.parameters[layer1].weight"]
    write_tsv(d / "mapping.tsv", mp)
    prob = dp.load(d / "problem.yaml")
    x = prob.x_nominal
    f, g = prob.objective(x)
    f0, g0 = prob.loss_and_grad(x)

    def nlp(w, mu, s):
        return np.sum(0.5 * np.log(2 * np.pi * s ** 2) + 0.5 * ((w - mu) / s) ** 2)

    w1 = W["net1"]
    ref = (nlp(w1["layer1"]["weight"], 0.5, 2.0) + nlp(w1["layer1"]["bias"], 0.0, 1.0)
           + nlp(w1["layer2"]["weight"], 0.0, 1.0) + nlp(w1["layer2"]["bias"], 0.0, 1.0))
    assert f - f0 == pytest.approx(ref, rel=1e-12)
    i = prob.x_names.index("net1.layer1.weight[0]")
    assert g[i] - g0[i] == pytest.approx((w1["layer1"]["weight"].ravel()[0] - 0.5) / 4.0)


def test_time_course_condition_changes_with_exact_sensitivities(tmp_path):
    """A v2 experiment with a second period at t = 1: b changes to an estimated value and
    x jumps by an estimated dose (an expression of the state at the change). Likelihood
    against a piecewise solve_ivp; gradient against central differences."""
    from scipy.integrate import solve_ivp

    d = tmp_path / "course"
    d.mkdir()
    _sbml(d / "model.xml")
    gamma, b2, dose, t1 = 0.3, 1.4, 0.7, 1.0

    def f(t, u, b):
        return [-A * u[0] + gamma, u[0] - b * u[1]]

    s1 = solve_ivp(f, (0, t1), [X0, Y0], args=(B,), rtol=1e-12, atol=1e-12,
                   t_eval=TIMES[TIMES < t1], dense_output=True)
    u1 = s1.sol(t1)
    s2 = solve_ivp(f, (t1, TIMES[-1]), [u1[0] + dose, u1[1]], args=(b2,), rtol=1e-12,
                   atol=1e-12, t_eval=TIMES[TIMES >= t1])
    ys = np.concatenate([s1.y[1], s2.y[1]])
    meas = [["obs_y", "e1", float(v), float(t)]
            for t, v in zip(TIMES, ys + RNG.normal(0, SIGMA_Y, TIMES.size))]
    write_tsv(d / "measurements.tsv", meas, ["observableId", "experimentId", "measurement", "time"])
    write_tsv(d / "observables.tsv", [["obs_y", "y", SIGMA_Y, "normal"]],
              ["observableId", "observableFormula", "noiseFormula", "noiseDistribution"])
    write_tsv(d / "experiments.tsv", [["e1", 0.0, ""], ["e1", t1, "later"]],
              ["experimentId", "time", "conditionId"])
    write_tsv(d / "conditions.tsv", [["later", "b", "b_late"], ["later", "x", "x + dose"]],
              ["conditionId", "targetId", "targetValue"])
    write_tsv(d / "parameters.tsv",
              [["a", 0.01, 10.0, A, "true"], ["b", 0.0, 5.0, B, "true"],
               ["b_late", 0.0, 5.0, b2, "true"], ["dose", 0.0, 5.0, dose, "true"],
               ["gamma", 0.0, 5.0, gamma, "true"]],
              ["parameterId", "lowerBound", "upperBound", "nominalValue", "estimate"])
    write_v2_yaml(d, model_id="hybrid")
    prob = dp.load(d / "problem.yaml", rtol=1e-11, atol=1e-12)
    assert isinstance(prob, dp.SciMLProblem)
    x = prob.x_nominal
    assert np.max(np.abs(prob.simulate(x) - ys)) < 1e-8
    m = pd.read_csv(d / "measurements.tsv", sep="\t")["measurement"].to_numpy()
    r = (m - ys) / SIGMA_Y
    ref = np.sum(0.5 * np.log(2 * np.pi * SIGMA_Y ** 2) + 0.5 * r ** 2)
    assert prob.nllh(x) == pytest.approx(ref, rel=1e-8)
    _, g = prob.loss_and_grad(x)
    fds = central_difference(prob.nllh, x, step=1e-5, relative=False)
    for i, fd in enumerate(fds):
        assert abs(g[i] - fd) <= 1e-5 * max(abs(fd), 1.0), (prob.x_names[i], g[i], fd)


def test_fit_starts_and_improves(prob):
    starts = prob.starts(3, seed=0)
    assert np.array_equal(starts[0], prob.x_nominal)
    w = slice(2, None)
    assert not np.allclose(starts[1, w], starts[2, w])       # fresh initialisations
    # net1 layer1 (fan-in 2): PyTorch's default initialisation is uniform in +-1/sqrt(2)
    assert np.all(np.abs(starts[1:, 2:8]) <= 1 / math.sqrt(2))
    f0 = prob.objective(prob.x_nominal)[0]
    fit = prob.fit(n_starts=2, seed=0, maxiter=3)
    assert len(fit.runs) == 2
    assert fit.fun <= f0
    assert fit.x_names == prob.x_names
    # the problem pickles (its compiled functions travel as equations), so the starts can
    # go to other processes; through a map here, on unpickled copies
    import pickle

    def unpickled_map(fn, items):
        return [pickle.loads(pickle.dumps(fn))(item) for item in items]

    mapped = prob.fit(n_starts=2, seed=0, maxiter=3, client=unpickled_map)
    for a, b in zip(mapped.runs, fit.runs):
        assert a["index"] == b["index"] and a["nit"] == b["nit"]
        np.testing.assert_allclose(a["x"], b["x"], rtol=1e-6, atol=1e-9)


def test_adjoint_gradient_matches_forward(problem_dir, prob):
    """The gradient method is a choice (default_sensitivity's, or the one given): the
    adjoint's gradient equals forward sensitivities'."""
    import dynlearn as dl
    adj = dp.load(problem_dir / "problem.yaml", rtol=1e-11, atol=1e-12,
                  sensitivity=dl.Adjoint())
    fwd = dp.load(problem_dir / "problem.yaml", rtol=1e-11, atol=1e-12,
                  sensitivity=dl.ForwardSensitivity())
    x = prob.x_nominal
    fa, ga = adj.loss_and_grad(x)
    ff, gf = fwd.loss_and_grad(x)
    assert fa == pytest.approx(ff, rel=1e-8)
    assert np.linalg.norm(ga - gf) <= 1e-6 * np.linalg.norm(gf)
