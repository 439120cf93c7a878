"""The L2 strength chosen from the data against no penalty: ``l2=0``,
``l2="discrepancy"`` (the discrepancy principle), ``l2="gcv"`` (generalised
cross-validation over the network's effective degrees of freedom) and ``l2="auto"`` (the
default: GCV, raised to the discrepancy principle's strength where GCV's fit is still below
the noise level), side by side.

Systems (defaults otherwise, rtol = atol = 1e-6, initial states known unless said):

* ``decay``: ``x' = -k x + nn(t)``, a 1-12-1 tanh network of time beside an exponential
  decay, 16 points on [0, 3], known noise level (``sigma=``), ``y0="estimate"``;
* ``lv``: the LV-UDE of ``benchmarks/bench_fit.py`` (t = 0:0.25:5, 5 % noise, 2-5-5-5-2 rbf
  network), noise level estimated from the data;
* ``lv-known``: the same with the true noise levels given (``sigma=``);
* ``osc``: a damped oscillator ``x'' = -k x + nn(v)`` with a learned friction term (truth
  ``-0.3 v - 0.2 v^3``), a 1-16-16-1 tanh network, t = 0:0.2:10, noise level estimated from
  the data;
* ``pendulum``: ``theta'' = -g sin(theta) + nn(omega)`` (truth g = 4, friction ``-0.3
  omega``), g free from 3, dl.MLP's default network (seed 0), 41 points on [0, 8], 3 %
  noise (of each state's standard deviation), ``y0="estimate"``;
* ``sir``: an epidemic with a learned incidence, ``S' = -nn(S, I)``, ``I' = nn(S, I) -
  gamma I`` (truth ``1.5 S I``, gamma = 0.5 free from 0.4), dl.MLP's default network (seed
  0), 41 points on [0, 20], 5 % noise, ``y0="estimate"`` (chosen by nobody for this
  benchmark).

Printed per case and rule: ``chi^2 / (n - k)`` as the diagnostics compute it, the RMSE
against the noise-free truth inside the data window ("fit", in units of the noise for
``decay``, of the signal's standard deviation otherwise) and beyond it ("extrap": lv (5, 8],
osc (10, 15], pendulum (8, 12], sir (20, 30]), the chosen ``l2``, the evaluations (solves
+ Jacobians) and, with ``--recover``, whether ``dl.recover`` (its defaults, a polynomial
library) finds exactly the true terms with every coefficient within 10 %.

Usage::

    python benchmarks/bench_regularisation.py [--systems decay,lv,lv-known,osc,pendulum,sir]
        [--seeds 0,1,2] [--rules 0,discrepancy,gcv,auto] [--noise 0.05] [--recover]
        [--markdown]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import sympy as sp  # noqa: E402
from _table import print_table  # noqa: E402

import dynlearn as dl  # noqa: E402

x, y, v, t_ = sp.symbols("x y v t")
a, b, g, d, k, c = sp.symbols("alpha beta gamma delta k c")
th, om, S, I_ = sp.symbols("theta omega S I")
grav = sp.Symbol("g")


def _truth(model, t, Y0, names):
    """The noise-free states at ``t``, from ``Y0`` at time 0."""
    ref = dl.simulate(model, t, Y0, rtol=1e-10, atol=1e-10, t0=0.0).y
    return {o: ref[:, i] for i, o in enumerate(names)}


def decay(noise, seed):
    t = np.linspace(0, 3, 16)
    sigma = noise * 2.0 * 0.5                     # 5 % of the signal's mid value -> 0.05
    e = np.random.default_rng(seed + 12).standard_normal(t.size)
    data = dl.Dataset.from_frame(pd.DataFrame({"t": t, "x": 2 * np.exp(-0.6 * t) + sigma * e}))
    nn = dl.MLP("nn", inputs=[t_], outputs=1, hidden=[12], activation="tanh", seed=0)
    model = dl.HybridModel(states=[x], rhs={x: -k * x + nn[0]},
                           params={k: dl.Parameter(0.5, min=0, transform="log")})
    tt = np.linspace(0, 3, 61)
    return dict(model=model, data=data, kw=dict(y0="estimate", sigma=sigma), tt=tt,
                truth={"x": 2 * np.exp(-0.6 * tt)}, unit={"x": sigma}, te=None, extrap=None,
                terms=None)


def _simulated(truth_model, t, Y0, noise, seed, scale):
    sol = dl.simulate(truth_model, t, Y0, rtol=1e-10, atol=1e-10)
    rng = np.random.default_rng(seed)
    Y = sol.y + noise * scale(sol.y) * rng.standard_normal(sol.y.shape)
    return Y


def lv(noise, seed, known=False):
    Y0 = [0.44249296, 4.6280594]
    truth = dl.HybridModel(states=[x, y], params={a: 1.3, b: 0.9, g: 0.8, d: 1.8},
                           rhs={x: a * x - b * x * y, y: g * x * y - d * y})
    t = np.arange(0, 5 + 1e-9, 0.25)
    Y = _simulated(truth, t, Y0, noise, seed, lambda s: s.mean(axis=0))
    data = dl.Dataset.from_frame(pd.DataFrame({"t": t, "x": Y[:, 0], "y": Y[:, 1]}))
    nn = dl.MLP("nn", inputs=[x, y], outputs=2, hidden=[5, 5, 5], activation="rbf", seed=0)
    model = dl.HybridModel(states=[x, y], params={a: 1.3, d: 1.8},
                           rhs={x: a * x + nn[0], y: -d * y + nn[1]}, name="LV-UDE")
    tt, te = np.linspace(0, 5, 101), np.linspace(5, 8, 61)[1:]
    ref = _truth(truth, tt, Y0, "xy")
    kw = dict(y0=Y0)
    if known:       # the true noise levels (5 % of each state's mean at the sampling times)
        mean = dl.simulate(truth, t, Y0, rtol=1e-10, atol=1e-10).y.mean(axis=0)
        kw["sigma"] = {"x": noise * mean[0], "y": noise * mean[1]}
    return dict(model=model, data=data, kw=kw, tt=tt, truth=ref,
                unit={o: ref[o].std() for o in ref}, te=te, extrap=_truth(truth, te, Y0, "xy"),
                terms={"nn[0]": {"x*y": -0.9}, "nn[1]": {"x*y": 0.8}})


def osc(noise, seed):
    Y0 = [2.0, 0.0]
    truth = dl.HybridModel(states=[x, v], params={k: 1.5, c: 0.3},
                           rhs={x: v, v: -k * x - c * v - 0.2 * v ** 3})
    t = np.arange(0, 10 + 1e-9, 0.2)
    Y = _simulated(truth, t, Y0, noise, seed, lambda s: s.std(axis=0))
    data = dl.Dataset.from_frame(pd.DataFrame({"t": t, "x": Y[:, 0], "v": Y[:, 1]}))
    nn = dl.MLP("fr", inputs=[v], outputs=1, hidden=[16, 16], activation="tanh", seed=0)
    model = dl.HybridModel(states=[x, v], params={k: 1.0}, rhs={x: v, v: -k * x + nn[0]},
                           name="oscillator-UDE")
    tt, te = np.linspace(0, 10, 101), np.linspace(10, 15, 51)[1:]
    ref = _truth(truth, tt, Y0, "xv")
    return dict(model=model, data=data, kw=dict(y0=Y0), tt=tt, truth=ref,
                unit={o: ref[o].std() for o in ref}, te=te, extrap=_truth(truth, te, Y0, "xv"),
                terms={"fr[0]": {"v": -0.3, "v**3": -0.2}}, library=3)


def pendulum(noise, seed):
    Y0 = [1.0, 0.0]
    truth = dl.HybridModel(states=[th, om], params={grav: 4.0, c: 0.3},
                           rhs={th: om, om: -grav * sp.sin(th) - c * om})
    t = np.linspace(0, 8, 41)
    Y = _simulated(truth, t, Y0, 0.6 * noise, seed, lambda s: s.std(axis=0))   # 3 % at 5 %
    data = dl.Dataset.from_frame(pd.DataFrame({"t": t, "theta": Y[:, 0], "omega": Y[:, 1]}))
    nn = dl.MLP("fr", inputs=[om], outputs=1, seed=0)
    model = dl.HybridModel(states=[th, om], params={grav: 3.0},
                           rhs={th: om, om: -grav * sp.sin(th) + nn[0]}, name="pendulum-UDE")
    names = ["theta", "omega"]
    tt, te = np.linspace(0, 8, 81), np.linspace(8, 12, 41)[1:]
    ref = _truth(truth, tt, Y0, names)
    return dict(model=model, data=data, kw=dict(y0="estimate"), tt=tt, truth=ref,
                unit={o: ref[o].std() for o in ref}, te=te,
                extrap=_truth(truth, te, Y0, names), terms={"fr[0]": {"omega": -0.3}})


def sir(noise, seed):
    Y0 = [0.99, 0.01]
    truth = dl.HybridModel(states=[S, I_], params={b: 1.5, g: 0.5},
                           rhs={S: -b * S * I_, I_: b * S * I_ - g * I_})
    t = np.linspace(0, 20, 41)
    Y = _simulated(truth, t, Y0, noise, seed + 7, lambda s: s.std(axis=0))
    data = dl.Dataset.from_frame(pd.DataFrame({"t": t, "S": Y[:, 0], "I": Y[:, 1]}))
    nn = dl.MLP("inc", inputs=[S, I_], outputs=1, seed=0)
    model = dl.HybridModel(states=[S, I_], params={g: dl.Parameter(0.4, min=0)},
                           rhs={S: -nn[0], I_: nn[0] - g * I_}, name="SIR-UDE")
    names = ["S", "I"]
    tt, te = np.linspace(0, 20, 81), np.linspace(20, 30, 41)[1:]
    ref = _truth(truth, tt, Y0, names)
    return dict(model=model, data=data, kw=dict(y0="estimate"), tt=tt, truth=ref,
                unit={o: ref[o].std() for o in ref}, te=te,
                extrap=_truth(truth, te, Y0, names), terms={"inc[0]": {"I*S": 1.5}})


SYSTEMS = {"decay": decay, "lv": lv, "lv-known": lambda n, s: lv(n, s, known=True),
           "osc": osc, "pendulum": pendulum, "sir": sir}


def _rmse(r, t, truth, unit):
    """RMSE of the fit's prediction against the truth, per observable in its unit; NaN when
    the prediction fails (e.g. the network blows up outside the window)."""
    try:
        p = r.predict(t, bands=False)
    except dl.DynlearnError:
        return float("nan")
    return float(np.sqrt(np.mean([np.mean(((p[o].to_numpy() - truth[o]) / unit[o]) ** 2)
                                  for o in truth])))


def exact(rec, terms) -> bool:
    """Exactly the true terms, every coefficient within 10 %."""
    coef = rec.coefficients
    for out in coef.columns:
        kept = {t: float(coef.loc[t, out]) for t in coef.index if coef.loc[t, out] != 0}
        want = terms.get(out, {})
        if set(kept) != set(want):
            return False
        if any(abs(kept[t] - w) > 0.1 * abs(w) for t, w in want.items()):
            return False
    return True


def one(system, noise, seed, l2, recover=False):
    case = SYSTEMS[system](noise, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = dl.fit(case["model"], case["data"], rtol=1e-6, atol=1e-6, progress=False, l2=l2,
                   **case["kw"])
        found = None
        if recover and case["terms"] is not None:
            try:
                rec = dl.recover(r, library=dl.polynomial_library(case.get("library", 2)))
                found = "yes" if exact(rec, case["terms"]) else "no: " + "; ".join(
                    rec.equations())
            except dl.DynlearnError as exc:
                found = f"error: {exc}"[:60]
    err = _rmse(r, case["tt"], case["truth"], case["unit"])
    ext = _rmse(r, case["te"], case["extrap"], case["unit"]) if case["te"] is not None \
        else float("nan")
    return r, err, ext, found


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", default="decay,lv,lv-known,osc,pendulum,sir")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rules", default="0,discrepancy,gcv,auto")
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--recover", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    rules = [0.0 if r == "0" else r for r in args.rules.split(",")]
    header = ["system", "seed", "rule", "chi2/(n-k)", "truth RMSE fit", "truth RMSE extrap",
              "chosen l2", "evaluations", "cost ratio"] + (["recovered"] if args.recover else [])
    rows = []
    for system in args.systems.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            base = None
            for rule in rules:
                r, err, ext, found = one(system, args.noise, seed, rule, args.recover)
                n = r.nfev + r.njev
                base = n if base is None else base
                rows.append([system, str(seed), str(rule), f"{r.diagnostics.fit_to_noise:.3f}",
                             f"{err:.4f}", f"{ext:.4f}", f"{r.config['l2']:.3g}", str(n),
                             f"{n / base:.2f}x"] + ([found or "-"] if args.recover else []))
                print(" | ".join(rows[-1]), flush=True)
    print()
    print_table(header, rows, args.markdown)


if __name__ == "__main__":
    main()
