"""State-triggered SBML events (``dynlearn.petab.events``) on small PEtab problems written
here: x' = -k x reset to x0 whenever x drops below c (firing times known in closed form),
the gradient across the firings against central differences, a state trigger joined with
a time trigger, an event that never fires, and the loop guards."""

import math

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("libsbml")
pytest.importorskip("petab")
pytest.importorskip("sbmlmath")

from petab_builders import Sbml, write_v1_problem  # noqa: E402

import dynlearn.petab as dp  # noqa: E402
from dynlearn.errors import PetabError, SolveError  # noqa: E402
from dynlearn.petab import events as dpe  # noqa: E402
from dynlearn.testing import central_difference  # noqa: E402

PARAMETER_COLUMNS = ["parameterId", "parameterScale", "lowerBound", "upperBound",
                     "nominalValue", "estimate"]

K, X0, C, SIGMA = 0.8, 3.0, 1.0, 0.1
TIMES = [0.25, 0.5, 1.0, 1.5, 2.5, 3.0, 4.0, 5.0]


def _sbml(events, extra=None) -> Sbml:
    """x' = -k x (a reaction), x(0) = x0; ``events``: (id, trigger, {target: value},
    initialValue) each; ``extra``: more parameters."""
    model = (Sbml("reset").species("x", 1.0)
             .parameters({"k": 0.1, "x0": 1.0, "c": 0.5, **(extra or {})})
             .initial_assignment("x", "x0").reaction("decay", "k * x * cell", ["x"]))
    for eid, trigger, assign, initial in events:
        model.event(eid, trigger, assign, initial_value=initial)
    return model


def _problem(d, events, measured, extra_params=(), extra=None, **options):
    """A PEtab problem in ``d``: observable x, noise sigma (fixed), k, x0, c estimated."""
    rows = [("k", "log10", 0.01, 10.0, K, 1), ("x0", "log10", 0.1, 100.0, X0, 1),
            ("c", "lin", 0.01, 2.0, C, 1), ("sigma", "lin", 0.01, 1.0, SIGMA, 0),
            *extra_params]
    write_v1_problem(
        d, _sbml(events, extra), {"conditionId": ["c1"], "conditionName": ["c1"]},
        {"observableId": ["obs_x"], "observableFormula": ["x"], "noiseFormula": ["sigma"],
         "noiseDistribution": ["normal"], "observableTransformation": ["lin"]},
        pd.DataFrame({"observableId": "obs_x", "simulationConditionId": "c1",
                      "measurement": measured, "time": TIMES}),
        pd.DataFrame(rows, columns=PARAMETER_COLUMNS))
    return dp.load(d / "problem.yaml", **{"rtol": 1e-11, "atol": 1e-12, **options})


def _sawtooth(t, k, x0, c, t_on=0.0):
    """x' = -k x from x0, reset to x0 whenever x falls below c after ``t_on`` (x < c
    already at t_on: the reset happens at t_on)."""
    period = math.log(x0 / c) / k
    if t < t_on:
        return x0 * math.exp(-k * t)
    first = max(t_on, period)
    if t < first:
        return x0 * math.exp(-k * t)
    return x0 * math.exp(-k * ((t - first) % period))


def _data(fn):
    return [fn(t) + 0.05 * math.sin(5 * t) for t in TIMES]


def _nllh(h, meas, sigma=SIGMA):
    h, meas = np.asarray(h), np.asarray(meas)
    return float(np.sum(0.5 * np.log(2 * np.pi * sigma ** 2) + 0.5 * ((h - meas) / sigma) ** 2))


def _check_gradient(prob, x, h=1e-5):
    f, g = prob.loss_and_grad(x)
    assert f == pytest.approx(prob.nllh(x), rel=1e-7)
    fd = central_difference(prob.nllh, x, step=h, relative=False)
    err = np.abs(g - fd) / np.maximum(np.abs(fd), 1e-3)
    assert np.all(err < 1e-5), f"relative errors {err} (g {g}, fd {fd})"
    assert np.all(np.abs(g) > 1e-2), g      # every parameter acts: the check can fail
    return g


RESET = ("reset", "x < c", {"x": "x0"}, False)


@pytest.fixture(scope="module")
def sawtooth(tmp_path_factory):
    d = tmp_path_factory.mktemp("petab_state_event")
    return _problem(d, [RESET], _data(lambda t: _sawtooth(t, K, X0, C)))


def test_state_event_matches_the_analytic_sawtooth(sawtooth):
    meas = sawtooth.petab_problem.measurement_df["measurement"].to_numpy()
    # firing times ln(x0/c)/k apart: three resets by t = 5 in the first case
    for k, x0, c in ((K, X0, C), (0.5, 2.0, 0.9), (1.3, 4.0, 0.3)):
        x = np.array([math.log10(k), math.log10(x0), c])
        want = [_sawtooth(t, k, x0, c) for t in TIMES]
        np.testing.assert_allclose(sawtooth.simulate(x), want, rtol=1e-8)
        assert sawtooth.nllh(x) == pytest.approx(_nllh(want, meas), rel=1e-8)
    assert sawtooth.simulate(sawtooth.x_nominal)[-1] < 0.99 * X0   # it did reset


def test_state_event_gradient_matches_finite_differences(sawtooth):
    # the firing times move with k, x0 and c: dt_e/dP enters the jump
    x = np.array([math.log10(0.7), math.log10(2.6), 1.1])
    _check_gradient(sawtooth, x)


def test_event_that_never_fires(tmp_path):
    # c below anything x reaches by t = 5: the plain exponential
    prob = _problem(tmp_path, [RESET], _data(lambda t: X0 * math.exp(-K * t)))
    x = np.array([math.log10(K), math.log10(X0), 0.005])
    want = [X0 * math.exp(-K * t) for t in TIMES]
    np.testing.assert_allclose(prob.simulate(x), want, rtol=1e-8)
    f, g = prob.loss_and_grad(x)
    assert g[2] == 0.0      # c moves nothing when the event never fires


