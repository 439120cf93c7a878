"""``dynlearn fit problem.yaml``, objective priors and time-triggered SBML events, on small
PEtab problems written here (SBML with libsbml, tables with pandas) and checked against
hand-computed values."""

import math

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("libsbml")
pytest.importorskip("petab")
pytest.importorskip("sbmlmath")

from petab_builders import Sbml, write_tsv, write_v1_yaml  # noqa: E402

import dynlearn.petab as dp  # noqa: E402
from dynlearn.cli import main  # noqa: E402
from dynlearn.errors import PetabError  # noqa: E402
from dynlearn.testing import central_difference  # noqa: E402

K, X0, SIGMA = 0.6, 4.0, 0.05
TIMES = [0.25, 0.5, 1.0, 1.5, 2.5, 3.0, 4.0, 5.0]


def _sbml(path, event=None, law="k * x * cell"):
    """x' = -k x (the rate ``law``), x(0) = x0 (an initial assignment). ``event``: (trigger,
    assignment of x (or ``"target = value"``), extra parameters) of one event 'dose'."""
    model = (Sbml("decay").species("x", 1.0)
             .parameters({"k": 0.1, "x0": 1.0, **(event[2] if event else {})})
             .initial_assignment("x", "x0").reaction("decay", law, reactants=["x"]))
    if event:
        target, _, value = event[1].rpartition("=")
        model.event("dose", event[0], {target.strip() or "x": value})
    return model.write(path)


def _write(d, measured, params, event=None, **kw):
    """A PEtab problem in ``d``: one condition, observable x with noise sigma."""
    _sbml(d / "model.xml", event, **kw)
    write_tsv(d / "conditions.tsv", {"conditionId": ["c"], "conditionName": ["c"]})
    write_tsv(d / "observables.tsv",
              {"observableId": ["obs_x"], "observableFormula": ["x"],
               "noiseFormula": ["sigma"], "noiseDistribution": ["normal"],
               "observableTransformation": ["lin"]})
    write_tsv(d / "measurements.tsv", {"observableId": "obs_x", "simulationConditionId": "c",
                                       "measurement": measured, "time": TIMES})
    write_tsv(d / "parameters.tsv", params)
    return write_v1_yaml(d)


def _params(**extra):
    table = {"parameterId": ["k", "x0", "sigma"], "parameterScale": ["log10"] * 3,
             "lowerBound": [1e-2, 0.1, 1e-3], "upperBound": [10.0, 100.0, 10.0],
             "nominalValue": [0.3, 2.0, 0.2], "estimate": [1, 1, 1]}
    table.update(extra)
    return table


def _data():
    rng = np.random.default_rng(3)
    t = np.array(TIMES)
    return X0 * np.exp(-K * t) + SIGMA * rng.standard_normal(t.size)


@pytest.fixture(scope="module")
def fit_problem(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("petab_fit"), _data(), _params())


def test_cli_fits_a_petab_problem_and_writes_its_tables(fit_problem, capsys):
    out = fit_problem.parent / "out"
    code = main(["fit", str(fit_problem), "--out", str(out), "--n-starts", "2",
                 "--seed", "1"])
    text = capsys.readouterr().out
    assert code == 0
    assert "best negative log-likelihood" in text and "within 0.1 of the best: 2 of 2" in text
    par = pd.read_csv(out / "parameters.csv")
    assert list(par["parameterId"]) == ["k", "x0", "sigma"]
    np.testing.assert_allclose(par["value"], 10.0 ** par["estimate"], rtol=1e-9)
    # the known parameters, recovered within three standard errors (on the log10 scale)
    est = par.set_index("parameterId")
    for name, true in (("k", K), ("x0", X0)):
        se = est.loc[name, "std_error"]
        assert 0 < se < 0.05
        assert abs(est.loc[name, "estimate"] - math.log10(true)) < 3 * se
    assert est["at_bound"].isna().all()
    # the best point is the minimum of the likelihood: sigma is its closed form
    prob = dp.load(fit_problem)
    x = est["estimate"].to_numpy()
    sim = pd.read_csv(out / "simulations.csv")
    assert list(sim["time"]) == TIMES
    np.testing.assert_allclose(sim["simulation"], prob.simulate(x), rtol=1e-8)
    rss = float(np.sum((sim["simulation"] - sim["measurement"]) ** 2))
    assert est.loc["sigma", "value"] == pytest.approx(math.sqrt(rss / len(TIMES)), rel=1e-3)
    starts = pd.read_csv(out / "starts.csv")
    assert list(starts["start"]) == [1, 2]
    assert set(starts["status"]) <= {"converged", "not converged"}
    assert starts["nllh"].min() == pytest.approx(prob.nllh(x), abs=1e-6)
    assert (out / "summary.txt").read_text().strip() in text
    # a second run into the same folder replaces dynlearn's own files; out of time, it
    # did not converge: exit status 3, its files written all the same
    assert main(["fit", str(fit_problem), "--out", str(out), "--max-time", "1e-9"]) == 3
    starts = pd.read_csv(out / "starts.csv")
    assert list(starts["status"]) == ["max_time"] + ["not run"] * 9
    assert "best start: did not converge (max_time" in capsys.readouterr().out


