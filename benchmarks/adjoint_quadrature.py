"""The PEtab adjoint's quadratures, two ways side by side: Gauss-Legendre on the backward
steps (``quadrature="gauss"``) against carrying them in LSODA's state (``"state"``), with
forward sensitivities as the reference path. ``"auto"``, the default, takes Gauss from
``dynlearn.petab.adjoint.QUADRATURE_STATE_LIMIT`` components (states plus moving
parameters) on; this script measures where that limit should lie.

Usage::

    python benchmarks/adjoint_quadrature.py [PATH/TO/Benchmark-Models --problems NAME ...]
        [--gradients benchmark-gradients.json] [--chains 30 100] [--rtol 1e-12
        --atol 1e-12] [--repeats 2] [--no-state] [--no-forward]

Per problem, in one process, interleaved ``repeats`` times (medians; the first call of
each path, which compiles, is not timed): one likelihood evaluation (the forward solve),
one likelihood and gradient by forward sensitivities, by the adjoint with its quadratures
on Gauss nodes and with them in the solver's state. Printed: the times, the ratios
``state / gauss`` and ``gradient / forward solve``, and the norm-wise relative errors of
the adjoint gradients against the forward-sensitivity one and (``--gradients``) against
AMICI's reference. The reaction chains are bench_stiff.py's, exported with
``dl.petab.save`` to a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from petab_adjoint import _rel, _yaml  # noqa: E402  (the collection's layout, one place)


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def run(label: str, yaml: str, args, reference=None) -> dict:
    import numpy as np

    import dynlearn.petab as dp
    import dynlearn.petab.adjoint as adjoint

    prob = dp.load(yaml, rtol=args.rtol, atol=args.atol)
    x = prob.x_nominal
    paths = ["gauss"] + ([] if args.no_state else ["state"])
    paths += [] if args.no_forward else ["forward"]

    default = adjoint.DEFAULT_QUADRATURE

    def call(path):
        prob.gradient = "forward" if path == "forward" else "adjoint"
        adjoint.DEFAULT_QUADRATURE = default if path == "forward" else path
        return prob.loss_and_grad(x)

    times: dict = {p: [] for p in paths + ["solve"]}
    grads = {}
    prob.nllh(x)
    for p in paths:                     # compile
        call(p)
    for _ in range(args.repeats):
        times["solve"].append(_timed(lambda: prob.nllh(x))[0])
        for p in paths:
            dt, (_, g) = _timed(lambda p=p: call(p))
            times[p].append(dt)
            grads[p] = np.asarray(g)
    adjoint.DEFAULT_QUADRATURE = default
    med = {p: statistics.median(v) for p, v in times.items()}
    row = dict(problem=label, states=len(prob.sbml.states), estimated=len(prob.x_names),
               **{f"t_{p}": med[p] for p in med})
    if "state" in med:
        row["state/gauss"] = med["state"] / med["gauss"]
    row["gauss/solve"] = med["gauss"] / med["solve"]
    if "forward" in med:
        row["forward/solve"] = med["forward"] / med["solve"]
    for p in ("gauss", "state"):
        if p in grads and "forward" in grads:
            row[f"err_{p}_vs_forward"] = _rel(grads[p], grads["forward"])
        if p in grads and reference is not None:
            ref = -np.array([reference[k] for k in prob.x_names])   # AMICI's: of the llh
            row[f"err_{p}_vs_amici"] = _rel(grads[p], ref)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("collection", nargs="?", help="the Benchmark-Models directory")
    ap.add_argument("--problems", nargs="*", default=[])
    ap.add_argument("--gradients", help="benchmark-gradients.json (AMICI)")
    ap.add_argument("--chains", type=int, nargs="*", default=[])
    ap.add_argument("--rtol", type=float, default=1e-12)
    ap.add_argument("--atol", type=float, default=1e-12)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-state", action="store_true",
                    help="skip the former quadrature (slow on large models)")
    ap.add_argument("--no-forward", action="store_true",
                    help="skip forward sensitivities (slow on large models)")
    args = ap.parse_args(argv)
    refs = json.load(open(args.gradients)) if args.gradients else {}
    cases = [(name, _yaml(args.collection, name), refs.get(name)) for name in args.problems]
    if args.chains:
        from bench_stiff import chain_problem

        import dynlearn as dl

        tmp = tempfile.mkdtemp(prefix="chains-")
        for n in args.chains:
            model, data, theta = chain_problem(n)
            yaml = dl.petab.save(model, data, os.path.join(tmp, f"chain{n}"), theta=theta,
                                 sigma=0.01)
            cases.append((f"chain{n}", str(yaml), None))
    rows = []
    for label, yaml, ref in cases:
        row = run(label, yaml, args, ref)
        rows.append(row)
        print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in row.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
