"""Where the PEtab adjoint's backward pass goes, and the quadrature's two ways of evaluating
``df/dtheta`` side by side (issue #15; ``dynlearn.petab.adjoint``).

Usage::

    python benchmarks/adjoint_backward.py PATH/TO/Benchmark-Models \\
        [--problems Lang_PLOSComputBiol2024] [--rtol 1e-12 --atol 1e-12] [--repeats 1]
        [--save DIR]

Per problem, in one process on one BLAS thread (as PEtab evaluations run): one likelihood
evaluation (the forward solve), then the adjoint gradient (``quadrature="gauss"``)
alternately

* ``pieces``: ``df/dtheta`` at ``QUADRATURE_NODES`` Gauss nodes of every piece of the
  backward and forward interpolants (the former way; ``FORWARD_NODES`` set out of reach);
* ``forward``: on forward steps holding many backward steps, ``df/dtheta`` at
  ``FORWARD_NODES`` nodes of the forward step, interpolated (the default).

The first gradient (compiling) is not timed. Printed: times (medians), the points at which
``df/dtheta`` was evaluated, and the relative difference of the two gradients (norm-wise,
and entry-wise over the entries above 1e-12 of the largest). (The step counts of
docs/solvers.md, "The backward pass after each jump of lambda", came from a replay of the
captured backward intervals, not from this script.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from petab_adjoint import _yaml  # noqa: E402  (the collection's layout, one place)


def run(name: str, yaml: str, args) -> None:
    import numpy as np

    import dynlearn.petab as dp
    import dynlearn.petab.adjoint as adjoint
    from dynlearn.core.vectorfield import VectorField

    counts = {"points": 0}
    plain = VectorField.theta_vjp_points

    def counted(self, T, Y, C, *a, **kw):
        counts["points"] += len(T)
        return plain(self, T, Y, C, *a, **kw)

    VectorField.theta_vjp_points = counted
    adjoint.DEFAULT_QUADRATURE = "gauss"
    default_nodes = adjoint.FORWARD_NODES
    t = time.perf_counter()
    prob = dp.load(yaml, rtol=args.rtol, atol=args.atol, gradient="adjoint")
    print(f"{name}: loaded in {time.perf_counter() - t:.1f} s", flush=True)
    x = prob.x_nominal
    t = time.perf_counter()
    prob.nllh(x)
    t_eval = time.perf_counter() - t

    def gradient(way):
        adjoint.FORWARD_NODES = default_nodes if way == "forward" else 2 ** 62
        counts["points"] = 0
        t = time.perf_counter()
        _, g = prob.loss_and_grad(x)
        return time.perf_counter() - t, np.asarray(g), counts["points"]

    t_first = gradient("forward")[0]
    print(f"  evaluation {t_eval:.2f} s; first gradient (compiling) {t_first:.1f} s",
          flush=True)
    times: dict = {"pieces": [], "forward": []}
    out = {}
    for _ in range(args.repeats):
        for way in ("pieces", "forward"):
            dt, g, pts = gradient(way)
            times[way].append(dt)
            out[way] = (g, pts)
            print(f"  {way:8s} gradient {dt:7.1f} s, df/dtheta at {pts:,} points",
                  flush=True)
    adjoint.FORWARD_NODES = default_nodes
    VectorField.theta_vjp_points = plain
    ga, gb = out["pieces"][0], out["forward"][0]
    if args.save:
        np.savez(os.path.join(args.save, f"{name}.npz"), pieces=ga, forward=gb, x=x)
    rel = float(np.linalg.norm(gb - ga) / np.linalg.norm(ga))
    # entry-wise: at a published optimum most entries are small against the largest,
    # and the quadrature's share is in those (all entries above 1e-12 of the largest)
    big = np.abs(ga) > 1e-12 * np.abs(ga).max()
    ent = float(np.max(np.abs(gb - ga)[big] / np.abs(ga)[big]))
    print(f"  entries compared {int(big.sum())} of {ga.size}; their relative differences: "
          f"median {np.median(np.abs(gb - ga)[big] / np.abs(ga)[big]):.1e}", flush=True)
    med = {w: statistics.median(v) for w, v in times.items()}
    print(f"| {name} | {med['pieces']:.1f} | {med['forward']:.1f} | "
          f"{med['pieces'] / med['forward']:.2f} | {out['pieces'][1]:,} | "
          f"{out['forward'][1]:,} | {rel:.1e} | {ent:.1e} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("collection")
    ap.add_argument("--problems", nargs="+", default=["Lang_PLOSComputBiol2024"])
    ap.add_argument("--rtol", type=float, default=1e-12)
    ap.add_argument("--atol", type=float, default=1e-12)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--save", help="a directory for the two gradients (npz per problem)")
    args = ap.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    print("| problem | gradient s: pieces | forward | pieces / forward | df/dtheta points: "
          "pieces | forward | gradient difference: norm | largest entry |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.problems:
        run(name, _yaml(args.collection, name), args)


if __name__ == "__main__":
    main()
