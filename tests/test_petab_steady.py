"""Steady states (dynlearn.petab.steady): Newton with a simulation fallback and exact
steady-state sensitivities with conservation laws, on a preequilibrated PEtab problem
written here (SBML with libsbml, tables with pandas) against the analytic solution, and on
small models with an unstable root, a spurious null space at the start and no steady
state."""

import math

import numpy as np
import pandas as pd
import pytest
import sympy as sp

libsbml = pytest.importorskip("libsbml")
pytest.importorskip("petab")
pytest.importorskip("sbmlmath")

import dynlearn as dl  # noqa: E402
import dynlearn.petab as dp  # noqa: E402
from dynlearn.core.vectorfield import VectorField  # noqa: E402
from dynlearn.errors import SolveError  # noqa: E402
from dynlearn.petab.steady import conservation_laws, steady_state  # noqa: E402
from dynlearn.testing import central_difference  # noqa: E402

V1, V2, SIGMA = 2.0, 0.5, 0.1
TIMES = [0.0, 0.3, 1.0, 2.5]
# x: log10 k1, log10 k2, log10 k1b, a0, b0
X_NOM = np.array([math.log10(0.8), math.log10(0.3), math.log10(2.0), 1.5, 0.4])


def _species(m, sid, comp, x0):
    s = m.createSpecies()
    s.setId(sid)
    s.setCompartment(comp)
    s.setInitialConcentration(x0)
    s.setHasOnlySubstanceUnits(False)
    s.setBoundaryCondition(False)
    s.setConstant(False)


def _reaction(m, rid, reactant, product, law):
    r = m.createReaction()
    r.setId(rid)
    r.setReversible(False)
    for sid, make in ((reactant, r.createReactant), (product, r.createProduct)):
        ref = make()
        ref.setSpecies(sid)
        ref.setStoichiometry(1)
        ref.setConstant(True)
    r.createKineticLaw().setMath(libsbml.parseL3Formula(law))


def _sbml(path):
    """A (compartment c1, size V1) <-> B (c2, size V2): A -> B at kf [A] V1 and B -> A at
    k2 [B] V2 (amounts per time), so the amounts obey n_A' = -kf n_A + k2 n_B and the total
    amount V1 [A] + V2 [B] is conserved. [A](0) = a0, [B](0) = b0."""
    doc = libsbml.SBMLDocument(3, 2)
    m = doc.createModel()
    m.setId("exchange")
    for cid, size in (("c1", V1), ("c2", V2)):
        c = m.createCompartment()
        c.setId(cid)
        c.setSize(size)
        c.setConstant(True)
    _species(m, "A", "c1", 1.0)
    _species(m, "B", "c2", 1.0)
    for pid, v in (("kf", 1.0), ("k2", 0.3), ("a0", 1.0), ("b0", 0.0)):
        p = m.createParameter()
        p.setId(pid)
        p.setValue(v)
        p.setConstant(True)
    for sid, par in (("A", "a0"), ("B", "b0")):
        ia = m.createInitialAssignment()
        ia.setSymbol(sid)
        ia.setMath(libsbml.parseL3Formula(par))
    _reaction(m, "fwd", "A", "B", "kf * A * c1")
    _reaction(m, "bwd", "B", "A", "k2 * B * c2")
    libsbml.writeSBMLToFile(doc, str(path))


@pytest.fixture(scope="module")
def problem_path(tmp_path_factory):
    """Preequilibrated in 'pre' (kf = k1) from a0, b0; then simulated in 'sim' (kf = k1b)."""
    d = tmp_path_factory.mktemp("steady")
    _sbml(d / "model.xml")
    pd.DataFrame({"conditionId": ["pre", "sim"], "kf": ["k1", "k1b"]}).to_csv(
        d / "conditions.tsv", sep="\t", index=False)
    pd.DataFrame({"observableId": ["obs_a", "obs_b"], "observableFormula": ["A", "B"],
                  "noiseFormula": [SIGMA, SIGMA],
                  "noiseDistribution": ["normal", "normal"]}).to_csv(
        d / "observables.tsv", sep="\t", index=False)
    rng = np.random.default_rng(3)
    rows = [dict(observableId=o, preequilibrationConditionId="pre",
                 simulationConditionId="sim", time=t, measurement=float(rng.uniform(0.2, 1.2)))
            for o in ("obs_a", "obs_b") for t in TIMES]
    pd.DataFrame(rows).to_csv(d / "measurements.tsv", sep="\t", index=False)
    pd.DataFrame({
        "parameterId": ["k1", "k2", "k1b", "a0", "b0"],
        "parameterScale": ["log10", "log10", "log10", "lin", "lin"],
        "lowerBound": [1e-3, 1e-3, 1e-3, 0.01, 0.0],
        "upperBound": [1e3, 1e3, 1e3, 10, 10],
        "nominalValue": [10 ** v for v in X_NOM[:3]] + list(X_NOM[3:]),
        "estimate": [1] * 5,
    }).to_csv(d / "parameters.tsv", sep="\t", index=False)
    (d / "problem.yaml").write_text(
        "format_version: 1\nparameter_file: parameters.tsv\nproblems:\n"
        "- condition_files: [conditions.tsv]\n  measurement_files: [measurements.tsv]\n"
        "  observable_files: [observables.tsv]\n  sbml_files: [model.xml]\n")
    return d / "problem.yaml"


