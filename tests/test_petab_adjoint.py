"""The adjoint gradient of dl.petab (``dynlearn.petab.adjoint``) on a small stiff reaction
network written here: equal to the forward-sensitivity gradient and to central differences,
without and with preequilibration, with a time-triggered event; state-triggered events
refused; the automatic choice."""

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("libsbml")
pytest.importorskip("petab")
pytest.importorskip("sbmlmath")

from petab_builders import Sbml, write_v1_problem  # noqa: E402

import dynlearn.petab as dp  # noqa: E402
import dynlearn.petab.adjoint as adjoint_module  # noqa: E402
from dynlearn.errors import PetabError  # noqa: E402
from dynlearn.petab.adjoint import (  # noqa: E402
    ADJOINT_COMPONENTS_PER_RESTART,
    QUADRATURES,
    prefer_adjoint,
)
from dynlearn.testing import central_difference  # noqa: E402

TIMES = [0.0, 0.5, 1.0, 2.0, 2.0, 3.5, 5.0, 8.0]
# reactions: source -> A (ks u), A <-> B (k1 fast, k2 fast), B -> C (k3), C -> (k4),
# A -> (kd): A and B equilibrate on a time scale ~1e-3, C on ~1: stiff
RATES = {"ks": 2.0, "k1": 1.5e3, "k2": 8e2, "k3": 1.2, "k4": 0.6, "kd": 0.3}
REACTIONS = [("source", [], ["A"], "ks * u"), ("fwd", ["A"], ["B"], "k1 * A"),
             ("back", ["B"], ["A"], "k2 * B"), ("conv", ["B"], ["C"], "k3 * B"),
             ("sinkC", ["C"], [], "k4 * C"), ("sinkA", ["A"], [], "kd * A")]


def _sbml(event: bool, trigger: str = "time >= 2") -> Sbml:
    model = (Sbml("stiff").species("A", 0.5).species("B", 0.0).species("C", 0.2)
             .parameters({**RATES, "u": 1.0, "dose": 0.7, "A0": 0.5})
             .initial_assignment("A", "A0"))
    for rid, reac, prod, law in REACTIONS:
        model.reaction(rid, law, reac, prod)
    if event:       # a dose of A at t = 2 (time-triggered)
        model.event("dosing", trigger, {"A": "A + dose"})
    return model


def _problem(d, preequilibration: bool = False, event: bool = False, trigger="time >= 2",
             **opts):
    rows = []
    for obs in ("obs_b", "obs_c"):
        for i, t in enumerate(TIMES):
            rows.append(dict(observableId=obs, simulationConditionId="high",
                             preequilibrationConditionId="low" if preequilibration else "",
                             measurement=0.3 + 0.1 * np.sin(3 * t + i), time=t))
    par = [(k, "log10", v / 100, v * 100, v, 1) for k, v in RATES.items()]
    par += [("scale", "lin", 0.1, 10.0, 1.3, 1), ("A0", "log10", 0.01, 10.0, 0.5, 1),
            ("dose", "lin", 0.0, 5.0, 0.7, 1 if event else 0)]
    write_v1_problem(
        d, _sbml(event, trigger),
        {"conditionId": ["low", "high"], "conditionName": ["low", "high"], "u": [1.0, 3.0]},
        {"observableId": ["obs_b", "obs_c"], "observableFormula": ["scale * B", "C"],
         "noiseFormula": ["0.05", "0.1"], "noiseDistribution": ["normal"] * 2,
         "observableTransformation": ["lin"] * 2},
        pd.DataFrame(rows),
        pd.DataFrame(par, columns=["parameterId", "parameterScale", "lowerBound",
                                   "upperBound", "nominalValue", "estimate"]))
    return dp.load(d / "problem.yaml", rtol=1e-11, atol=1e-12, **opts)


_REFERENCE: dict = {}


def _compare(prob, mode, inert=()):
    """The gradient by ``mode`` against the old forward sensitivities and central
    differences at the nominal x (``inert``: estimated parameters that do not act on the
    likelihood)."""
    x = prob.x_nominal
    if id(prob) not in _REFERENCE:      # the old gradient and central differences, once
        prob.gradient = "forward"
        fd = central_difference(prob.nllh, x, step=1e-5, relative=False)
        _REFERENCE[id(prob)] = (*prob.loss_and_grad(x), fd)
    f_fwd, g_fwd, fd = _REFERENCE[id(prob)]
    prob.gradient = mode
    assert prob._use_adjoint() == (mode == "adjoint")
    f_adj, g_adj = prob.loss_and_grad(x)
    # the same states; the forward-sensitivity solve takes other steps (sensitivities in
    # its error control)
    assert f_adj == pytest.approx(f_fwd, rel=1e-9)
    rel = np.linalg.norm(g_adj - g_fwd) / np.linalg.norm(g_fwd)
    assert rel < 1e-6, f"{mode} vs forward: relative error {rel:.2e}\n{g_adj}\n{g_fwd}"
    err = np.abs(g_adj - fd) / np.maximum(np.abs(fd), 1e-2 * np.max(np.abs(fd)))
    assert np.all(err < 1e-4), f"{mode} vs central FD: relative errors {err}"
    # every other estimated parameter acts on the likelihood: the comparison can fail
    acts = [k not in inert for k in prob.x_names]
    assert np.all(np.abs(g_adj[acts]) > 1e-3 * np.max(np.abs(g_adj))), g_adj
    return g_adj


