"""Cost of one compiled call of ``f``, ``df/dy`` and ``df/dtheta`` on PEtab collection models,
and the gradient it feeds (issue #15).

Each step of a stiff forward-sensitivity or adjoint solve evaluates the right-hand side, its
Jacobian and its parameter Jacobian in one compiled call
(``CompiledModel.rhs_and_jacobians``). Two ways of compiling that call are timed side by
side, interleaved, on the same model and the same point:

* ``per-entry``: each Jacobian entry differentiated whole (``jacobian_exprs``), then one
  ``lambdify`` with common-subexpression elimination over all entries (how it was compiled
  before ``jacobian_program``);
* ``program``: ``CompiledExprs(..., wrt=...)``, the chain rule through the right-hand
  side's common subexpressions (``dynlearn.core.symbolic.jacobian_program``), what
  ``CompiledModel`` uses now.

Columns: microseconds per call (the best of ``max(7, --repeats)`` batches of ``--calls``
calls, interleaved) of ``f`` alone, of ``[f, J, df/dtheta]`` both ways and their ratio, the
same for ``J`` alone (the Jacobian LSODA asks for in a plain solve), the compile times, and
the relative difference between the two forms over random points (they are the same
derivative in another order of operations): norm-wise over the whole output, and the
largest over the entries, which is large only where an entry is a difference of nearly
equal terms (a saturating factor's derivative far above its constant; there the two forms
are off the exact value by about as much: on Borghans 2.7e-9 per entry against 2.0e-9,
checked at 50 digits). With ``--gradient``: one likelihood and one likelihood + gradient
at the nominal parameters with the program's Jacobians and with the per-entry ones
(``df/dy``, ``df/dp`` and ``[f, J, df/dtheta]`` of the same model swapped, everything else
the same; medians of ``--repeats`` after a first round that compiles, interleaved), their
ratios, the gradient's speed-up and the relative difference of the two gradients.

Usage::

    python benchmarks/petab_compiled.py PATH/TO/Benchmark-Models \\
        [--problems Laske_PLOSComputBiol2019 Bachmann_MSB2011 Borghans_BiophysChem1997] \\
        [--repeats 5] [--gradient] [--rtol 1e-12 --atol 1e-12] [--markdown]

Under a tree without ``jacobian_program`` the ``program`` columns are left empty.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import print_table  # noqa: E402

import dynlearn.core.symbolic as symbolic  # noqa: E402
import dynlearn.petab as dp  # noqa: E402
from dynlearn.core.symbolic import CompiledExprs, jacobian_exprs  # noqa: E402

DEFAULT = ["Laske_PLOSComputBiol2019", "Bachmann_MSB2011", "Borghans_BiophysChem1997"]


def _yaml(root: str, name: str) -> str:
    d = os.path.join(root, name)
    for cand in (f"{name}.yaml", "problem.yaml"):
        if os.path.exists(os.path.join(d, cand)):
            return os.path.join(d, cand)
    return os.path.join(d, sorted(f for f in os.listdir(d) if f.endswith(".yaml"))[0])


def _per_call(fns: list, args, repeats: int, calls: int) -> list[float]:
    """Best time per call (us) of each function, batches interleaved across functions."""
    best = [np.inf] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn(*args)
            best[i] = min(best[i], (time.perf_counter() - t0) / calls * 1e6)
    return best


def run(name: str, root: str, args) -> list[str]:
    t0 = time.perf_counter()
    prob = dp.load(_yaml(root, name), rtol=args.rtol, atol=args.atol)
    t_load = time.perf_counter() - t0
    m = prob.model
    Y, P = list(m.states), list(m.param_symbols)
    c = m.compiled
    free = [P[i] for i in c.free]
    rhs = list(m.rhs)
    groups = [[m.time], Y, P, [], list(m.inputs)]

    t0 = time.perf_counter()
    entry_fjp = CompiledExprs(groups, rhs + sum(jacobian_exprs(rhs, Y), [])
                              + sum(jacobian_exprs(rhs, free), []))
    entry_j = CompiledExprs(groups, sum(jacobian_exprs(rhs, Y), []), (len(Y), len(Y)))
    t_entry = time.perf_counter() - t0
    program = hasattr(symbolic, "jacobian_program")
    if program:
        t0 = time.perf_counter()
        prog_fjp = CompiledExprs(groups, rhs, wrt=[Y, free])
        prog_j = CompiledExprs(groups, rhs, (len(Y), len(Y)), wrt=[Y], values=False)
        t_prog = time.perf_counter() - t0

    # a point: states spread over (0.01, 1) times 100, parameters around their nominal 1
    rng = np.random.default_rng(0)
    points = [([0.5], list(100 * rng.uniform(0.01, 1.0, len(Y))),
               list(rng.uniform(0.5, 2.0, len(P))), [], []) for _ in range(5)]
    norm_diff = entry_diff = np.nan
    if program:
        norm_diff = entry_diff = 0.0
        for pt in points:
            a, b = entry_fjp(*pt), prog_fjp(*pt)
            norm_diff = max(norm_diff, float(np.linalg.norm(a - b) / np.linalg.norm(a)))
            scale = np.maximum(np.abs(a), 1e-300)
            entry_diff = max(entry_diff, float(np.max(np.abs(a - b) / scale)))
    fns = [c.f, entry_fjp, entry_j] + ([prog_fjp, prog_j] if program else [])
    us = _per_call(fns, points[0], max(7, args.repeats), args.calls)
    row = [name, f"{len(Y)}", f"{len(free)}", f"{t_load:.2f}", f"{us[0]:.1f}",
           f"{us[1]:.1f}", f"{us[3]:.1f}" if program else "-",
           f"{us[1] / us[3]:.2f}" if program else "-", f"{us[2]:.1f}",
           f"{us[4]:.1f}" if program else "-", f"{us[2] / us[4]:.2f}" if program else "-",
           f"{t_entry:.2f}", f"{t_prog:.2f}" if program else "-",
           f"{norm_diff:.1e}" if program else "-", f"{entry_diff:.1e}" if program else "-"]
    if args.gradient:
        x = prob.x_nominal
        forms = {"program": (c.f_y, c.f_p, c.rhs_and_jacobians)}
        if program:
            # the same model with the per-entry Jacobians in place of the program's (the
            # instance attributes shadow the compiled model's own for this run only)
            entry_p = CompiledExprs(groups, sum(jacobian_exprs(rhs, P), []), (len(Y), len(P)))
            forms["per-entry"] = (entry_j, entry_p, lambda: entry_fjp)
        times = {k: ([], []) for k in forms}
        grads = {}
        for r in range(args.repeats + 1):
            for k, (fy, fp, fjp) in forms.items():
                c.f_y, c.f_p, c.rhs_and_jacobians = fy, fp, fjp
                t0 = time.perf_counter()
                prob.nllh(x)
                t1 = time.perf_counter()
                grads[k] = prob.loss_and_grad(x)[1]
                t2 = time.perf_counter()
                if r:       # the first round compiles what the first calls compile
                    times[k][0].append(t1 - t0)
                    times[k][1].append(t2 - t1)
        del c.rhs_and_jacobians
        c.f_y, c.f_p = forms["program"][:2]
        med = {k: (statistics.median(te), statistics.median(tg)) for k, (te, tg) in times.items()}
        e, g = med["program"]
        row += [f"{e:.3g}", f"{g:.3g}", f"{g / e:.1f}"]
        if program:
            e0, g0 = med["per-entry"]
            diff = np.linalg.norm(grads["program"] - grads["per-entry"]) / np.linalg.norm(
                grads["per-entry"])
            row += [f"{e0:.3g}", f"{g0:.3g}", f"{g0 / e0:.1f}", f"{g0 / g:.2f}", f"{diff:.1e}"]
        else:
            row += ["-"] * 5
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("collection", help="the Benchmark-Models directory")
    ap.add_argument("--problems", nargs="*", default=DEFAULT)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calls", type=int, default=300, help="calls per timed batch")
    ap.add_argument("--gradient", action="store_true",
                    help="also time one likelihood and one gradient")
    ap.add_argument("--rtol", type=float, default=1e-12)
    ap.add_argument("--atol", type=float, default=1e-12)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))
    header = ["problem", "n", "n_free", "load s", "f us", "fJP per-entry us",
              "fJP program us", "ratio", "J per-entry us", "J program us", "ratio",
              "compile per-entry s", "compile program s", "rel diff (norm)",
              "max entry rel diff"]
    if args.gradient:
        header += ["eval s", "grad s", "grad/eval", "eval s per-entry", "grad s per-entry",
                   "grad/eval per-entry", "grad speed-up", "grad rel diff"]
    rows = []
    for name in args.problems:
        rows.append(run(name, args.collection, args))
        print(" ".join(rows[-1]), file=sys.stderr, flush=True)
    print_table(header, rows, args.markdown)


if __name__ == "__main__":
    main()