def _analytic(path):
    """The negative log-likelihood and its gradient, from the analytic solution
    differentiated by sympy."""
    meas = pd.read_csv(path.parent / "measurements.tsv", sep="\t")
    x = sp.symbols("x0:5")
    k1, k2, k1b = (10 ** xi for xi in x[:3])
    a0, b0 = x[3], x[4]
    total = V1 * a0 + V2 * b0                      # the conserved amount
    nA_pre = total * k2 / (k1 + k2)                # the preequilibrated amount of A
    nA_inf = total * k2 / (k1b + k2)               # where 'sim' goes
    nllh = 0
    for _, r in meas.iterrows():
        nA = nA_inf + (nA_pre - nA_inf) * sp.exp(-(k1b + k2) * r["time"])
        h = nA / V1 if r["observableId"] == "obs_a" else (total - nA) / V2
        nllh += sp.log(2 * sp.pi * SIGMA ** 2) / 2 + (h - r["measurement"]) ** 2 / (
            2 * SIGMA ** 2)
    f = sp.lambdify([x], nllh)
    g = sp.lambdify([x], [sp.diff(nllh, xi) for xi in x])
    return f, g


def test_conserved_preequilibration_value_and_gradient(problem_path):
    prob = dp.load(problem_path)
    f_ref, g_ref = _analytic(problem_path)
    for x in (X_NOM, X_NOM + np.array([0.3, -0.2, 0.1, 0.7, 0.3])):
        val, g = prob.loss_and_grad(x)
        assert val == pytest.approx(f_ref(x), rel=1e-8)
        assert prob.nllh(x) == pytest.approx(val, rel=1e-10)
        np.testing.assert_allclose(g, g_ref(x), rtol=1e-6, atol=1e-8)
        fd = central_difference(prob.nllh, x, step=1e-5, relative=False)
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-6)
        assert np.all(np.abs(g) > 1e-2)         # every parameter acts: the checks can fail
    # Newton found the steady state and its sensitivities came from [J; C] S = [-F; C S0]
    # (two gradients; 22 evaluations without)
    assert dict(prob.steady_state_paths) == {"newton/conserved": 2, "newton/none": 22}


def test_simulation_path_agrees(problem_path):
    """The former path (simulation, integrated sensitivities) gives the same numbers."""
    new, old = dp.load(problem_path), dp.load(problem_path, preequilibration="simulation")
    fn, gn = new.loss_and_grad(X_NOM)
    fo, go = old.loss_and_grad(X_NOM)
    assert fn == pytest.approx(fo, rel=1e-7)
    np.testing.assert_allclose(gn, go, rtol=1e-5, atol=1e-7)
    assert set(old.steady_state_paths) == {"simulation/integrated"}


def _model(rhs, states, params):
    return dl.HybridModel(states=list(states), rhs=dict(zip(states, rhs)),
                          params=params)


def test_newton_on_an_unstable_root_falls_back_to_simulation():
    """x' = -x (x - 1) (x - a): roots 0 and a stable, 1 unstable. From x0 = 1.1 Newton
    converges to 1; the trajectory goes to a."""
    x, a = sp.symbols("x a")
    model = _model([-x * (x - 1) * (x - a)], [x], {a: 2.0})
    vf = VectorField(model, np.array([2.0]))
    ss = steady_state(vf, [1.1], None, np.eye(1), rtol=1e-10, atol=1e-12, grad=True)
    assert ss.path == "simulation" and "unstable" in ss.reason
    assert ss.y[0] == pytest.approx(2.0, rel=1e-8)
    assert ss.S[0, 0] == pytest.approx(1.0, rel=1e-6)    # dx*/da
    # from 2.3 Newton goes to the stable root a itself
    ss = steady_state(vf, [2.3], None, np.eye(1), rtol=1e-10, atol=1e-12, grad=True)
    assert ss.path == "newton" and ss.sensitivity == "regular"
    assert ss.y[0] == pytest.approx(2.0, rel=1e-10) and ss.S[0, 0] == pytest.approx(1.0)