@pytest.mark.parametrize("optimizer", ["lbfgsb", "fisher"])
def test_cli_optimizer_option_chooses_the_petab_optimizer(fit_problem, capsys, optimizer):
    out = fit_problem.parent / f"out-{optimizer}"
    code = main(["fit", str(fit_problem), "--out", str(out), "--n-starts", "2",
                 "--optimizer", optimizer])
    captured = capsys.readouterr()
    assert code == 0
    assert f"optimizer {optimizer}" in captured.err
    assert f"(optimizer {optimizer})" in captured.out
    starts = pd.read_csv(out / "starts.csv")
    assert list(starts["optimizer"]) == [optimizer, optimizer]
    # both find the same minimum (the problem's: noise-free up to SIGMA)
    assert starts["nllh"].min() == pytest.approx(dp.load(fit_problem).nllh(
        pd.read_csv(out / "parameters.csv")["estimate"].to_numpy()), abs=1e-6)


def test_cli_optimizer_option_is_checked(fit_problem, capsys, tmp_path):
    code = main(["fit", str(fit_problem), "--out", str(tmp_path / "o"), "--optimizer",
                 "newton"])
    err = capsys.readouterr().err
    assert code == 2
    assert "invalid choice: 'newton' (choose from 'auto', 'fisher', 'lbfgsb')" in err
    assert not (tmp_path / "o").exists()
    # a model file names its optimizer in [fit]
    (tmp_path / "m.toml").write_text("")
    code = main(["fit", str(tmp_path / "m.toml"), "--optimizer", "fisher"])
    assert code == 2
    assert "--optimizer: for a PEtab problem (problem.yaml) only" in capsys.readouterr().err


