"""The PEtab SciML test suite's hybrid problems through dl.petab: likelihood, simulations and
gradient at the nominal parameters against the suite's references.

Usage::

    python benchmarks/petab_sciml_suite.py TESTCASES_DIR [--cases 001 002 ...]
        [--rtol 1e-9 --atol 1e-12 --method LSODA] [--sensitivity forward|adjoint]
        [--markdown]
        [--initialization INIT_DIR]

``TESTCASES_DIR`` is the suite's ``test_cases/sciml_problem_import`` directory (each case
``NNN/`` holds ``petab/problem.yaml`` and ``solutions.yaml``); nothing is copied.

One row per case:

* ``status``: ``ok`` (every check within the case's tolerances), ``failing`` (the checks
  that fail named), or the error (an unsupported feature is named by dynlearn's
  ``PetabError``);
* ``|nllh-ref|``: against ``-llh`` (or ``-log_posterior`` when the case has priors: then
  the objective is dynlearn's ``objective``, the negative log-posterior), tolerance
  ``tol_llh`` (or ``tol_log_posterior``);
* ``sim err``: the largest ``|simulated - reference|`` over the measurement table's rows,
  tolerance ``tol_simulations``;
* ``grad err``: the largest ``|g_i - g_ref_i|`` over the estimated parameters (the
  reference is the gradient of the log-likelihood, so ``g_ref = -grad``), tolerance
  ``tol_grad`` (elementwise, as the suite prescribes); ``grad rel``: ``||g - g_ref|| /
  ||g_ref||``;
* ``t``: import plus one objective-and-gradient evaluation plus one simulation (s).

With ``--initialization`` (the suite's ``test_cases/initialization`` directory) a second
table compares the networks' nominal weights (frozen layers and layers set to a number in
the parameter table) with the reference parameter files.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _table import print_table  # noqa: E402


def _reference_gradient(case_dir: str, sol: dict, prob) -> tuple[np.ndarray, list[str]]:
    """The suite's gradient (of the log-likelihood) laid out as ``prob.x_names``; entries
    that it lacks are NaN. Also the reference entries that ``x`` lacks (non-empty ones)."""
    import h5py
    import pandas as pd

    index = {k: i for i, k in enumerate(prob.x_names)}
    g = np.full(len(prob.x_names), np.nan)
    extra = []
    files = sol.get("grad_files") or {}
    if "mech" in files:
        gm = pd.read_csv(os.path.join(case_dir, files["mech"]), sep="\t")
        for pid, v in zip(gm["parameterId"], gm["value"]):
            if str(pid) in index:
                g[index[str(pid)]] = float(v)
            else:
                extra.append(str(pid))
    for net, fname in files.items():
        if net == "mech":
            continue
        with h5py.File(os.path.join(case_dir, fname), "r") as fh:
            for lid, grp in fh["parameters"][net].items():
                for arr, ds in grp.items():
                    for k, v in enumerate(np.asarray(ds[()], dtype=float).ravel()):
                        name = f"{net}.{lid}.{arr}[{k}]"
                        if name in index:
                            g[index[name]] = v
                        else:
                            extra.append(name)
    return g, extra


def run_case(case_dir: str, options: dict) -> dict:
    import pandas as pd
    import yaml

    import dynlearn as dl
    from dynlearn.errors import DynlearnError

    with open(os.path.join(case_dir, "solutions.yaml"), encoding="utf-8") as fh:
        sol = yaml.safe_load(fh)
    row = dict(case=os.path.basename(case_dir.rstrip("/")), status="", dllh=math.nan,
               sim=math.nan, grad=math.nan, grad_rel=math.nan, t=math.nan, n_x=0)
    t0 = time.perf_counter()
    try:
        prob = dl.petab.load(os.path.join(case_dir, "petab", "problem.yaml"), **options)
        x = prob.x_nominal
        f, g = prob.objective(x) if hasattr(prob, "objective") else prob.loss_and_grad(x)
        sim = prob.simulate(x)
    except (DynlearnError, NotImplementedError) as exc:
        row["status"] = f"{type(exc).__name__}: {exc}"[:160]
        return row
    row["t"] = time.perf_counter() - t0
    row["n_x"] = len(x)
    fails = []
    if "log_posterior" in sol:
        ref, tol = -float(sol["log_posterior"]), float(sol["tol_log_posterior"])
    else:
        ref, tol = -float(sol["llh"]), float(sol["tol_llh"])
    row["dllh"] = abs(f - ref)
    if not row["dllh"] <= tol:
        fails.append("llh")
    ref_sim = pd.concat([pd.read_csv(os.path.join(case_dir, s), sep="\t")
                         for s in sol["simulation_files"]], ignore_index=True)
    row["sim"] = float(np.max(np.abs(sim - ref_sim["simulation"].to_numpy(dtype=float))))
    if not row["sim"] <= float(sol["tol_simulations"]):
        fails.append("simulations")
    gref, extra = _reference_gradient(case_dir, sol, prob)
    gref = -gref                        # the suite's gradient is of the log-likelihood
    have = ~np.isnan(gref)
    if have.any():
        row["grad"] = float(np.max(np.abs(g[have] - gref[have])))
        row["grad_rel"] = float(np.linalg.norm(g[have] - gref[have])
                                / max(np.linalg.norm(gref[have]), 1e-300))
    if not row["grad"] <= float(sol["tol_grad"]):
        fails.append("gradient")
    if (~have).any():
        fails.append(f"{int((~have).sum())} estimated parameters without a reference gradient")
    if extra:
        fails.append(f"reference gradient for {len(extra)} entries not estimated "
                     f"(e.g. {extra[0]})")
    row["status"] = "ok" if not fails else "failing: " + ", ".join(fails)
    return row


def run_initialization_case(case_dir: str) -> dict:
    """An ``initialization`` case: the networks' nominal weights against the reference
    parameter files (``solutions.yaml``: ``parameter_files``, ``tol``)."""
    import yaml

    import dynlearn as dl
    from dynlearn.errors import DynlearnError
    from dynlearn.petab.networks import read_parameters

    with open(os.path.join(case_dir, "solutions.yaml"), encoding="utf-8") as fh:
        sol = yaml.safe_load(fh)
    row = dict(case=os.path.basename(case_dir.rstrip("/")), status="", err=math.nan,
               t=math.nan)
    t0 = time.perf_counter()
    try:
        prob = dl.petab.load(os.path.join(case_dir, "petab", "problem.yaml"))
        weights = prob.weights(prob.x_nominal)
        errs = []
        for net, fname in sol["parameter_files"].items():
            ref = read_parameters(os.path.join(case_dir, fname), prob.networks[net])
            errs.append(float(np.max(np.abs(weights[net] - ref))))
    except DynlearnError as exc:
        row["status"] = f"{type(exc).__name__}: {exc}"[:160]
        return row
    row["t"] = time.perf_counter() - t0
    row["err"] = max(errs)
    row["status"] = "ok" if row["err"] <= float(sol["tol"]) else "failing: weights"
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("testcases", help="the suite's test_cases/sciml_problem_import directory")
    ap.add_argument("--cases", nargs="*", help="case ids (default: all)")
    ap.add_argument("--rtol", type=float, default=1e-9)
    ap.add_argument("--atol", type=float, default=1e-12)
    ap.add_argument("--method", default="LSODA")
    ap.add_argument("--sensitivity", choices=["forward", "adjoint"], default="forward",
                    help="gradient method of the experiments (default forward)")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--initialization", metavar="DIR",
                    help="also run the suite's test_cases/initialization cases from DIR")
    args = ap.parse_args(argv)
    cases = args.cases or sorted(d for d in os.listdir(args.testcases)
                                 if os.path.isfile(os.path.join(args.testcases, d,
                                                                "solutions.yaml")))
    import dynlearn as dl

    options = dict(rtol=args.rtol, atol=args.atol, method=args.method,
                   sensitivity=(dl.Adjoint() if args.sensitivity == "adjoint"
                                else dl.ForwardSensitivity()))
    rows = []
    t_all = time.perf_counter()
    for c in cases:
        r = run_case(os.path.join(args.testcases, c), options)
        rows.append(r)
        print(f"# {r['case']}: {r['status']} ({r['t']:.1f} s)", file=sys.stderr, flush=True)

    def fmt(v, spec=".1e"):
        return "-" if v != v else format(v, spec)

    table = [[r["case"], r["status"], str(r["n_x"]), fmt(r["dllh"]), fmt(r["sim"]),
              fmt(r["grad"]), fmt(r["grad_rel"]), fmt(r["t"], ".1f")] for r in rows]
    print_table(["case", "status", "n x", "|nllh-ref|", "sim err", "grad err", "grad rel",
                 "t (s)"], table, args.markdown)
    n_ok = sum(r["status"] == "ok" for r in rows)
    print(f"\n{n_ok} of {len(rows)} pass (rtol {args.rtol:g}, atol {args.atol:g}, "
          f"{args.method}, {args.sensitivity} sensitivities; "
          f"total {time.perf_counter() - t_all:.0f} s)")
    n_init = n_init_ok = 0
    if args.initialization:
        init = [run_initialization_case(os.path.join(args.initialization, c))
                for c in sorted(os.listdir(args.initialization))
                if os.path.isfile(os.path.join(args.initialization, c, "solutions.yaml"))]
        print()
        print_table(["initialization case", "status", "max |w - w_ref|", "t (s)"],
                    [[r["case"], r["status"], fmt(r["err"]), fmt(r["t"], ".1f")]
                     for r in init], args.markdown)
        n_init, n_init_ok = len(init), sum(r["status"] == "ok" for r in init)
        print(f"\n{n_init_ok} of {n_init} initialization cases pass")
    return 0 if n_ok == len(rows) and n_init_ok == n_init else 1


if __name__ == "__main__":
    sys.exit(main())