def test_conservation_laws_are_not_read_from_the_start_alone():
    """A, B made at rate p, bound into X (A + B -> X at k A B), X degraded: A - B is
    conserved. At the start (all zero) J has only X's row, so its left null space also
    holds e_A and e_B; the law found is A - B alone, and the steady state is reached."""
    A, B, X, p, k, e = sp.symbols("A B X p k e")
    model = _model([p - k * A * B, p - k * A * B, k * A * B - e * X], [A, B, X],
                   {p: 0.5, k: 2.0, e: 0.7})
    vf = VectorField(model, np.array([0.5, 2.0, 0.7]))
    y0 = np.zeros(3)
    J0 = vf.jac(0.0, y0)
    assert np.linalg.matrix_rank(J0) == 1
    C, drift, _ = conservation_laws(vf, y0)
    assert drift.shape[0] == 0 and C.shape == (1, 3)
    np.testing.assert_allclose(np.abs(C[0]), [1 / math.sqrt(2), 1 / math.sqrt(2), 0],
                               atol=1e-12)
    assert C[0, 0] * C[0, 1] < 0
    ss = steady_state(vf, y0, None, np.eye(3), rtol=1e-10, atol=1e-12, grad=True)
    a = math.sqrt(0.5 / 2.0)
    # simulated (Newton stalls at the start, where J has rank 1): as exact as the
    # steady-state test, |dy/dt| below 100 rtol |y|
    assert ss.path == "simulation" and "stalled" in ss.reason
    np.testing.assert_allclose(ss.y, [a, a, 0.5 / 0.7], rtol=1e-7)
    assert ss.n_conserved == 1 and ss.sensitivity == "conserved"
    # d/dp of (sqrt(p/k), sqrt(p/k), p/e); D0 = 0: the conserved A - B stays 0
    np.testing.assert_allclose(ss.S[:, 0], [a / (2 * 0.5), a / (2 * 0.5), 1 / 0.7], rtol=1e-7)
    np.testing.assert_allclose(ss.S[:, 2], [0, 0, -0.5 / 0.7 ** 2], atol=1e-9)


def test_no_steady_state_is_a_clear_error():
    x, y, k = sp.symbols("x y k")
    # x + y grows at the constant rate k whatever the state
    model = _model([k - x + y, x - y], [x, y], {k: 0.4})
    vf = VectorField(model, np.array([0.4]))
    with pytest.raises(SolveError, match="no steady state.*constant rate 0.4"):
        steady_state(vf, [1.0, 0.0])
    # exponential growth: Newton's root 0 is unstable and the simulation never settles
    model = _model([k * x, -y], [x, y], {k: 0.4})
    with pytest.raises(SolveError, match="did not reach a steady state"):
        steady_state(VectorField(model, np.array([0.4])), [1.0, 1.0], horizon=1e4)


def test_a_root_that_is_not_isolated_is_simulated():
    """M' = -m M from M = 0, E' = p - d E, X' = k E M: X changes only while M is present,
    so every X is a root (J has a zero eigenvalue that no conservation law explains) and the
    trajectory keeps X at its start. Newton's root is refused; the simulation and the
    integrated sensitivities give X* = X0 and dX*/dp = 0."""
    M, E, X, m, p, d, k = sp.symbols("M E X m p d k")
    model = _model([-m * M, p - d * E, k * E * M], [M, E, X], {m: 0.5, p: 2.0, d: 0.8, k: 1.5})
    vf = VectorField(model, np.array([0.5, 2.0, 0.8, 1.5]))
    ss = steady_state(vf, [0.0, 0.0, 0.7], None, np.eye(4), rtol=1e-10, atol=1e-12,
                      grad=True)
    assert ss.n_conserved == 0 and ss.path == "simulation" and "not isolated" in ss.reason
    np.testing.assert_allclose(ss.y, [0.0, 2.0 / 0.8, 0.7], rtol=1e-7, atol=1e-12)
    assert ss.sensitivity == "integrated"
    np.testing.assert_allclose(ss.S[:, 1], [0.0, 1 / 0.8, 0.0], rtol=1e-6, atol=1e-9)
