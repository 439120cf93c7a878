"""Multi-start fits of PEtab benchmark-collection problems: how many starts reach the
published optimum, by optimizer, side by side on the same starts.

    python benchmarks/petab_fits.py COLLECTION_DIR --problems Bertozzi_PNAS2020 \
        Giordano_Nature2020 --starts 10 [--optimizers fisher lbfgsb] [--seed 0]

COLLECTION_DIR is the collection's ``Benchmark-Models`` folder (one folder per problem,
holding ``NAME.yaml`` or ``problem.yaml``). The target is the negative log-likelihood at the
collection's nominal parameters (the published optimum): a start "reaches" it when it ends
at most 0.1 above. Each optimizer runs the same starts (drawn uniformly on the parameters'
scales within the bounds, by ``dynlearn.petab.fitting.draw_starts``), one after the other
in this process, so their times are measured side by side. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np


def problem_file(collection: Path, name: str) -> Path:
    """The YAML file of problem ``name`` in the collection."""
    for cand in (collection / name / f"{name}.yaml", collection / name / "problem.yaml"):
        if cand.exists():
            return cand
    raise SystemExit(f"{name}: no {name}.yaml or problem.yaml in {collection / name}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("collection", type=Path)
    ap.add_argument("--problems", nargs="+", required=True)
    ap.add_argument("--starts", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--optimizers", nargs="+", default=["fisher", "lbfgsb"])
    ap.add_argument("--maxiter", type=int, default=2000)
    ap.add_argument("--max-time", type=float, default=None,
                    help="budget of each fit (one problem, one optimizer) in seconds")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import dynlearn.petab as dp
    from dynlearn.petab.fitting import draw_starts

    print(f"load average at the start: {os.getloadavg()[0]:.1f}")
    print("| problem | n_x | starts | optimizer | reached nominal+0.1 | best - nominal | "
          "converged | time/start s | evals/start | t_grad s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.problems:
        prob = dp.load(problem_file(args.collection, name))
        nominal = prob.nllh(prob.x_nominal)
        t = time.perf_counter()
        prob.loss_and_grad(prob.x_nominal)
        t_grad = time.perf_counter() - t
        starts = draw_starts(prob, args.starts, args.seed)
        for opt in args.optimizers:
            t = time.perf_counter()
            fit = prob.fit(starts=starts, optimizer=opt, maxiter=args.maxiter,
                           max_time=args.max_time, prior=False)
            wall = time.perf_counter() - t
            ran = [r for r in fit.runs if r["status"] != "not run"]
            reached = sum(r["fun"] <= nominal + 0.1 for r in ran)
            conv = sum(r["status"] == "converged" for r in ran)
            evals = np.mean([r["n_eval"] for r in ran]) if ran else float("nan")
            print(f"| {name} | {len(prob.x_names)} | {len(ran)} | {opt} | {reached} | "
                  f"{fit.fun - nominal:+.4g} | {conv} | {wall / max(len(ran), 1):.2f} | "
                  f"{evals:.0f} | {t_grad:.3f} |", flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
