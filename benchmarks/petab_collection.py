"""The PEtab benchmark collection through dl.petab: import, likelihood and gradient at the
nominal parameters against AMICI's references.

Usage::

    python benchmarks/petab_collection.py PATH/TO/Benchmark-Models \\
        [--references benchmark-references.tsv] [--gradients benchmark-gradients.json] \\
        [--problems NAME ...] [--timeout 300] [--rtol 1e-9 --atol 1e-12] [--method LSODA]

One row per problem (each runs in its own process, with a time limit):

* ``status``: ``ok``, or the named unsupported feature / the error;
* ``nllh`` and ``ref``: dynlearn's negative log-likelihood and AMICI's (``-llh``), and
  ``|diff|`` (target: below 1e-3);
* ``grad rel``: ``||g - g_ref|| / ||g_ref||`` over the estimated parameters, and
  ``max rel``: the largest ``|g_i - g_ref_i| / max(|g_ref_i|, 1e-3 max|g_ref|)``
  (target: below 1e-3);
* ``t_import``: loading the problem (SBML to sympy, tables); ``t_first``: the first
  likelihood and gradient, which compile the model's functions;
* ``t_eval``, ``t_grad``: wall time of one more likelihood and one more likelihood+gradient
  evaluation (s), beside AMICI's (``t_sim_ms``, ``t_grad_ms`` of the reference table, run at
  rtol = atol = 1e-12 on a similar shared machine), and the ratios dynlearn / AMICI.

The collection and the references are read from the paths given; nothing is copied.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time
import traceback


def _problem_yaml(root: str, name: str) -> str:
    d = os.path.join(root, name)
    for cand in (f"{name}.yaml", "problem.yaml"):
        if os.path.exists(os.path.join(d, cand)):
            return os.path.join(d, cand)
    ys = sorted(f for f in os.listdir(d) if f.endswith((".yaml", ".yml")))
    if not ys:
        raise FileNotFoundError(f"no YAML file in {d}")
    return os.path.join(d, ys[0])


def _run_one(yaml_path: str, ref_grad: dict | None, opts: dict, queue) -> None:
    import numpy as np

    import dynlearn.petab as dp
    from dynlearn.errors import DynlearnError, SolveError

    out: dict = {}
    try:
        t0 = time.perf_counter()
        prob = dp.load(yaml_path, **opts)
        out["t_import"] = time.perf_counter() - t0
        x = prob.x_nominal
        # the first calls compile the model's functions (sympy -> numpy), timed apart
        t0 = time.perf_counter()
        # as the references were made: when the solver fails, loosen the tolerances to
        # 1e-10, then 1e-8 (the row says which were used)
        tols = [(prob.rtol, prob.atol), (1e-10, 1e-10), (1e-8, 1e-8)]
        for i, (rtol, atol) in enumerate(tols):
            prob.rtol, prob.atol = rtol, atol
            try:
                out["nllh"] = prob.nllh(x)
                _, g = prob.loss_and_grad(x)
                break
            except SolveError:
                if i == len(tols) - 1:
                    raise
        out["tol"] = f"{prob.rtol:g}"
        out["t_first"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        prob.nllh(x)
        out["t_eval"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        prob.loss_and_grad(x)
        out["t_grad"] = time.perf_counter() - t0
        if ref_grad:
            # the references are d llh / d theta; ours is d nllh / d theta
            r = -np.array([ref_grad.get(k, 0.0) for k in prob.x_names])
            nr = np.linalg.norm(r)
            out["grad_rel"] = float(np.linalg.norm(g - r) / nr) if nr > 0 else float(
                np.linalg.norm(g))
            den = np.maximum(np.abs(r), 1e-3 * np.max(np.abs(r)) if r.size else 1.0)
            out["grad_max_rel"] = float(np.max(np.abs(g - r) / den)) if r.size else 0.0
        out["status"] = "ok" if out["tol"] == f"{opts['rtol']:g}" else f"ok (tol {out['tol']})"
        paths = getattr(prob, "steady_state_paths", None)
        if paths:      # how the steady states were found (path/sensitivity: count)
            out["status"] += " [" + ", ".join(f"{k} {v}" for k, v in sorted(paths.items())) + "]"
    except DynlearnError as exc:
        out["status"] = f"{type(exc).__name__}: {exc}"
    except Exception as exc:   # a benchmark reports every failure in its row
        out["status"] = f"{type(exc).__name__}: {exc}"
        out["trace"] = traceback.format_exc(limit=4)
    queue.put(out)


def _read_refs(path: str | None) -> dict:
    if not path:
        return {}
    import pandas as pd

    df = pd.read_csv(path, sep="\t")
    return {r["problem"]: r for _, r in df.iterrows()}


def _ratio(t_s, ref, col: str):
    """dynlearn's time (s) over AMICI's (ms, from the reference table: another machine)."""
    try:
        amici = float(ref[col]) if ref is not None else math.nan
    except (KeyError, TypeError, ValueError):
        amici = math.nan
    if t_s is None or not amici > 0:
        return None
    return 1000.0 * t_s / amici


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("collection", help="the Benchmark-Models directory")
    ap.add_argument("--references", help="benchmark-references.tsv (AMICI)")
    ap.add_argument("--gradients", help="benchmark-gradients.json (AMICI)")
    ap.add_argument("--problems", nargs="*", help="only these problems")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per problem")
    ap.add_argument("--rtol", type=float, default=1e-9)
    ap.add_argument("--atol", type=float, default=1e-12)
    ap.add_argument("--method", help="solver method (default: dl.petab's)")
    ap.add_argument("--preequilibration", choices=("newton", "simulation"),
                    help="steady states by Newton with a simulation fallback (default) or "
                         "by simulation only (the former path)")
    args = ap.parse_args(argv)

    refs = _read_refs(args.references)
    grads = json.load(open(args.gradients)) if args.gradients else {}
    names = args.problems or sorted(d for d in os.listdir(args.collection)
                                    if os.path.isdir(os.path.join(args.collection, d)))
    opts = dict(rtol=args.rtol, atol=args.atol)
    if args.method:
        opts["method"] = args.method
    if args.preequilibration:
        opts["preequilibration"] = args.preequilibration
    header = ("| problem | status | nllh | ref nllh | abs diff | grad rel | max rel | "
              "t_import s | t_first s | t_eval s | t_grad s | AMICI t_sim ms | AMICI t_grad ms | "
              "eval / AMICI | grad / AMICI |")
    print(header)
    print("|" + "---|" * 15)
    n_ok = n_match = 0
    ctx = mp.get_context("spawn")
    for name in names:
        try:
            yaml_path = _problem_yaml(args.collection, name)
        except FileNotFoundError as exc:
            print(f"| {name} | {exc} |" + " |" * 13)
            continue
        q = ctx.Queue()
        p = ctx.Process(target=_run_one, args=(yaml_path, grads.get(name), opts, q))
        p.start()
        p.join(args.timeout)
        if p.is_alive():
            p.terminate()
            p.join()
            out = {"status": f"time limit ({args.timeout:.0f} s)"}
        else:
            out = q.get() if not q.empty() else {"status": f"exit code {p.exitcode}"}
        ref = refs.get(name)
        ref_nllh = float(ref["nllh"]) if ref is not None and str(ref["nllh"]) != "nan" \
            else math.nan
        nllh = out.get("nllh", math.nan)
        diff = abs(nllh - ref_nllh)

        def f(v, fmt):
            return "" if v is None or (isinstance(v, float) and math.isnan(v)) else \
                format(v, fmt)
        status = out["status"].replace("|", "/").replace("\n", " ")[:120]
        if out["status"].startswith("ok"):
            n_ok += 1
            if diff < 1e-3 and out.get("grad_rel", 1.0) < 1e-3:
                n_match += 1
        print(f"| {name} | {status} | {f(nllh, '.6f')} | {f(ref_nllh, '.6f')} | "
              f"{f(diff, '.2e')} | {f(out.get('grad_rel'), '.1e')} | "
              f"{f(out.get('grad_max_rel'), '.1e')} | {f(out.get('t_import'), '.3g')} | "
              f"{f(out.get('t_first'), '.3g')} | {f(out.get('t_eval'), '.3g')} | "
              f"{f(out.get('t_grad'), '.3g')} | "
              f"{'' if ref is None else ref.get('t_sim_ms', '')} | "
              f"{'' if ref is None else ref.get('t_grad_ms', '')} | "
              f"{f(_ratio(out.get('t_eval'), ref, 't_sim_ms'), '.3g')} | "
              f"{f(_ratio(out.get('t_grad'), ref, 't_grad_ms'), '.3g')} |", flush=True)
        if "trace" in out:
            print(out["trace"], file=sys.stderr)
    print(f"\nimported and evaluated: {n_ok} of {len(names)}; nllh within 1e-3 and gradient "
          f"within 1e-3 relative: {n_match}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
