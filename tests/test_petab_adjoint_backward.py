"""The PEtab adjoint's quadrature on a stiff network measured at many times
(``dynlearn.petab.adjoint``, issue #15): after every restart of the backward solve (a jump
in ``lambda`` at a measurement time) it takes many short steps inside one forward step;
there ``df/dtheta`` is evaluated on the forward step's nodes only and interpolated. The
gradient stays that of forward sensitivities and of the former way (``df/dtheta`` on every
piece), at far fewer points."""

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("libsbml")
pytest.importorskip("petab")
pytest.importorskip("sbmlmath")

from petab_builders import Sbml, write_v1_problem  # noqa: E402

import dynlearn.petab as dp  # noqa: E402
import dynlearn.petab.adjoint as adjoint_module  # noqa: E402
from dynlearn.core.vectorfield import VectorField  # noqa: E402
from dynlearn.petab.adjoint import AdjointTape  # noqa: E402
from dynlearn.testing import central_difference, lotka_volterra_model  # noqa: E402

# A <-> B fast (time scale ~1e-3), B -> C -> and A -> slow: every jump in lambda excites
# the fast mode, which the backward solve resolves in short steps
RATES = {"ks": 2.0, "k1": 1.5e3, "k2": 8e2, "k3": 1.2, "k4": 0.6, "kd": 0.3}
REACTIONS = [("source", [], ["A"], "ks"), ("fwd", ["A"], ["B"], "k1 * A"),
             ("back", ["B"], ["A"], "k2 * B"), ("conv", ["B"], ["C"], "k3 * B"),
             ("sinkC", ["C"], [], "k4 * C"), ("sinkA", ["A"], [], "kd * A")]
TIMES = np.linspace(0.25, 10.0, 40)


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    d = tmp_path_factory.mktemp("backward")
    model = (Sbml("stiff").species("A", 0.5).species("B", 0.0).species("C", 0.2)
             .parameters(RATES))
    for rid, reac, prod, law in REACTIONS:
        model.reaction(rid, law, reac, prod)
    rows = [dict(observableId=obs, simulationConditionId="c", time=t,
                 measurement=0.4 + 0.1 * np.sin(2 * t + i))
            for obs in ("obs_b", "obs_c") for i, t in enumerate(TIMES)]
    par = [(k, "log10", v / 100, v * 100, v, 1) for k, v in RATES.items()]
    write_v1_problem(
        d, model, {"conditionId": ["c"], "conditionName": ["c"]},
        {"observableId": ["obs_b", "obs_c"], "observableFormula": ["B", "C"],
         "noiseFormula": ["0.05", "0.1"], "noiseDistribution": ["normal"] * 2,
         "observableTransformation": ["lin"] * 2},
        pd.DataFrame(rows),
        pd.DataFrame(par, columns=["parameterId", "parameterScale", "lowerBound",
                                   "upperBound", "nominalValue", "estimate"]))
    return dp.load(d / "problem.yaml", rtol=1e-11, atol=1e-12)


def _adjoint(prob, monkeypatch, forward_nodes=None):
    """The Gauss adjoint gradient and the number of points at which df/dtheta was
    evaluated (``forward_nodes``: FORWARD_NODES, ``None`` the default)."""
    points = []
    plain = VectorField.theta_vjp_points

    def counted(self, T, Y, C, *args, **kwargs):
        points.append(len(T))
        return plain(self, T, Y, C, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(VectorField, "theta_vjp_points", counted)
        m.setattr(adjoint_module, "DEFAULT_QUADRATURE", "gauss")
        if forward_nodes is not None:
            m.setattr(adjoint_module, "FORWARD_NODES", forward_nodes)
        prob.gradient = "adjoint"
        _, g = prob.loss_and_grad(prob.x_nominal)
    return np.asarray(g), sum(points)


def test_interpolated_quadrature_keeps_the_gradient_at_fewer_points(problem, monkeypatch):
    prob = problem
    prob.gradient = "forward"
    _, g_fwd = prob.loss_and_grad(prob.x_nominal)
    g_new, n_new = _adjoint(prob, monkeypatch)
    # FORWARD_NODES out of reach: df/dtheta at the nodes of every piece (the former way)
    g_old, n_old = _adjoint(prob, monkeypatch, forward_nodes=2 ** 62)
    assert np.linalg.norm(g_new - g_fwd) / np.linalg.norm(g_fwd) < 1e-7
    assert np.linalg.norm(g_new - g_old) / np.linalg.norm(g_old) < 1e-10
    assert np.all(np.abs(g_new) > 1e-3 * np.abs(g_new).max())     # every entry can fail
    # the backward solve's short steps after each of the 40 restarts no longer cost
    # df/dtheta evaluations of their own
    assert n_new < 0.5 * n_old, (n_new, n_old)


def test_more_forward_nodes_change_nothing_that_matters(problem, monkeypatch):
    # the interpolant's degree is not what limits the accuracy: twice the nodes move the
    # gradient far less than its distance from forward sensitivities' tolerance
    g6, _ = _adjoint(problem, monkeypatch)
    g12, _ = _adjoint(problem, monkeypatch, forward_nodes=2 * adjoint_module.FORWARD_NODES)
    assert np.linalg.norm(g12 - g6) / np.linalg.norm(g6) < 1e-11


@pytest.mark.parametrize("quadrature", ["gauss", "state"])
def test_no_restart_where_lambda_does_not_jump(monkeypatch, quadrature):
    # cotangents at 3 of 13 output times: 3 backward solves (a restart where lambda is
    # continuous only costs steps, and may stall LSODA's Adams start at tight tolerances),
    # and the gradient of sum_j G_j . y(t_j) still that of central differences
    model = lotka_volterra_model()
    theta = np.asarray(model.theta0, dtype=float)
    times = np.linspace(0.0, 6.0, 13)
    rows = [4, 9, 12]
    G = np.array([[0.3, -1.1], [0.7, 0.4], [-0.5, 0.9]])

    def tape(th):
        return AdjointTape(VectorField(model, th), 0.0, times, np.array([1.2, 0.6]), None,
                           np.eye(theta.size), "LSODA", 1e-11, 1e-11, quadrature=quadrature)

    solves = []
    plain = adjoint_module.solve_ivp

    def counted(fun, t_span, *args, **kwargs):
        solves.append(tuple(t_span))
        return plain(fun, t_span, *args, **kwargs)

    t = tape(theta)
    t.add_cotangent(rows, G)
    monkeypatch.setattr(adjoint_module, "solve_ivp", counted)
    g = t.gradient()
    monkeypatch.undo()
    assert solves == [(6.0, 4.5), (4.5, 2.0), (2.0, 0.0)]
    fd = central_difference(lambda th: float(np.sum(G * tape(th).Y[rows])), theta,
                            step=1e-6, relative=False)
    assert np.linalg.norm(g - fd) / np.linalg.norm(fd) < 1e-6
    assert np.all(np.abs(g) > 1e-2 * np.abs(g).max())