def test_trigger_true_at_the_start_fires_only_with_initial_value_false(tmp_path):
    # x < c with x0 < c: true at t = 0; initialValue false fires there (x = 2 x0) ...
    events = [("up", "x < c", {"x": "2 * x0"}, False)]
    prob = _problem(tmp_path, events, _data(lambda t: X0 * math.exp(-K * t)))
    x = np.array([math.log10(K), math.log10(0.5), 0.8])
    # ... and again each time x falls below c: a sawtooth from 1.0 down to 0.8
    period = math.log(1.0 / 0.8) / K
    np.testing.assert_allclose(prob.simulate(x), [math.exp(-K * (t % period)) for t in TIMES],
                               rtol=1e-8)
    # initialValue true: no firing at the start, x stays below c and never crosses
    prob2 = _problem(tmp_path, [("up", "x < c", {"x": "2 * x0"}, True)],
                     _data(lambda t: X0 * math.exp(-K * t)))
    np.testing.assert_allclose(prob2.simulate(x), [0.5 * math.exp(-K * t) for t in TIMES],
                               rtol=1e-8)


def test_state_trigger_joined_with_time(tmp_path):
    # resets only after t_on: the first at t_on (x < c already), then every period
    events = [("late_reset", "time > t_on && x < c", {"x": "x0"}, False)]
    extra = [("t_on", "lin", 0.0, 5.0, 1.8, 1)]
    prob = _problem(tmp_path, events, _data(lambda t: _sawtooth(t, K, X0, 2.0, 1.8)),
                    extra_params=extra, extra={"t_on": 1.0})
    for k, x0, c, t_on in ((K, X0, 2.0, 1.8), (0.6, 2.5, 1.5, 3.2)):
        x = np.array([math.log10(k), math.log10(x0), c, t_on])
        want = [_sawtooth(t, k, x0, c, t_on) for t in TIMES]
        np.testing.assert_allclose(prob.simulate(x), want, rtol=1e-8)
    # the gradient, t_on included (the time comparison's crossing sets the firing time)
    x = np.array([math.log10(0.7), math.log10(2.6), 1.7, 1.9])
    _check_gradient(prob, x)


def test_events_that_fire_again_at_once_are_a_named_error(tmp_path):
    # x = c while x falls: x < c is false at the firing and true right after, again and
    # again at one time
    prob = _problem(tmp_path, [("clamp", "x < c", {"x": "c"}, False)],
                    _data(lambda t: X0 * math.exp(-K * t)))
    with pytest.raises(SolveError, match=r"fired 101 times at t=1.373.*'clamp' \(101 times"):
        prob.nllh(prob.x_nominal)
    # two events that undo each other at one time: low (x < c -> 3c), high (x > 2c -> c/2)
    events = [("low", "x < c", {"x": "3 * c"}, False),
              ("high", "x > 2 * c", {"x": "c / 2"}, True)]
    prob = _problem(tmp_path, events, _data(lambda t: X0 * math.exp(-K * t)))
    x = np.array([math.log10(K), math.log10(1.5), 1.0])     # x0 < 2c: high stays off
    t_low = math.log(1.5) / K
    with pytest.raises(SolveError, match=rf"fired 10\d times at t={t_low:.4f}.*'low' "
                                         r"\(5\d times\), 'high' \(5\d times\)"):
        prob.nllh(x)


def test_an_event_that_keeps_firing_stops_at_the_cap(tmp_path):
    # reset to just above c: x falls below c again 1e-9 / k later, and again (Zeno)
    prob = _problem(tmp_path, [("clamp", "x < c", {"x": "c * (1 + 1e-9)"}, False)],
                    _data(lambda t: X0 * math.exp(-K * t)))
    with pytest.raises(SolveError, match=f"event 'clamp' fired {dpe.MAX_FIRINGS + 1} times "
                                         "by t=1.37"):
        prob.nllh(prob.x_nominal)


def test_equality_trigger_is_refused_by_name(tmp_path):
    with pytest.raises(PetabError, match="event 'eq'.*== or !="):
        _problem(tmp_path, [("eq", "eq(x, c)", {"x": "x0"}, False)],
                 _data(lambda t: X0 * math.exp(-K * t)))


def test_adjoint_gradient_is_refused_with_state_triggers(tmp_path):
    prob = _problem(tmp_path, [RESET], _data(lambda t: X0 * math.exp(-K * t)),
                    gradient="adjoint")
    with pytest.raises(PetabError, match="adjoint.*state-triggered.*reset"):
        prob.loss_and_grad(prob.x_nominal)


def test_a_problem_with_events_pickles(tmp_path):
    """The standard pickle sends a problem with state- and time-triggered events (its
    compiled functions and trigger logic), and the copy gives the same likelihood and
    gradient."""
    import pickle

    events = [("late_reset", "time > t_on && x < c", {"x": "x0"}, False)]
    extra = [("t_on", "lin", 0.0, 5.0, 1.8, 1)]
    prob = _problem(tmp_path, events, _data(lambda t: _sawtooth(t, K, X0, 2.0, 1.8)),
                    extra_params=extra, extra={"t_on": 1.0})
    x = np.array([math.log10(0.7), math.log10(2.6), 1.7, 1.9])
    f, g = prob.loss_and_grad(x)
    copy = pickle.loads(pickle.dumps(prob))
    f2, g2 = copy.loss_and_grad(x)
    assert f2 == pytest.approx(f, rel=1e-10)
    np.testing.assert_allclose(g2, g, rtol=1e-7)
