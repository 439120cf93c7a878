"""Large stiff models: dense, banded (states reordered) or sparse Jacobians for the forward
solve (issue 15, "sparse Jacobians for large networks of reactions").

For each case this prints the structural bandwidth of ``J = df/dy`` in the declared state
order and after a reverse Cuthill-McKee ordering of the states (``scipy.sparse.csgraph``),
the density of ``J``, and the time of the plain forward solve (no sensitivities), all at the
same tolerances, side by side and interleaved:

* ``LSODA dense``: what ``dynlearn.solve.solve_observed`` gave LSODA before (a dense
  ``n x n`` Jacobian, a dense LU inside LSODA);
* ``LSODA banded``: the system in the reordered states ``z = y[perm]`` with ``J`` in LAPACK's
  banded storage (``lband``/``uband``);
* ``BDF sparse``, ``Radau sparse``: scipy's BDF or Radau with ``J`` as a ``scipy.sparse``
  matrix (sparse LU);
* ``auto``: ``dynlearn.solve.solve_observed`` as it is now (the layout
  ``dynlearn.core.bandwidth.lsoda_layout`` picks: dense for these PEtab models, banded for
  the chains of at least 100 states);
* with ``--sensitivities K``: forward sensitivities along the first ``K`` parameters
  (``ForwardSensitivity.directional``, LSODA's banded ``I (x) J``) with the band of the
  declared state order (before) and of the reordered one (now); their ratio and difference
  are against the declared order's.

``rel diff`` is the largest over the output times of the norm-wise difference of a
variant's outputs (states, and sensitivities for those rows) from the reference row's,
relative to the reference's norm. Everything runs on one BLAS thread (threadpoolctl), as
PEtab evaluations do; the variants of a case are interleaved, medians of ``--repeats``.

Cases: PEtab problems of the benchmark collection (the first simulation condition, its
measurement times up to ``--horizon``: a full evaluation of Chen_MSB2009 takes minutes) and
the reaction chain of ``bench_stiff.py`` with ``n`` states, in its own order (tridiagonal)
and with the states declared in a random order (``shuffled``: wide band, RCM restores it).

Usage::

    python benchmarks/large_jacobian.py [COLLECTION_DIR] [--problems Chen_MSB2009 ...]
        [--horizon 100] [--chains 100 300] [--rtol 1e-12 --atol 1e-12] [--repeats 2]
        [--sensitivities 2] [--skip "BDF sparse" "Radau sparse"]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sps
from scipy.optimize import OptimizeResult
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import print_table  # noqa: E402
from bench_stiff import chain_model  # noqa: E402

import dynlearn as dl  # noqa: E402
import dynlearn.sensitivity.forward as forward_module  # noqa: E402
from dynlearn.core.bandwidth import (  # noqa: E402
    StateOrder,
    band_ordering,
    bandwidth,
    lsoda_pads_band,
)
from dynlearn.core.vectorfield import VectorField  # noqa: E402
from dynlearn.sensitivity.base import Problem  # noqa: E402
from dynlearn.solve import integrate, solve_observed  # noqa: E402


class _Captured(Exception):
    """Raised by the stand-in solve to stop an evaluation once it has what it needs."""


def petab_case(root: str, name: str, horizon: float | None):
    """The plain solves of a PEtab problem's first simulation condition at its nominal
    parameters (one per segment between switching or event times), as a list of ``(vf,
    t0, times, y0)``, recorded by standing in for ``solve_observed`` during ``nllh``
    (the real solve runs; the evaluation stops at the next condition). With ``horizon``,
    the segments starting before it, the last one cut there."""
    import dynlearn.petab as dp
    import dynlearn.petab.problem as pp

    d = os.path.join(root, name)
    yaml = os.path.join(d, f"{name}.yaml")
    t0 = time.perf_counter()
    prob = dp.load(yaml)
    print(f"# {name}: imported in {time.perf_counter() - t0:.1f} s", flush=True)
    got = []
    real = pp.solve_observed

    def capture(vf, t0, t_obs, y0, *args, **kwargs):
        if got and (vf is not got[-1][0] or (horizon is not None and t0 >= horizon)):
            raise _Captured      # the next condition (or past the horizon)
        got.append((vf, float(t0), np.array(t_obs, dtype=float), np.array(y0, dtype=float)))
        return real(vf, t0, t_obs, y0, *args, **kwargs)

    pp.solve_observed = capture
    t0 = time.perf_counter()
    try:
        prob.nllh(prob.x_nominal)
    except _Captured:
        pass
    finally:
        pp.solve_observed = real
    print(f"# {name}: {len(got)} segment(s) recorded in {time.perf_counter() - t0:.1f} s",
          flush=True)
    if not got:
        raise RuntimeError(f"{name}: no plain solve seen")
    if horizon is not None:
        vf, a, times, y0 = got[-1]
        if times[-1] > horizon:
            times = times[times <= horizon]
            got[-1] = (vf, a, np.append(times, horizon) if times.size == 0 or
                       times[-1] < horizon else times, y0)
    return got


def chain_case(n: int, shuffled: bool, seed: int = 0):
    """The reaction chain of ``bench_stiff.py`` (``n`` states, tridiagonal ``J``), with its
    states declared in a random order when ``shuffled``."""
    # (the rates drawn as bench_stiff.chain_problem draws them, the order from its own seed)
    order = np.random.default_rng(seed + 1).permutation(n) if shuffled else np.arange(n)
    model = chain_model(n, np.random.default_rng(seed), order)
    y0 = np.zeros(n)
    y0[int(np.flatnonzero(order == 0)[0])] = 1.0
    times = np.concatenate([[0.0], np.logspace(-3, 2, 30)])
    return [(VectorField(model, model.theta0), 0.0, times, y0)]


def lsoda_dense(vf, t0, times, y0, rtol, atol):
    res = integrate(vf.fun, (t0, times[-1]), y0, times, method="LSODA", jac=vf.jac,
                    rtol=rtol, atol=atol)
    return res.y.T, res


def lsoda_banded(vf, t0, times, y0, rtol, atol, perm):
    """LSODA on ``z = y[perm]`` with the banded Jacobian of the reordered system."""
    n = vf.n
    pattern = vf.c.jacobian_pattern()[np.ix_(perm, perm)]
    lo, up = bandwidth(pattern)
    rows, cols = np.nonzero(pattern)
    height = lo + up + 1 + (lo if lsoda_pads_band() else 0)
    packed = np.zeros((height, n))
    band = up + rows - cols
    inv = np.empty(n, dtype=int)
    inv[perm] = np.arange(n)
    src_r, src_c = perm[rows], perm[cols]
    y = np.empty(n)

    def fun(t, z):
        y[perm] = z
        return np.asarray(vf.fun(t, y))[perm]

    def jac(t, z):
        y[perm] = z
        J = vf.jac(t, y)
        packed[band, cols] = J[src_r, src_c]
        return packed.copy()

    res = integrate(fun, (t0, times[-1]), y0[perm], times, method="LSODA", jac=jac,
                    lband=lo, uband=up, rtol=rtol, atol=atol)
    return res.y.T[:, inv], res


def bdf_sparse(vf, t0, times, y0, rtol, atol, method="BDF"):
    rows, cols = np.nonzero(vf.c.jacobian_pattern())
    n = vf.n

    def jac(t, y):
        J = vf.jac(t, y)
        return sps.csc_matrix((J[rows, cols], (rows, cols)), shape=(n, n))

    res = integrate(vf.fun, (t0, times[-1]), y0, times, method=method, jac=jac,
                    rtol=rtol, atol=atol)
    return res.y.T, res


def auto(vf, t0, times, y0, rtol, atol):
    Y, res = solve_observed(vf, t0, times, y0, "LSODA", rtol, atol, {})
    return Y, res


def segments(solve, case):
    """Run ``solve(vf, t0, times, y0)`` over the segments of a case: the outputs stacked,
    the counts summed (a failed segment ends it)."""
    Ys, stats, res = [], dict(nfev=0, njev=0, nlu=0), None
    for vf, t0, times, y0 in case:
        Y, res = solve(vf, t0, times, y0)
        Ys.append(Y)
        for key in stats:
            stats[key] += getattr(res, key, 0)
        if res.status != 0:
            break
    res.update(stats)
    return np.concatenate(Ys), res


def sensitivities(vf, t0, times, y0, rtol, atol, k, declared):
    """``ForwardSensitivity.directional`` along the first ``k`` parameters with LSODA's
    banded block Jacobian: in reordered states (now), or with ``declared`` in the declared
    state order (before)."""
    prob = Problem(vf=vf, t0=t0, t_obs=times, y0=y0, obs_loss=None, method="LSODA",
                   rtol=rtol, atol=atol, name="bench")
    D = np.eye(vf.n_theta)[:, :k]
    real = forward_module.lsoda_layout
    nfev, njev = vf.nfev, vf.njev
    if declared:
        forward_module.lsoda_layout = lambda pattern, blocks=1: StateOrder(
            pattern, np.arange(pattern.shape[0]), blocks)
    try:
        Y, S = dl.ForwardSensitivity().directional(prob, D)
    finally:
        forward_module.lsoda_layout = real
    return np.concatenate([Y, S.reshape(S.shape[0], -1)], axis=1), OptimizeResult(
        status=0, nfev=vf.nfev - nfev, njev=vf.njev - njev, nlu=0, t=times)


def run_case(label, case, args, rows):
    vf = case[0][0]
    n = vf.n
    pattern = vf.c.jacobian_pattern()
    perm = band_ordering(pattern)
    before, after = bandwidth(pattern), bandwidth(pattern[np.ix_(perm, perm)])
    density = pattern.sum() / n**2
    rt, at = args.rtol, args.atol
    variants = {
        "LSODA dense": lambda: segments(
            lambda vf, t0, times, y0: lsoda_dense(vf, t0, times, y0, rt, at), case),
        "LSODA banded": lambda: segments(
            lambda vf, t0, times, y0: lsoda_banded(vf, t0, times, y0, rt, at, perm), case),
        "BDF sparse": lambda: segments(
            lambda vf, t0, times, y0: bdf_sparse(vf, t0, times, y0, rt, at), case),
        "Radau sparse": lambda: segments(
            lambda vf, t0, times, y0: bdf_sparse(vf, t0, times, y0, rt, at, "Radau"), case),
        "auto": lambda: segments(
            lambda vf, t0, times, y0: auto(vf, t0, times, y0, rt, at), case),
    }
    if args.sensitivities:
        nk = min(args.sensitivities, vf.n_theta)
        # compile f, J and df/dtheta (one call) before anything is timed
        forward_module.compiled_sensitivity_rhs(vf, nk, np.eye(vf.n_theta)[:, :nk])(
            case[0][1], np.concatenate([case[0][3], np.zeros(nk * n)]))
        for name, declared in ((f"forward sens. k={nk}, declared order", True),
                               (f"forward sens. k={nk}, reordered", False)):
            variants[name] = (lambda declared=declared: segments(
                lambda vf, t0, times, y0: sensitivities(vf, t0, times, y0, rt, at, nk,
                                                        declared), case))
    variants = {k: v for k, v in variants.items() if k not in args.skip}
    times_s = {k: [] for k in variants}
    outs = {}
    for _ in range(args.repeats):   # interleaved: the load moves all alike
        for k, fn in variants.items():
            a = time.perf_counter()
            try:
                Y, res = fn()
            except Exception as exc:   # a benchmark reports a failure in its row
                outs[k] = exc
                times_s[k].append(np.nan)
                print(f"#   {label} {k}: {type(exc).__name__}: {exc}", flush=True)
                continue
            times_s[k].append(time.perf_counter() - a)
            outs[k] = (Y, res)
            print(f"#   {label} {k}: {times_s[k][-1]:.3g} s, {res.nfev} f, "
                  f"{getattr(res, 'njev', 0)} J, {getattr(res, 'nlu', 0)} LU, status {res.status}"
                  + ("" if res.status == 0 else f" ({res.message})"), flush=True)
    for k in variants:
        sens = k.startswith("forward sens.")
        base = next((v for v in variants if v.endswith("declared order")), None) if sens \
            else "LSODA dense"
        ref = outs.get(base)
        t_ref = np.median(times_s[base]) if base in times_s else np.nan
        out = outs[k]
        if isinstance(out, Exception):
            rows.append([label, str(n), f"{density:.3g}", f"{before}", f"{after}", k, "-", "-",
                         f"fails: {type(out).__name__}"])
            continue
        if out[1].status != 0:
            rows.append([label, str(n), f"{density:.3g}", f"{before}", f"{after}", k, "-", "-",
                         f"fails: {out[1].message}"])
            continue
        t = float(np.median(times_s[k]))
        if isinstance(ref, tuple):
            Yr = ref[0]
            if out[0].shape != Yr.shape:
                diff = f"stopped at t={out[1].t[-1]:.4g}" if out[1].t.size else "no output"
            else:
                # norm-wise at each output time, the largest over the times
                num = np.linalg.norm(out[0] - Yr, axis=1)
                diff = f"{np.max(num / np.maximum(np.linalg.norm(Yr, axis=1), 1e-300)):.1e}"
        else:
            diff = "-"
        rows.append([label, str(n), f"{density:.3g}", f"{before}", f"{after}", k, f"{t:.3g}",
                     f"{t_ref / t:.2f}", diff])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("collection", nargs="?", help="the PEtab benchmark collection's "
                    "Benchmark-Models directory (PEtab cases skipped without it)")
    ap.add_argument("--problems", nargs="*",
                    default=["Chen_MSB2009", "Lang_PLOSComputBiol2024"])
    ap.add_argument("--horizon", type=float, default=None,
                    help="end the PEtab solves at this time (default: the last measurement)")
    ap.add_argument("--chains", nargs="*", type=int, default=[100, 300])
    ap.add_argument("--rtol", type=float, default=1e-12)
    ap.add_argument("--atol", type=float, default=1e-12)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sensitivities", type=int, default=0, metavar="K",
                    help="also forward sensitivities along K parameters, LSODA's banded "
                         "block Jacobian in the declared and in the reordered state order")
    ap.add_argument("--skip", nargs="*", default=[],
                    help="variants to leave out, e.g. 'BDF sparse'")
    args = ap.parse_args(argv)
    print(f"# load: {os.getloadavg()}", flush=True)
    rows = []
    with threadpool_limits(1):
        for n in args.chains:
            for shuffled in (False, True):
                label = f"chain n={n}" + (" shuffled" if shuffled else "")
                run_case(label, chain_case(n, shuffled), args, rows)
        if args.collection:
            for name in args.problems:
                run_case(name, petab_case(args.collection, name, args.horizon), args, rows)
    print(f"# load: {os.getloadavg()}; rtol {args.rtol:g}, atol {args.atol:g}, medians of "
          f"{args.repeats}", flush=True)
    print_table(["case", "states", "J density", "band (l, u)", "band after RCM", "variant",
                 "s", "base / variant", "rel diff"], rows, markdown=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
