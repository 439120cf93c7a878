"""The L2 strength chosen from the data (``l2="auto"``) against no penalty (``l2=0``).

Three systems, each fitted side by side with ``l2=0`` and ``l2="auto"`` (defaults
otherwise, rtol = atol = 1e-6, initial states known unless said):

* ``decay``: ``x' = -k x + nn(t)``, a 1-12-1 tanh network of time beside an exponential
  decay, 16 points on [0, 3], known noise level (``sigma=``), ``y0="estimate"``;
* ``lv``: the LV-UDE of ``benchmarks/bench_fit.py`` (t = 0:0.25:5, 5 % noise, 2-5-5-5-2 rbf
  network), noise level estimated from the data;
* ``lv-known``: the same with the true noise levels given (``sigma=``);
* ``osc``: a damped oscillator ``x'' = -k x + nn(v)`` with a learned friction term (truth
  ``-0.3 v - 0.2 v^3``), a 1-16-16-1 tanh network, t = 0:0.2:10, noise level estimated from
  the data.

Printed per case: ``chi^2 / (n - k)`` as the diagnostics compute it, the RMSE against the
noise-free truth inside the data window (in units of the noise for ``decay``, of the
signal's standard deviation otherwise), the chosen ``l2`` and the evaluations (solves +
Jacobians) with their ratio to the unpenalised fit's.

Usage::

    python benchmarks/bench_regularisation.py [--systems decay,lv,lv-known,osc] [--seeds 0,1,2]
        [--noise 0.05] [--markdown]
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


def decay(noise, seed):
    t = np.linspace(0, 3, 16)
    sigma = noise * 2.0 * 0.5                     # 5 % of the signal's mid value -> 0.05
    e = np.random.default_rng(seed + 12).standard_normal(t.size)
    data = dl.Dataset.from_frame(pd.DataFrame({"t": t, "x": 2 * np.exp(-0.6 * t) + sigma * e}))
    nn = dl.MLP("nn", inputs=[t_], outputs=1, hidden=[12], activation="tanh", seed=0)
    model = dl.HybridModel(states=[x], rhs={x: -k * x + nn[0]},
                           params={k: dl.Parameter(0.5, min=0, transform="log")})
    tt = np.linspace(0, 3, 61)
    truth = {"x": 2 * np.exp(-0.6 * tt)}
    return model, data, dict(y0="estimate", sigma=sigma), tt, truth, {"x": sigma}


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
    tt = np.linspace(0, 5, 101)
    ref = dl.simulate(truth, tt, Y0, rtol=1e-10, atol=1e-10).y
    kw = dict(y0=Y0)
    if known:       # the true noise levels (5 % of each state's mean at the sampling times)
        mean = dl.simulate(truth, t, Y0, rtol=1e-10, atol=1e-10).y.mean(axis=0)
        kw["sigma"] = {"x": noise * mean[0], "y": noise * mean[1]}
    return model, data, kw, tt, {"x": ref[:, 0], "y": ref[:, 1]}, \
        {"x": ref[:, 0].std(), "y": ref[:, 1].std()}


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
    tt = np.linspace(0, 10, 101)
    ref = dl.simulate(truth, tt, Y0, rtol=1e-10, atol=1e-10).y
    return model, data, dict(y0=Y0), tt, {"x": ref[:, 0], "v": ref[:, 1]}, \
        {"x": ref[:, 0].std(), "v": ref[:, 1].std()}


SYSTEMS = {"decay": decay, "lv": lv, "lv-known": lambda n, s: lv(n, s, known=True),
           "osc": osc}


def one(system, noise, seed, l2):
    model, data, kw, tt, truth, unit = SYSTEMS[system](noise, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = dl.fit(model, data, rtol=1e-6, atol=1e-6, progress=False, l2=l2, **kw)
    p = r.predict(tt, bands=False)
    err = float(np.sqrt(np.mean([np.mean(((p[o].to_numpy() - truth[o]) / unit[o]) ** 2)
                                 for o in truth])))
    return r, err


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", default="decay,lv,lv-known,osc")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    header = ["system", "seed", "chi2/(n-k) l2=0", "chi2/(n-k) auto", "truth RMSE l2=0",
              "truth RMSE auto", "chosen l2", "evaluations l2=0", "evaluations auto",
              "cost ratio"]
    rows = []
    for system in args.systems.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            r0, e0 = one(system, args.noise, seed, 0.0)
            ra, ea = one(system, args.noise, seed, "auto")
            n0, na = r0.nfev + r0.njev, ra.nfev + ra.njev
            rows.append([system, str(seed), f"{r0.diagnostics.fit_to_noise:.3f}",
                         f"{ra.diagnostics.fit_to_noise:.3f}", f"{e0:.4f}", f"{ea:.4f}",
                         f"{ra.config['l2']:.3g}", str(n0), str(na), f"{na / n0:.2f}x"])
            print(" | ".join(rows[-1]), flush=True)
    print()
    print_table(header, rows, args.markdown)


if __name__ == "__main__":
    main()
