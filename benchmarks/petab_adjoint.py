"""PEtab gradients side by side: forward sensitivities (the old path) and the adjoint
(dynlearn.petab.adjoint), on problems of the PEtab benchmark collection.

Usage::

    python benchmarks/petab_adjoint.py PATH/TO/Benchmark-Models \\
        --gradients benchmark-gradients.json [--references benchmark-references.tsv] \\
        [--problems NAME ...] [--rtol 1e-12 --atol 1e-12] [--repeats 3]

Per problem, in one process: one likelihood evaluation (``t_eval``) and one likelihood and
gradient by each of ``gradient="forward"`` (old) and ``"adjoint"``, interleaved
``repeats`` times (medians; the first call of each, which compiles, is not timed).
Printed: the sizes that decide ``gradient="auto"`` (states, directions, measurement times)
and what it takes, the times, ``grad / eval`` for each, the norm-wise relative error of
each gradient against AMICI's reference and of the adjoint against the forward one at the
same tolerances.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def _yaml(root: str, name: str) -> str:
    d = os.path.join(root, name)
    for cand in (f"{name}.yaml", "problem.yaml"):
        if os.path.exists(os.path.join(d, cand)):
            return os.path.join(d, cand)
    raise FileNotFoundError(f"no YAML file for {name} in {d}")


def _rel(a, b) -> float:
    import numpy as np

    nb = float(np.linalg.norm(b))
    return float(np.linalg.norm(a - b) / nb) if nb > 0 else float(np.linalg.norm(a))


def run(root: str, name: str, grads: dict, refs: dict, rtol: float, atol: float,
        repeats: int) -> dict:
    import numpy as np

    import dynlearn.petab as dp

    prob = dp.load(_yaml(root, name), rtol=rtol, atol=atol)
    x = prob.x_nominal
    auto = "adjoint" if prob._use_adjoint() else "forward"
    moving = set()      # as PetabProblem._use_adjoint counts them
    for src, init in prob._cond.values():
        moving.update(s.index for k, s in src.items() if k in prob._vidx and s.index >= 0)
        moving.update(s.index for s in init.values() if s is not None and s.index >= 0)
    out = dict(problem=name, states=len(prob.sbml.states), estimated=len(prob.x_names),
               auto=auto, directions=len(moving),
               times=sum(s["times"].size for s in prob._sims))
    g = {}
    modes = ("forward", "adjoint")
    times = {"eval": [], **{m: [] for m in modes}}
    for mode in modes:        # compile, and the gradients compared
        prob.gradient = mode
        _, g[mode] = prob.loss_and_grad(x)
    prob.nllh(x)
    for _ in range(repeats):
        t0 = time.perf_counter()
        prob.nllh(x)
        times["eval"].append(time.perf_counter() - t0)
        for mode in modes:
            prob.gradient = mode
            t0 = time.perf_counter()
            prob.loss_and_grad(x)
            times[mode].append(time.perf_counter() - t0)
    for k, v in times.items():
        out[f"t_{k}"] = statistics.median(v)
    ref = grads.get(name)
    if ref:
        r = -np.array([ref.get(k, 0.0) for k in prob.x_names])    # references: d llh
        for m in modes:
            out[f"err_{m}_amici"] = _rel(g[m], r)
    for m in modes[1:]:
        out[f"err_{m}_fwd"] = _rel(g[m], g["forward"])
    row = refs.get(name)
    if row is not None:
        out["amici_grad_ms"] = float(row["t_grad_ms"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("collection", help="the Benchmark-Models directory")
    ap.add_argument("--gradients", help="benchmark-gradients.json (AMICI)")
    ap.add_argument("--references", help="benchmark-references.tsv (AMICI's times)")
    ap.add_argument("--problems", nargs="*", default=[
        "Borghans_BiophysChem1997", "Raia_CancerResearch2011", "Brannmark_JBC2010",
        "Laske_PLOSComputBiol2019", "Bachmann_MSB2011"])
    ap.add_argument("--rtol", type=float, default=1e-12)
    ap.add_argument("--atol", type=float, default=1e-12)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    grads = json.load(open(args.gradients)) if args.gradients else {}
    refs = {}
    if args.references:
        import pandas as pd

        refs = {r["problem"]: r for _, r in pd.read_csv(args.references, sep="\t").iterrows()}
    print(f"# rtol {args.rtol:g}, atol {args.atol:g}, medians of {args.repeats}; "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    print("| problem | states x directions / times | auto takes | eval s | grad s: forward | "
          "adjoint | speed-up | grad/eval: fwd | adj | AMICI grad ms | best / AMICI | "
          "err vs AMICI: fwd | adj | adj vs fwd |")
    print("|---" * 14 + "|")
    for name in args.problems:
        try:
            o = run(args.collection, name, grads, refs, args.rtol, args.atol, args.repeats)
        except Exception as exc:     # a benchmark reports every failure in its row
            print(f"| {name} | failed: {type(exc).__name__}: {exc} |", flush=True)
            continue
        am = o.get("amici_grad_ms")
        best = min(o["t_forward"], o["t_adjoint"])
        best_am = f"{1000 * best / am:.3g}" if am else ""

        def e(k, o=o):
            return f"{o[k]:.1e}" if k in o else ""
        te = o["t_eval"]
        print(f"| {name} | {o['states']} x {o['directions']} / {o['times']} = "
              f"{o['states'] * o['directions'] / max(o['times'], 1):.2g} | {o['auto']} | "
              f"{te:.3g} | {o['t_forward']:.3g} | {o['t_adjoint']:.3g} | "
              f"{o['t_forward'] / o['t_adjoint']:.2g} | {o['t_forward'] / te:.3g} | "
              f"{o['t_adjoint'] / te:.3g} | {am if am else ''} | {best_am} | "
              f"{e('err_forward_amici')} | {e('err_adjoint_amici')} | "
              f"{e('err_adjoint_fwd')} |", flush=True)
    print(f"# load {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
