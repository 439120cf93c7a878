"""Stiff models: forward solve and loss + gradient for every stiff method x sensitivity.

Problems: Robertson (3 states, 3 log-rates), a mass-action reaction chain with n = 10, 30,
100 states and n log-rate parameters spanning four decades, and a stiff hybrid (Robertson
kinetics plus a small MLP rate term). For each problem and each of BDF, Radau, LSODA with
forward sensitivities and the continuous adjoint, the script measures one loss evaluation
(the forward solve) and one loss + gradient, interleaved (forward, gradient, forward, ...)
so both see the same machine load, and reports medians, the ratio gradient / forward and
the gradient's relative error against a tight reference (Radau forward sensitivities at
rtol 1e-12). The discrete adjoint applies to RK45/RK23 only, so not to these methods.

Usage::

    python benchmarks/bench_stiff.py [--markdown] [--only robertson|chain|hybrid]
                                     [--sizes 10 30 100] [--hidden 4 24] [--repeats 5]
                                     [--budget 20] [--skip LSODA/adjoint ...]

A configuration whose first gradient takes longer than ``--budget`` seconds is timed once.
AMICI is compared on these problems, exported to PEtab, by ``benchmarks/petab_vs_amici.py
--stiff-suite``.

``--auto`` measures ``method="auto"`` instead (issue #15 item 2), side by side with the fixed
choices on the same problems plus two non-stiff ones (Lotka-Volterra, and the LV-UDE hybrid
with a 2-5-5-5-2 network): what the probe chose and its cost, one loss + gradient with auto,
LSODA (forward sensitivities: the best stiff choice of the table above) and RK45 (discrete
adjoint: the old default of ``dl.fit``), and a small fit (``dl.fit``, Levenberg-Marquardt,
from the shifted parameters) with each. A solve that exceeds ``max_nfev`` or a fit that
exceeds ``--fit-time`` seconds is reported as such. Then the probe's cost inside a fit:
fits with auto and with the method it picks, alternated (:func:`fit_overhead`)::

    python benchmarks/bench_stiff.py --auto [--markdown] [--sizes 10 30] [--fit-time 60]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import sympy as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import print_table  # noqa: E402

import dynlearn as dl  # noqa: E402
from dynlearn.objective.objective import probe_method  # noqa: E402
from dynlearn.testing import (  # noqa: E402
    lotka_volterra_data,
    lotka_volterra_fit_model,
    lotka_volterra_problem,
    lv_ude_problem,
    relative_error,
    robertson_problem,
)

METHODS = ("BDF", "Radau", "LSODA")


def chain_model(n: int, rng, order=None):
    """The reaction chain of :func:`chain_problem` as a model (its states declared in
    ``order``, a permutation of ``0..n-1``, if given)."""
    y = sp.symbols(f"y0:{n}")
    lk = sp.symbols(f"lk0:{n - 1}")
    lb = sp.Symbol("lb")
    logk = np.log(10.0) * rng.permutation(np.linspace(-1.0, 3.0, n - 1))
    rhs = {s: sp.S.Zero for s in y}
    kb = sp.exp(lb)
    for i in range(n - 1):
        fwd = sp.exp(lk[i]) * y[i]
        back = kb * y[i + 1] ** 2
        rhs[y[i]] += -fwd + back
        rhs[y[i + 1]] += fwd - back
    params = {s: float(v) for s, v in zip(lk, logk)}
    params[lb] = float(np.log(0.5))
    states = list(y) if order is None else [y[i] for i in order]
    return dl.HybridModel(states=states, params=params, rhs={s: rhs[s] for s in states},
                          name=f"chain{n}")


def chain_problem(n: int, seed: int = 0):
    """A reaction chain ``A_0 -> A_1 -> ... -> A_{n-1}`` (rates ``k_i y_i``) with a
    bimolecular back reaction ``2 A_{i+1} -> A_i + A_{i+1}`` (rate ``kb y_{i+1}^2``): n - 1
    forward log-rates spread over four decades (1e-1 .. 1e3) plus one back log-rate. All
    states observed at 30 log-spaced times in [1e-3, 1e2]; ``theta`` is the truth shifted
    by up to 10% of a decade."""
    rng = np.random.default_rng(seed)
    model = chain_model(n, rng)
    t = np.concatenate([[0.0], np.logspace(-3, 2, 30)])
    y0 = np.zeros(n)
    y0[0] = 1.0
    data = simulated(model, t, y0)
    theta = model.theta0 + 0.23 * rng.uniform(-1, 1, model.theta0.size)
    return model, data, theta


def hybrid_problem(hidden: int = 4, seed: int = 0):
    """Robertson kinetics plus ``1e-2 * nn(y1, y3)`` in the first two equations (a
    2-``hidden``-1 tanh network: 17 weights for 4, 97 for 24) and the 3 log-rates. Data
    from the pure kinetics."""
    kin, data, theta_k = robertson_problem()
    y1, y2, y3 = kin.states
    l1, l2, l3 = sp.symbols("l1 l2 l3")
    k1, k2, k3 = sp.exp(l1), sp.exp(l2), sp.exp(l3)
    nn = dl.MLP("nn", inputs=[y1, y3], outputs=1, hidden=[hidden], seed=seed, scale=0.3)
    model = dl.HybridModel(
        states=[y1, y2, y3],
        params={l1: np.log(0.04), l2: np.log(3e7), l3: np.log(1e4)},
        rhs={y1: -k1 * y1 + k3 * y2 * y3 + 1e-2 * nn[0],
             y2: k1 * y1 - k3 * y2 * y3 - k2 * y2**2 - 1e-2 * nn[0],
             y3: k2 * y2**2}, name="robertson-hybrid")
    theta = model.theta0.copy()
    theta[:3] = theta_k
    return model, data, theta


def simulated(model, t, y0) -> dl.Dataset:
    sol = dl.simulate(model, t, y0, method="Radau", rtol=1e-12, atol=1e-14)
    return dl.Dataset.from_frame(sol.to_frame(), time=sol.time_name)


def interleaved(fns, repeats: int, budget: float):
    """Median seconds of each callable, calling them in turn ``repeats`` times (once when
    the first round already exceeds ``budget`` seconds)."""
    times = [[] for _ in fns]
    for r in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
        if r == 0 and sum(t[0] for t in times) > budget:
            break
    return [float(np.median(t)) for t in times]


def sensitivities():
    return {"forward": dl.ForwardSensitivity, "adjoint": lambda: dl.Adjoint(kind="continuous")}


def bench_problem(name, model, data, theta, rtol, atol, args, rows):
    # Radau is the most accurate at a given rtol; on the 100-state chain its 10,100-
    # component sensitivity system at rtol 1e-12 takes many minutes, so LSODA there
    ref_method = "Radau" if model.n_states <= 30 else "LSODA"
    ref = dl.loss_and_grad(model, data, theta, sensitivity=dl.ForwardSensitivity(),
                           method=ref_method, rtol=1e-12, atol=atol * 1e-3)[1]
    print(f"{name}: reference {ref_method} forward sensitivities at rtol 1e-12", flush=True)
    for method in METHODS:
        for sname, make in sensitivities().items():
            if args.skip and f"{method}/{sname}" in args.skip:
                continue
            o = dl.Objective(model, data, method=method, rtol=rtol, atol=atol,
                             sensitivity=make())
            try:
                t0 = time.perf_counter()
                g = o.value_and_grad(theta)[1]
                first = time.perf_counter() - t0
            except Exception as e:  # noqa: BLE001 - a failing configuration is a result
                rows.append([name, method, sname, "-", "-", "-",
                             f"failed: {type(e).__name__}: {str(e)[:60]}"])
                print(rows[-1], flush=True)
                continue
            reps = 1 if first > args.budget else args.repeats
            fwd, grad = interleaved([lambda o=o: o.value(theta),
                                     lambda o=o: o.value_and_grad(theta)], reps, args.budget)
            rows.append([name, method, sname, f"{1e3 * fwd:.3g}", f"{1e3 * grad:.3g}",
                         f"{grad / fwd:.2g}", f"{relative_error(g, ref):.1e}"])
            print(rows[-1], flush=True)


def timed(fn):
    """``(seconds, result or the exception raised)``."""
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - a failing configuration is a result
        out = e
    return time.perf_counter() - t0, out


def auto_problems(args):
    """(name, model, data, theta, rtol, atol) of the --auto comparison."""
    out = []
    model, data, theta = robertson_problem()
    out.append(("Robertson (3 states, 3 p)", model, data, theta, 1e-8, 1e-12))
    for n in args.sizes:
        model, data, theta = chain_problem(n)
        out.append((f"chain n={n} ({n} p)", model, data, theta, 1e-8, 1e-10))
    model, data, theta = hybrid_problem(args.hidden[0])
    out.append((f"hybrid Robertson + MLP ({model.theta0.size} p)", model, data, theta, 1e-8,
                1e-12))
    model, data, theta = lotka_volterra_problem()
    out.append(("Lotka-Volterra (2 states, 4 p), non-stiff", model, data, theta, 1e-6, 1e-8))
    model, data, theta = lv_ude_problem()
    out.append((f"LV-UDE hybrid ({model.theta0.size} p), non-stiff", model, data, theta, 1e-6,
                1e-8))
    return out


def verdict(choice) -> str:
    word = {True: "stiff", False: "non-stiff", None: "borderline"}[choice.stiff]
    return f"{choice.method} ({word}, ratio {choice.ratio:.2g})"


def auto_row(name, model, data, theta, rtol, atol, args) -> list[str]:
    """One row of the --auto table (see bench_auto)."""
    methods = ("auto", "LSODA", "RK45")
    objs = {m: dl.Objective(model, data, method=m, rtol=rtol, atol=atol) for m in methods}
    choice = objs["auto"].method_choice
    bound = objs["auto"].fit_objective.bound
    y0s = [b.y0 for b in bound]
    probe = [timed(lambda: probe_method(model, bound, theta, y0s, rtol, atol, {}))[0]
             for _ in range(3)]
    # one loss + gradient each, the first (which compiles) not counted unless it failed or
    # took longer than --budget seconds (then it is the only one)
    grad: dict[str, list] = {}
    once = set()
    for m, o in objs.items():
        t, out = timed(lambda o=o: o.value_and_grad(theta))
        if isinstance(out, Exception) or t > args.budget:
            once.add(m)
        grad[m] = [t, out] if isinstance(out, Exception) else [t] if m in once else []
    for _ in range(args.repeats):
        for m, o in objs.items():
            if m not in once:
                grad[m].append(timed(lambda o=o: o.value_and_grad(theta))[0])

    def cell(m):
        g = grad[m]
        if g and isinstance(g[-1], Exception):
            return f"fails after {g[0]:.3g} s ({type(g[-1]).__name__})"
        return f"{1e3 * float(np.median(g)):.3g}"

    start = model.with_theta(theta)
    fits = {}
    for m in methods:
        t, res = timed(lambda m=m: dl.fit(start, data, method=m, rtol=rtol, atol=atol,
                                          progress=False, max_time=args.fit_time))
        if isinstance(res, Exception):
            fits[m] = f"fails ({type(res).__name__})"
        elif res.status.value == "max_time":
            fits[m] = f"> {args.fit_time:g} (max_time), loss {res.loss:.3g}"
        else:
            fits[m] = f"{t:.3g} (loss {res.loss:.3g})"
    return [name, verdict(choice), f"{1e3 * float(np.median(probe)):.3g}", cell("auto"),
            cell("LSODA"), cell("RK45"), fits["auto"], fits["LSODA"], fits["RK45"]]


def fit_overhead(repeats: int = 5) -> None:
    """The probe's cost inside a fit: ``dl.fit`` with ``method="auto"`` and with the method
    it picks, alternated ``repeats`` times (medians), on Robertson (from the shifted
    parameters, rtol 1e-8) and Lotka-Volterra (from its fit model, default tolerances)."""
    model, data, theta = robertson_problem()
    cases = [("Robertson", model.with_theta(theta), data, "LSODA",
              dict(rtol=1e-8, atol=1e-12)),
             ("Lotka-Volterra", lotka_volterra_fit_model(), lotka_volterra_data(), "RK45", {})]
    for name, model, data, fixed, kw in cases:
        dl.fit(model, data, method=fixed, progress=False, **kw)       # compiles
        ta, tf = [], []
        for _ in range(repeats):
            t, ra = timed(lambda model=model, data=data, kw=kw: dl.fit(
                model, data, method="auto", progress=False, **kw))
            ta.append(t)
            t, rf = timed(lambda model=model, data=data, fixed=fixed, kw=kw: dl.fit(
                model, data, method=fixed, progress=False, **kw))
            tf.append(t)
        print(f"fit of {name}: auto {np.median(ta):.3f} s, {fixed} {np.median(tf):.3f} s "
              f"(medians of {repeats}, alternated); auto chose {ra.method}; same x: "
              f"{np.array_equal(ra.x, rf.x)}")
    print(f"load: {os.getloadavg()}")


def bench_auto(args):
    """method="auto" against LSODA and RK45: the choice, its cost, a loss + gradient
    (interleaved, so that they see the same load) and a small fit with each."""
    rows = []
    for name, model, data, theta, rtol, atol in auto_problems(args):
        rows.append(auto_row(name, model, data, theta, rtol, atol, args))
        print(rows[-1], flush=True)
    print()
    print(f"load: {os.getloadavg()}; loss+grad in ms (median of {args.repeats}, "
          f"interleaved), fits in s (one each, max_time {args.fit_time:g} s)")
    print_table(["problem", "auto chose", "probe ms", "loss+grad auto", "LSODA/forward",
                 "RK45/discrete (old default)", "fit s: auto", "fit s: LSODA",
                 "fit s: RK45 (old default)"], rows, args.markdown)
    print()
    fit_overhead()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--only", choices=["robertson", "chain", "hybrid"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 30, 100])
    ap.add_argument("--hidden", type=int, nargs="+", default=[4, 24],
                    help="hidden widths of the hybrid problem's network")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budget", type=float, default=20.0,
                    help="seconds above which a configuration is timed once")
    ap.add_argument("--skip", nargs="*", default=[],
                    help="configurations to leave out, e.g. LSODA/forward")
    ap.add_argument("--auto", action="store_true",
                    help="compare method='auto' with LSODA and RK45 (see the module notes)")
    ap.add_argument("--fit-time", type=float, default=60.0,
                    help="--auto: max_time of each small fit, seconds")
    args = ap.parse_args()
    if args.auto:
        bench_auto(args)
        return
    rows: list[list[str]] = []
    if args.only in (None, "robertson"):
        model, data, theta = robertson_problem()
        bench_problem("Robertson (3 states, 3 p)", model, data, theta, 1e-8, 1e-12, args, rows)
    if args.only in (None, "chain"):
        for n in args.sizes:
            model, data, theta = chain_problem(n)
            bench_problem(f"chain n={n} ({n} p)", model, data, theta, 1e-8, 1e-10, args, rows)
    if args.only in (None, "hybrid"):
        for hidden in args.hidden:
            model, data, theta = hybrid_problem(hidden)
            bench_problem(f"hybrid Robertson + MLP ({model.theta0.size} p)", model, data,
                          theta, 1e-8, 1e-12, args, rows)
    print()
    print(f"load: {os.getloadavg()}; rtol 1e-8; times in ms, medians of interleaved runs")
    print_table(["problem", "method", "sensitivity", "forward ms", "loss+grad ms",
                 "grad / fwd", "grad rel. error"], rows, args.markdown)


if __name__ == "__main__":
    main()
