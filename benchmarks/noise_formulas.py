"""Noise formulas (``sigma={"x": "a + b*x"}``): what the fit gives against the joint
maximum of the full likelihood, over seeds, with and without the joint optimisation that
ends it (``dynlearn.fitting.starts.POLISH_ITERATIONS = 0``: the alternation's fixed point
alone, iteratively reweighted least squares; see dynlearn.objective.noise).

The model is ``x' = -k x``, ``x(0) = 10`` (known), measured at ``n`` times in [0, 4] with
noise of standard deviation ``a + b*h`` (``h`` the true value; k = 0.7, a = 0.05, b = 0.1).
For each seed: ``dl.fit`` with the formula, and a direct L-BFGS-B maximisation of the full
likelihood in (k, a, b) with the closed-form solution ``h = 10 exp(-k t)`` (no ODE solve).
Prints the mean and standard deviation of each estimate for both, the mean and largest
likelihood gap (fit's reported loss minus the joint optimum's negative log-likelihood,
never negative up to round-off), and the median time of one fit.

Then the same gap on Lotka-Volterra data (dynlearn.testing, noise 0.1, x with
``sigma = a + b*x``, y a closed-form level): the joint optimum by L-BFGS-B on
``dl.loss_and_grad`` (the exact gradient, noise parameters re-estimated at each point),
started at the fit's result.

    python benchmarks/noise_formulas.py [--seeds 20] [--n 300] [--lv-seeds 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from scipy.optimize import minimize

import dynlearn as dl
import dynlearn.fitting.starts as starts
from dynlearn.testing import decay_model, lotka_volterra_data, lotka_volterra_fit_model

K, A, B = 0.7, 0.05, 0.1


def nll(params, t, y):
    k, a, b = params
    h = 10.0 * np.exp(-k * t)
    s = a + b * h
    if np.any(s <= 0):
        return np.inf
    r = y - h
    return float(np.sum(0.5 * (r / s) ** 2 + np.log(s)) + 0.5 * y.size * np.log(2 * np.pi))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--lv-seeds", type=int, default=5)
    args = ap.parse_args()
    t = np.linspace(0, 4, args.n)
    h = 10.0 * np.exp(-K * t)
    default = starts.POLISH_ITERATIONS
    for polish, label in ((0, "alternation only"), (default, "default (with the joint end)")):
        starts.POLISH_ITERATIONS = polish
        decay(args, t, h, label)
    starts.POLISH_ITERATIONS = default
    for polish, label in ((0, "alternation only"), (default, "default (with the joint end)")):
        starts.POLISH_ITERATIONS = polish
        lotka_volterra(args.lv_seeds, label)
    starts.POLISH_ITERATIONS = default


def decay(args, t, h, label):
    fits, joint, gap, times = [], [], [], []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        y = h + (A + B * h) * rng.standard_normal(t.size)
        data = dl.Dataset.from_frame(pd.DataFrame({"t": t, "x": y}))
        t0 = time.perf_counter()
        r = dl.fit(decay_model(), data, loss="gaussian", sigma={"x": "a + b*x"}, y0=[10.0],
                   progress=False, rtol=1e-10, atol=1e-12, method="RK45")
        times.append(time.perf_counter() - t0)
        est = [r.params.loc["k", "value"], r.sigma["a"], r.sigma["b"]]
        best = minimize(nll, est, args=(t, y), method="Nelder-Mead",
                        options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
        fits.append(est)
        joint.append(best.x)
        gap.append(r.loss - best.fun)
    fits, joint, gap = np.array(fits), np.array(joint), np.array(gap)
    print(f"\n{label}: {args.seeds} seeds, n = {args.n}; truth k = {K}, a = {A}, b = {B}")
    print(f"{'estimate':10s} {'fit mean':>10s} {'fit sd':>9s} {'joint mean':>11s} "
          f"{'joint sd':>9s} {'mean |fit - joint|':>19s}")
    for j, name in enumerate(("k", "a", "b")):
        print(f"{name:10s} {fits[:, j].mean():10.5f} {fits[:, j].std(ddof=1):9.5f} "
              f"{joint[:, j].mean():11.5f} {joint[:, j].std(ddof=1):9.5f} "
              f"{np.abs(fits[:, j] - joint[:, j]).mean():19.2e}")
    print(f"likelihood gap (fit loss - joint optimum): mean {gap.mean():.3g}, "
          f"max {gap.max():.3g}, min {gap.min():.3g}")
    print(f"median time of one fit: {np.median(times):.3f} s")


def lotka_volterra(n_seeds, label):
    sigma = {"x": "a + b*x"}
    kw = dict(loss="gaussian", sigma=sigma, rtol=1e-10, atol=1e-12, method="RK45")
    print(f"\nLotka-Volterra, sigma = {sigma}, {n_seeds} seeds, {label}")
    print(f"{'seed':>4s} {'fit loss':>12s} {'joint loss':>12s} {'gap':>9s} "
          f"{'max rel. theta change':>22s}")
    for seed in range(n_seeds):
        data = lotka_volterra_data(noise=0.1, seed=seed)
        r = dl.fit(lotka_volterra_fit_model(), data, progress=False, **kw)
        theta = r.model.theta0
        best = minimize(lambda th, m=r.model, d=data: dl.loss_and_grad(m, d, th, **kw), theta,
                        jac=True, method="L-BFGS-B", bounds=[(1e-6, None)] * theta.size,
                        options={"ftol": 1e-14, "gtol": 1e-9, "maxiter": 500})
        print(f"{seed:4d} {r.loss:12.5f} {best.fun:12.5f} {r.loss - best.fun:9.4f} "
              f"{np.max(np.abs(best.x / theta - 1)):22.4f}")


if __name__ == "__main__":
    main()
