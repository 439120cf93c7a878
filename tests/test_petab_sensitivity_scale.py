"""Forward sensitivities of a PEtab problem are error-controlled on the estimated
parameters' scales where a parameter is small (dy/dx, x = log10 P, wherever dP/dx < 1:
:func:`dynlearn.petab.problem.direction_scale`), so the cost and accuracy of a gradient do
not depend on the units a small rate constant is written in.

The same reaction chain is written twice: with rate laws ``k_i * x_i`` (k_i from 0.08 to
0.4, so dP/dx = k_i ln 10 < 1) and with ``k_i * A * x_i`` where ``A = 1e9`` is a fixed SBML
parameter and ``k_i`` is 1e9 times smaller. On log10 scales the two problems are one
problem: the likelihood and its gradient with respect to ``log10 k_i`` are equal. Before
the scaling, ``dy/dk_i`` of the second was 1e9 times larger than the first's, held to the
states' absolute tolerance, and the solver took different steps (and far more of them
where roundoff of the large entries met the small ones' atol).
"""

import numpy as np
import pytest

pytest.importorskip("libsbml")
pytest.importorskip("petab")
pytest.importorskip("sbmlmath")

from petab_builders import Sbml, write_v1_problem  # noqa: E402

import dynlearn.petab as dp  # noqa: E402
import dynlearn.sensitivity.forward as forward_module  # noqa: E402
from dynlearn.testing import central_difference  # noqa: E402

RATES = (0.36, 0.2, 0.4, 0.28, 0.32, 0.16, 0.3, 0.24, 0.08)
A = 1e9


def chain_problem(path, n: int, factor: float):
    """A chain x1 -> x2 -> ... -> xn -> (out), rates ``k_i * factor`` with ``k_i`` estimated
    on log10 scale at nominal ``RATES[i] / factor``; x_n and x_1 + x_2 observed."""
    sbml = Sbml("chain").species("x1", 1.0)
    for i in range(2, n + 1):
        sbml.species(f"x{i}", 0.0)
    sbml.parameter("A", factor)
    for i in range(1, n + 1):
        sbml.parameter(f"k{i}", RATES[i - 1] / factor)
        products = [f"x{i + 1}"] if i < n else []
        sbml.reaction(f"r{i}", f"k{i} * A * x{i}", reactants=[f"x{i}"], products=products)
    times = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    rng = np.random.default_rng(3)
    obs = {"observableId": ["tail", "head"],
           "observableFormula": [f"x{n}", "x1 + x2"], "noiseFormula": ["0.02", "0.02"]}
    meas = {"observableId": ["tail"] * 6 + ["head"] * 6,
            "simulationConditionId": ["c"] * 12, "time": [*times, *times],
            "measurement": list(0.2 + 0.05 * rng.standard_normal(12))}
    ks = [f"k{i}" for i in range(1, n + 1)]
    nominal = [RATES[i] / factor for i in range(n)]
    params = {"parameterId": ks, "parameterScale": ["log10"] * n,
              "lowerBound": [v * 1e-3 for v in nominal],
              "upperBound": [v * 1e3 for v in nominal],
              "nominalValue": nominal, "estimate": [1] * n}
    path.mkdir()
    return write_v1_problem(path, sbml, {"conditionId": ["c"]}, obs, meas, params)


@pytest.fixture
def counted(monkeypatch):
    """The right-hand-side evaluations of every sensitivity solve."""
    counts = []
    integrate = forward_module.integrate

    def counting(*args, **kwargs):
        res = integrate(*args, **kwargs)
        counts.append(res.nfev)
        return res

    monkeypatch.setattr(forward_module, "integrate", counting)
    return counts


# n = 3: the small system compiled whole (dy/dtheta with per-column tolerances);
# n = 9: 90 components, above SENSITIVITY_SYSTEM_LIMIT: the directions integrated directly
@pytest.mark.parametrize("n", [3, 9])
def test_gradient_does_not_depend_on_the_units_of_a_rate(tmp_path, counted, n):
    assert (n * (n + 1) > forward_module.SENSITIVITY_SYSTEM_LIMIT) == (n == 9)
    assert max(RATES) * np.log(10.0) < 1.0       # every direction is scaled in both
    evaluations, results = [], []
    for name, factor in (("plain", 1.0), ("scaled", A)):
        problem = dp.load(chain_problem(tmp_path / name, n, factor), rtol=1e-8, atol=1e-10)
        x = np.asarray(problem.x_nominal)
        del counted[:]
        results.append((problem, x, *problem.loss_and_grad(x)))
        evaluations.append(sum(counted))
    (p1, x1, f1, g1), (p2, x2, f2, g2) = results
    np.testing.assert_allclose(x2, x1 - 9.0, atol=1e-12)
    assert f2 == pytest.approx(f1, rel=1e-7)
    # the same problem, the same error control: the same gradient and nearly the same steps
    # (the rate constants' products differ by roundoff only)
    np.testing.assert_allclose(g2, g1, rtol=1e-6, atol=1e-9 * np.abs(g1).max())
    assert evaluations[1] <= 1.1 * evaluations[0] and evaluations[0] <= 1.1 * evaluations[1]
    # and it is the likelihood's gradient (central differences on log10 scale)
    fd = central_difference(p2.nllh, x2, 1e-5)
    np.testing.assert_allclose(g2, fd, rtol=1e-4, atol=1e-6 * np.abs(fd).max())


@pytest.mark.parametrize("kind", ["plain", "pre", "event"])
@pytest.mark.parametrize("gradient", ["forward", "adjoint"])
def test_the_gradient_does_not_depend_on_the_directions_scale(tmp_path, monkeypatch, kind,
                                                             gradient):
    """Whatever the directions' scale, every path (preequilibration and its steady state,
    a time-triggered dose, the adjoint's tape, the Fisher system) maps the scaled
    sensitivities back to dy/dP: scales from 1e-6 to 1 give the unscaled gradient."""
    from test_petab_adjoint import _problem

    import dynlearn.petab.problem as problem_module

    options = {"plain": {}, "pre": dict(preequilibration=True), "event": dict(event=True)}
    prob = _problem(tmp_path, gradient=gradient, **options[kind])
    x = np.asarray(prob.x_nominal)
    monkeypatch.setattr(problem_module, "direction_scale", lambda d: np.ones_like(d))
    f1, g1 = prob.loss_and_grad(x)
    _, ga1, A1, b1 = prob.fisher_system(x)
    scales = 10.0 ** np.random.default_rng(1).uniform(-6, 0, x.size)
    monkeypatch.setattr(problem_module, "direction_scale", lambda d: scales)
    f2, g2 = prob.loss_and_grad(x)
    _, ga2, A2, b2 = prob.fisher_system(x)
    assert f2 == pytest.approx(f1, rel=1e-9)
    np.testing.assert_allclose(g2, g1, rtol=1e-5, atol=1e-7 * np.abs(g1).max())
    np.testing.assert_allclose(A2, A1, rtol=1e-5, atol=1e-7 * np.abs(A1).max())
    np.testing.assert_allclose(b2, b1, rtol=1e-9)
