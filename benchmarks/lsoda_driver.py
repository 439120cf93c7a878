"""LSODA between output times inside the compiled solver against ``solve_ivp``'s
step-by-step LSODA, on PEtab collection problems: the same evaluations, side by side.

    python benchmarks/lsoda_driver.py COLLECTION_DIR --problems Bruno_JExpBot2016 \
        Rahman_MBS2016 Fiedler_BMCSystBiol2016 [--points 7] [--rounds 3]

COLLECTION_DIR is the collection's ``Benchmark-Models`` folder. At the nominal parameters
and ``--points - 1`` starts of a fit (``dynlearn.petab.fitting.draw_starts``, seed 0), each
round times the likelihood alone (``nllh``) and with sensitivities (``fisher_system``)
under both drivers (``dynlearn.solve.LSODA_BETWEEN_OUTPUTS``), alternating, and prints per
problem the ratio of the medians over rounds (between outputs / solve_ivp) and the largest
differences of the values (the steps are the same, so they differ by interpolation
rounding only).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("collection", type=Path)
    ap.add_argument("--problems", nargs="+", required=True)
    ap.add_argument("--points", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    from petab_fits import problem_file

    import dynlearn.petab as dp
    import dynlearn.solve as solve
    from dynlearn.errors import SolveError
    from dynlearn.petab.fitting import draw_starts

    print(f"load average at the start: {os.getloadavg()[0]:.1f}")
    print("| problem | nllh ms solve_ivp | nllh ms between outputs | ratio | with sensitivities "
          "ms solve_ivp | between outputs | ratio | max nllh diff | max gradient rel diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.problems:
        prob = dp.load(problem_file(args.collection, name))
        xs = [prob.x_nominal] + list(draw_starts(prob, max(args.points - 1, 1), 0))
        xs = xs[:args.points]
        prob.fisher_system(prob.x_nominal)          # compile

        def usable(x, prob=prob):
            try:
                prob.nllh(x)
                prob.fisher_system(x)
                return True
            except SolveError:        # a start where the model cannot be solved
                return False
        dropped = len(xs)
        xs = [x for x in xs if usable(x)]
        dropped -= len(xs)
        times = {False: ([], []), True: ([], [])}
        out = {}
        for _ in range(args.rounds):
            for between in (False, True):
                solve.LSODA_BETWEEN_OUTPUTS = between
                t = time.perf_counter()
                f = [prob.nllh(x) for x in xs]
                times[between][0].append(time.perf_counter() - t)
                t = time.perf_counter()
                sys_ = [prob.fisher_system(x) for x in xs]
                times[between][1].append(time.perf_counter() - t)
                out[between] = (f, [s[1] for s in sys_])
        solve.LSODA_BETWEEN_OUTPUTS = True
        med = {k: [np.median(v) / len(xs) * 1e3 for v in times[k]] for k in times}
        df = max(abs(a - b) / max(1.0, abs(a)) for a, b in zip(out[False][0], out[True][0]))
        dg = max(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-300)
                 for a, b in zip(out[False][1], out[True][1]))
        print(f"| {name} | {med[False][0]:.1f} | {med[True][0]:.1f} | "
              f"{med[True][0] / med[False][0]:.2f} | {med[False][1]:.1f} | {med[True][1]:.1f} | "
              f"{med[True][1] / med[False][1]:.2f} | {df:.1e} | {dg:.1e} |"
              + (f" ({dropped} of the points cannot be solved)" if dropped else ""), flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