def test_cli_help_lists_the_optimizers(capsys):
    assert main(["fit", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--optimizer {auto,fisher,lbfgsb}" in text and "L-BFGS-B" in text


@pytest.mark.parametrize("extra, named", [
    (["data.csv"], "DATA.csv"),
    (["--transform", "log"], "--transform"),
    (["--transform", "A=log10"], "--transform"),
    (["--loss", "gaussian"], "--loss"),
])
def test_cli_refuses_what_a_petab_problem_has_in_its_tables(fit_problem, capsys, extra, named):
    out = fit_problem.parent / "o"
    code = main(["fit", str(fit_problem), *extra, "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "not for a PEtab problem" in err and named in err
    assert not out.exists()           # refused before any output


def test_max_time_stops_the_fit_and_says_so(fit_problem):
    prob = dp.load(fit_problem)
    fit = prob.fit(n_starts=3, seed=0, max_time=0.0)
    assert [r["status"] for r in sorted(fit.runs, key=lambda r: r["index"])][1:] == \
        ["not run", "not run"]
    assert fit.runs[0]["status"] == "max_time" and not fit.success


# --- priors ---------------------------------------------------------------------------------
def _log_density(kind, p, x, a, b):
    """log density of every PEtab prior, written out from the definitions (scipy.stats
    where it has the law): ``p`` the linear value, ``x`` the value on its scale."""
    from scipy import stats

    return {"uniform": stats.uniform(a, b - a).logpdf(p),
            "normal": stats.norm(a, b).logpdf(p),
            "laplace": stats.laplace(a, b).logpdf(p),
            "logNormal": stats.lognorm(s=b, scale=math.exp(a)).logpdf(p),
            "logLaplace": -math.log(2 * b * p) - abs(math.log(p) - a) / b,
            "parameterScaleUniform": stats.uniform(a, b - a).logpdf(x),
            "parameterScaleNormal": stats.norm(a, b).logpdf(x),
            "parameterScaleLaplace": stats.laplace(a, b).logpdf(x)}[kind]


@pytest.mark.parametrize("scale", ["lin", "log", "log10"])
def test_every_prior_is_its_log_density_with_the_right_gradient(scale):
    from dynlearn.petab.priors import PRIOR_TYPES, parameter_priors

    args = {"uniform": (0.5, 4.0), "normal": (1.5, 0.7), "laplace": (2.5, 0.4),
            "logNormal": (0.3, 0.8), "logLaplace": (0.2, 0.6),
            "parameterScaleUniform": (-1.0, 3.0), "parameterScaleNormal": (0.1, 0.9),
            "parameterScaleLaplace": (-0.2, 0.3)}
    names = [f"p{i}" for i in range(len(PRIOR_TYPES))]
    table = pd.DataFrame({"objectivePriorType": list(PRIOR_TYPES),
                          "objectivePriorParameters": [f"{a};{b}" for a, b in
                                                       (args[k] for k in PRIOR_TYPES)]},
                         index=names)
    pri = parameter_priors(table, names, [scale] * len(names))
    assert pri.kinds == list(PRIOR_TYPES)
    P = np.array([1.3, 1.1, 2.2, 1.7, 0.9, 1.4, 0.6, 0.8])
    to = {"lin": lambda p: p, "log": np.log, "log10": np.log10}[scale]
    x = to(P)
    want = -sum(_log_density(k, p, xi, *args[k]) for k, p, xi in zip(PRIOR_TYPES, P, x))
    f, g = pri.value_and_grad(x)
    assert f == pytest.approx(want, rel=1e-12)
    fd = central_difference(lambda v: pri.value_and_grad(v)[0], x, step=1e-6, relative=False)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)
    assert np.count_nonzero(g) == x.size - 2     # the two uniform priors are flat
    # outside a uniform prior's support the density is 0
    assert pri.value_and_grad(to(np.r_[5.0, P[1:]]))[0] == math.inf


def test_unknown_prior_type_is_an_error():
    from dynlearn.petab.priors import parameter_priors

    table = pd.DataFrame({"objectivePriorType": ["gamma"],
                          "objectivePriorParameters": ["1;2"]}, index=["k"])
    with pytest.raises(PetabError, match="unknown objectivePriorType 'gamma'"):
        parameter_priors(table, ["k"], ["lin"])


def test_priors_enter_the_objective_and_the_fit_not_the_likelihood(tmp_path):
    path = _write(tmp_path, _data(), _params(
        objectivePriorType=["normal", "logNormal", ""],
        objectivePriorParameters=["0.5;0.2", "1.0;0.5", ""]))
    prob = dp.load(path)
    assert prob.priors.names == ["k", "x0"]
    x = np.array([math.log10(0.7), math.log10(3.0), math.log10(0.08)])
    nllh, g = prob.loss_and_grad(x)
    f, gf = prob.objective(x)
    by_hand = -(_log_density("normal", 0.7, 0.0, 0.5, 0.2)
                + _log_density("logNormal", 3.0, 0.0, 1.0, 0.5))
    assert f - nllh == pytest.approx(by_hand, rel=1e-10)
    assert prob.objective(x, prior=False)[0] == nllh
    fd = central_difference(lambda v: prob.objective(v)[0], x, step=1e-5, relative=False)
    np.testing.assert_allclose(gf, fd, rtol=1e-5, atol=1e-6)
    assert np.abs(gf - g)[:2].min() > 1e-2 and gf[2] == g[2]
    fit = prob.fit(n_starts=1, x0=x, maxiter=3)
    assert fit.posterior
    assert fit.fun == pytest.approx(prob.objective(fit.x)[0], rel=1e-9)
    # (nllh solves without sensitivities: another step sequence, agreeing to ~1e-7)
    assert fit.runs[0]["nllh"] == pytest.approx(prob.nllh(fit.x), abs=1e-6)


# --- events ---------------------------------------------------------------------------------
def _dosed(t, k, x0, dose, td):
    """x' = -k x from x0, plus ``dose`` at t = td."""
    return x0 * math.exp(-k * t) + (dose * math.exp(-k * (t - td)) if t >= td else 0.0)


@pytest.fixture(scope="module")
def dosing(tmp_path_factory):
    """x += dose at t = tdose (a time-triggered SBML event), dose and tdose estimated."""
    d = tmp_path_factory.mktemp("petab_event")
    meas = [_dosed(t, K, X0, 2.0, 2.0) + 0.1 * math.sin(7 * t) for t in TIMES]
    params = _params()
    for key, vals in (("parameterId", ["dose", "tdose"]), ("parameterScale", ["lin", "lin"]),
                      ("lowerBound", [0.0, 0.5]), ("upperBound", [10.0, 4.5]),
                      ("nominalValue", [2.0, 2.0]), ("estimate", [1, 1])):
        params[key] = params[key] + vals
    return dp.load(_write(d, meas, params, event=("time >= tdose", "x + dose",
                                                   {"dose": 0.0, "tdose": 10.0})))


def test_time_event_matches_the_analytic_dosing_solution(dosing):
    meas = dosing.petab_problem.measurement_df["measurement"].to_numpy()
    # tdose = 3 is a measurement time: that measurement sees the state after the dose
    for k, x0, sigma, dose, td in ((K, X0, 0.1, 2.0, 2.0), (0.3, 2.5, 0.2, 1.2, 3.0),
                                   (0.9, 1.5, 0.3, 0.7, 0.2)):
        x = np.array([math.log10(k), math.log10(x0), math.log10(sigma), dose, td])
        h = np.array([_dosed(t, k, x0, dose, td) for t in TIMES])
        want = np.sum(0.5 * np.log(2 * np.pi * sigma ** 2) + 0.5 * ((h - meas) / sigma) ** 2)
        np.testing.assert_allclose(dosing.simulate(x), h, rtol=1e-7)
        assert dosing.nllh(x) == pytest.approx(want, rel=1e-7)


def test_time_event_gradient_matches_finite_differences(dosing):
    # including the dose and the event time (between the measurements at 1.5 and 2.5)
    x = np.array([math.log10(0.5), math.log10(3.0), math.log10(0.15), 1.6, 1.9])
    f, g = dosing.loss_and_grad(x)
    assert f == pytest.approx(dosing.nllh(x), rel=1e-7)
    fd = central_difference(dosing.nllh, x, step=1e-5, relative=False)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-5)
    assert np.all(np.abs(g) > 1e-2)        # every parameter acts: the check can fail


def test_equality_triggered_event_is_refused_by_name(tmp_path):
    # (state triggers are supported: tests/test_petab_events.py)
    path = _write(tmp_path, _data(), _params(), event=("x == 0.5", "x + 1", {}))
    with pytest.raises(PetabError, match="event 'dose'.*== or !="):
        dp.load(path)


def test_event_assigning_a_parameter_switches_the_rate(tmp_path):
    # at t = tdose the decay rate becomes k + boost, boost = dose (estimated): the
    # parameter boost becomes a state of rate 0 that the event sets
    params = _params()
    for key, vals in (("parameterId", ["dose"]), ("parameterScale", ["lin"]),
                      ("lowerBound", [0.0]), ("upperBound", [5.0]), ("nominalValue", [1.0]),
                      ("estimate", [1])):
        params[key] = params[key] + vals
    path = _write(tmp_path, _data(), params, event=("time >= 1.75", "boost = dose",
                                                    {"boost": 0.0, "dose": 0.0}),
                  law="(k + boost) * x * cell")
    prob = dp.load(path)
    assert "boost" in prob.sbml.states
    k, x0, dose, td = 0.4, 3.0, 0.8, 1.75
    want = [x0 * math.exp(-k * t) if t < td else
            x0 * math.exp(-k * td - (k + dose) * (t - td)) for t in TIMES]
    x = np.array([math.log10(k), math.log10(x0), math.log10(0.1), dose])
    np.testing.assert_allclose(prob.simulate(x), want, rtol=1e-7)
    f, g = prob.loss_and_grad(x)
    fd = central_difference(prob.nllh, x, step=1e-5, relative=False)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-5)
    assert abs(g[3]) > 1e-2
    # a parameter of the parameter table that an event changes: refused by name
    params["parameterId"][-1] = "boost"
    path = _write(tmp_path, _data(), params, event=("time >= 1.75", "boost = 2",
                                                    {"boost": 0.0}),
                  law="(k + boost) * x * cell")
    with pytest.raises(PetabError, match="boost.*changed by SBML events"):
        dp.load(path)
