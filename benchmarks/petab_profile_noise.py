"""Fits of PEtab collection problems with the noise parameters profiled out and not, start by
start, alternating in one process (dynlearn.petab.hierarchical; FisherSettings.profile_noise).

    python benchmarks/petab_profile_noise.py COLLECTION_DIR --problem Fiedler_BMCSystBiol2016 \
        --starts 8 [--seed 0] [--first 1] [--max-time 300] [--optimizer fisher]

COLLECTION_DIR is the collection's ``Benchmark-Models`` folder. The starts are
``draw_starts(problem, 20, seed)`` (uniform on the scales within the bounds), of which
``--starts`` are run from ``--first`` on; each start runs with profiling on, then off, on the
same problem object (rtol 1e-8, atol 1e-12), each with its own wall-clock limit
``--max-time``. Prints a markdown table per start (end nllh, iterations, solves with
sensitivities, all solves, seconds) and the totals with their ratios.

``--check`` instead evaluates the nominal point and the first starts with and without
profiling: the likelihood before and after, the times of a plain evaluation, a profiled
one, a gradient and a profiled gradient, and the largest gradient entry of the noise
parameters inside their bounds at the profiled point (0 at the inner optimum).
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
    ap.add_argument("--problem", required=True)
    ap.add_argument("--starts", type=int, default=8)
    ap.add_argument("--first", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-time", type=float, default=300.0)
    ap.add_argument("--maxiter", type=int, default=2000)
    ap.add_argument("--optimizer", default="fisher", choices=["fisher", "lbfgsb"])
    ap.add_argument("--check", action="store_true",
                    help="evaluate the profiling at the nominal point and --starts starts")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import dynlearn.petab as dp
    from dynlearn.petab.fitting import FisherSettings, draw_starts, fit_one_start

    d = args.collection / args.problem
    yaml = next(p for p in (d / f"{args.problem}.yaml", d / "problem.yaml") if p.exists())
    prob = dp.load(yaml, rtol=1e-8, atol=1e-12)
    nominal = prob.nllh(prob.x_nominal)
    starts = draw_starts(prob, 20, seed=args.seed)
    print(f"{args.problem}: {len(prob.x_names)} estimated, noise-only "
          f"{[prob.x_names[i] for i in prob.noise_only]}, nllh at nominal {nominal:.4f}; "
          f"load average {os.getloadavg()[0]:.1f}")
    if args.check:
        return check(prob, [prob.x_nominal, *starts[args.first:args.first + args.starts]])
    print("| start | profiled: status | nllh | iterations | sens. solves | solves | s "
          "| not profiled: status | nllh | iterations | sens. solves | solves | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    tot = {True: np.zeros(4), False: np.zeros(4)}
    ends = {True: [], False: []}
    for k in range(args.first, args.first + args.starts):
        cells = []
        for on in (True, False):
            deadline = time.time() + args.max_time
            r = fit_one_start((k, starts[k]), prob, args.optimizer, args.maxiter,
                              FisherSettings(profile_noise=on), posterior=False,
                              max_time=args.max_time, deadline=deadline)
            tot[on] += [r["nit"], r["n_sens"], r["n_eval"], r["time"]]
            ends[on].append(r["fun"])
            cells.append(f"{r['reason']} | {r['fun']:.4f} | {r['nit']} | {r['n_sens']} | "
                         f"{r['n_eval']} | {r['time']:.1f}")
        print(f"| {k} | " + " | ".join(cells) + " |", flush=True)
    on, off = tot[True], tot[False]
    print(f"\ntotals, profiled: {on[0]:.0f} iterations, {on[1]:.0f} solves with sensitivities, "
          f"{on[2]:.0f} solves, {on[3]:.1f} s; not profiled: {off[0]:.0f}, {off[1]:.0f}, "
          f"{off[2]:.0f}, {off[3]:.1f} s")
    print(f"ratios profiled / not: iterations {on[0] / off[0]:.2f}, sensitivity solves "
          f"{on[1] / off[1]:.2f}, time {on[3] / off[3]:.2f}")
    for flag, name in ((True, "profiled"), (False, "not profiled")):
        e = np.array(ends[flag])
        print(f"{name}: best {e.min():.4f}, median {np.median(e):.4f}, within 0.1 of the best "
              f"of both {int(np.sum(e <= min(map(min, ends.values())) + 0.1))}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


def check(prob, points) -> int:
    """The ``--check`` table (see the module notes)."""
    z = list(prob.noise_only)

    def timed(fn, x):
        t = time.perf_counter()
        out = fn(x)
        return out, time.perf_counter() - t

    print("| point | nllh | profiled nllh | plain s | profiled s | gradient s | profiled "
          "gradient s | max noise-gradient inside | noise parameters on a bound |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k, x in enumerate(points):
        f0, t0 = timed(prob.nllh, x)
        (f1, _), t1 = timed(prob.profiled_nllh, x)
        _, t2 = timed(prob.loss_and_grad, x)
        (_, g, xp), t3 = timed(prob.profiled_loss_and_grad, x)
        inside = (xp[z] > prob.lower[z]) & (xp[z] < prob.upper[z])
        gz = float(np.abs(g[z])[inside].max()) if inside.any() else 0.0
        print(f"| {'nominal' if k == 0 else f'start {k}'} | {f0:.6g} | {f1:.6g} | {t0:.3f} | "
              f"{t1:.3f} | {t2:.3f} | {t3:.3f} | {gz:.1e} | {int((~inside).sum())} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