MODES = ["adjoint"]


@pytest.fixture(params=QUADRATURES)
def quadrature(request, monkeypatch):
    """Both ways of integrating the adjoint's quadratures: Gauss-Legendre on the backward
    steps (the default) and in the solver's state (the former way)."""
    monkeypatch.setattr(adjoint_module, "DEFAULT_QUADRATURE", request.param)
    return request.param


@pytest.fixture(scope="module")
def problems(tmp_path_factory):
    """The three problems, each loaded (and compiled) once."""
    out = {}
    for key, kw in (("plain", {}), ("pre", dict(preequilibration=True)),
                    ("event", dict(event=True))):
        out[key] = _problem(tmp_path_factory.mktemp(key), **kw)
    return out


@pytest.mark.parametrize("mode", MODES)
def test_new_gradients_equal_forward_and_fd(problems, mode, quadrature):
    _compare(problems["plain"], mode)


@pytest.mark.parametrize("mode", MODES)
def test_new_gradients_with_preequilibration(problems, mode, quadrature):
    prob = problems["pre"]
    g = _compare(prob, mode, inert=("A0",))
    # the preequilibrated start forgets A0: its derivative goes through the steady state
    assert g[list(prob.x_names).index("A0")] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_new_gradients_across_a_time_event(problems, mode, quadrature):
    prob = problems["event"]
    g = _compare(prob, mode)
    assert abs(g[list(prob.x_names).index("dose")]) > 1e-3


def test_choice_by_size(tmp_path):
    c = ADJOINT_COMPONENTS_PER_RESTART
    assert prefer_adjoint(10, int(np.ceil(c * 20 / 10)), 20)
    assert not prefer_adjoint(10, int(np.ceil(c * 20 / 10)) - 1, 20)
    assert prefer_adjoint(100, 20, 30) and not prefer_adjoint(20, 20, 300)
    prob = _problem(tmp_path, gradient="auto")
    assert not prob._use_adjoint()    # 3 states x 7 directions for 7 times: forward
    assert prob.gradient == "auto"
    prob.gradient = "adjoint"
    assert prob._use_adjoint()
    with pytest.raises(PetabError, match="sideways"):
        _problem(tmp_path, gradient="sideways")


def test_state_events_fall_back_to_forward(tmp_path):
    # a state-triggered event is not in the adjoint: gradient="adjoint" refuses it by name,
    # "auto" takes forward sensitivities
    prob = _problem(tmp_path, event=True, trigger="C > 0.45", gradient="adjoint")
    with pytest.raises(PetabError, match="dosing"):
        prob.loss_and_grad(prob.x_nominal)
    prob.gradient = "auto"
    assert not prob._use_adjoint()
    f, g = prob.loss_and_grad(prob.x_nominal)
    prob.gradient = "forward"
    f2, g2 = prob.loss_and_grad(prob.x_nominal)
    assert f == f2 and np.array_equal(g, g2)


def test_a_likelihood_without_finite_derivative_gives_a_nan_gradient(tmp_path):
    """obs_b = scale * B - 10, log-transformed: negative at every time, so the likelihood
    and its derivatives are not finite. Both gradients are NaN (a fit's optimizers reject
    the point); the adjoint used to raise scipy's ValueError from a backward solve started
    at a non-finite state."""
    prob = _problem(tmp_path)
    obs = prob.petab_problem.observable_df
    obs["observableTransformation"] = ["log", "lin"]
    obs["observableFormula"] = ["scale * B - 10", "C"]
    obs.reset_index().to_csv(tmp_path / "observables.tsv", sep="\t", index=False)
    for mode in ("forward", "adjoint"):
        p = dp.load(tmp_path / "problem.yaml", rtol=1e-9, atol=1e-12, gradient=mode)
        assert p._use_adjoint() == (mode == "adjoint")
        with np.errstate(all="ignore"):
            f, g = p.loss_and_grad(p.x_nominal)
        assert not np.isfinite(f)
        assert np.isnan(g).any(), (mode, g)
