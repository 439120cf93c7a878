"""The PEtab benchmark collection through dl.petab: import, likelihood and gradient at the
nominal parameters against AMICI's references.

Usage::

    python benchmarks/petab_collection.py PATH/TO/Benchmark-Models \\
        [--references benchmark-references.tsv] [--gradients benchmark-gradients.json] \\
        [--problems NAME ...] [--timeout 300] [--gradient-timeout 900] \\
        [--rtol 1e-9 --atol 1e-12] [--method LSODA] [--gradient adjoint]

One row per problem (each runs in its own process, with time limits: ``--timeout`` for the
import and the likelihood, ``--gradient-timeout`` for the gradient once the likelihood is
done, by default what remains of ``--timeout``; ``--gradient-timeout 0`` skips it):

* ``status``: ``ok``, or the named unsupported feature / the error / ``time limit`` when
  the likelihood itself did not finish; ``; gradient: ...`` when only the gradient failed;
* ``nllh`` and ``ref``: dynlearn's negative log-likelihood and AMICI's (``-llh``), and
  ``|diff|`` (target: below 1e-3; ``no reference`` where AMICI has none);
* ``grad rel``: ``||g - g_ref|| / ||g_ref||`` over the estimated parameters (target: below
  1e-3), or why there is none: ``no reference`` (AMICI's table has no gradient),
  ``time limit (N s)`` (the likelihood's row stands), ``not run``, ``failed``; ``max rel``:
  the largest ``|g_i - g_ref_i| / max(|g_ref_i|, 1e-3 max|g_ref|)``;
* ``t_import``: loading the problem (SBML to sympy, tables); ``t_first``: the first
  likelihood and gradient, which compile the model's functions (``(nllh)``: the first
  likelihood alone, when there is no gradient);
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


def _solve_tolerances(prob, first: int = 0):
    """The tolerances to try from index ``first`` on, as the references were made: when the
    solver fails at the requested ones, loosen them to 1e-10, then 1e-8."""
    return [(prob.rtol, prob.atol), (1e-10, 1e-10), (1e-8, 1e-8)][first:]


def _gradient_errors(g, ref_grad: dict, x_names) -> dict:
    """``grad_rel`` and ``grad_max_rel`` of dynlearn's gradient ``g`` against AMICI's."""
    import numpy as np

    # the references are d llh / d theta; ours is d nllh / d theta
    r = -np.array([ref_grad.get(k, 0.0) for k in x_names])
    nr = np.linalg.norm(r)
    out = {"grad_rel": float(np.linalg.norm(g - r) / nr) if nr > 0 else float(
        np.linalg.norm(g))}
    den = np.maximum(np.abs(r), 1e-3 * np.max(np.abs(r)) if r.size else 1.0)
    out["grad_max_rel"] = float(np.max(np.abs(g - r) / den)) if r.size else 0.0
    return out


def _run_one(yaml_path: str, ref_grad: dict | None, opts: dict, with_gradient: bool,
             queue) -> None:
    """Run one problem, putting partial results on ``queue`` as each stage ends, so that
    the parent keeps the likelihood row when the gradient later exceeds its own limit:

    1. ``t_import``; 2. the first likelihood (``nllh``, ``tol``, ``t_first_eval``) and a
    second one (``t_eval``), then ``phase: evaluated`` with ``status: ok`` and ``paths``
    (the steady states' paths); 3. the first gradient (``t_first_grad``, ``grad_rel``,
    ``grad_max_rel``) and a second one (``t_grad``); finally ``phase: done``. An error
    before the likelihood puts ``status`` (and ``trace`` when unexpected); one of the
    gradient puts ``grad_error`` and keeps the likelihood's results.
    """
    import dynlearn.petab as dp
    from dynlearn.errors import DynlearnError, SolveError

    phase = "import"
    try:
        t0 = time.perf_counter()
        prob = dp.load(yaml_path, **opts)
        queue.put({"t_import": time.perf_counter() - t0})
        x = prob.x_nominal
        tols = _solve_tolerances(prob)

        def evaluate(first: int) -> int:
            """The first (compiling) and a second likelihood, at the first tolerances from
            ``first`` on that the solver passes; returns their index."""
            for i, (rtol, atol) in enumerate(tols[first:], start=first):
                prob.rtol, prob.atol = rtol, atol
                try:
                    t0 = time.perf_counter()
                    nllh = prob.nllh(x)
                    t_first = time.perf_counter() - t0
                    break
                except SolveError:
                    if i == len(tols) - 1:
                        raise
            t0 = time.perf_counter()
            prob.nllh(x)
            queue.put({"nllh": nllh, "tol": f"{prob.rtol:g}", "t_first_eval": t_first,
                       "t_eval": time.perf_counter() - t0})
            return i

        phase = "evaluation"
        i_tol = evaluate(0)
        # how the steady states were found (path/sensitivity: count)
        queue.put({"phase": "evaluated", "status": "ok",
                   "paths": dict(getattr(prob, "steady_state_paths", None) or {})})
        if with_gradient:
            phase = "gradient"
            while True:
                try:
                    t0 = time.perf_counter()
                    _, g = prob.loss_and_grad(x)
                    break
                except SolveError:
                    # the gradient failed where the likelihood passed: both at looser ones
                    if i_tol == len(tols) - 1:
                        raise
                    i_tol = evaluate(i_tol + 1)
            msg = {"t_first_grad": time.perf_counter() - t0}
            if ref_grad:
                msg.update(_gradient_errors(g, ref_grad, prob.x_names))
            queue.put(msg)
            t0 = time.perf_counter()
            prob.loss_and_grad(x)
            queue.put({"t_grad": time.perf_counter() - t0,
                       "paths": dict(getattr(prob, "steady_state_paths", None) or {})})
    except Exception as exc:   # a benchmark reports every failure in its row
        text = f"{type(exc).__name__}: {exc}"
        if phase == "gradient":   # the likelihood's row stands; the gradient failed
            queue.put({"grad_error": text})
        else:
            queue.put({"status": text})
        if not isinstance(exc, DynlearnError):   # an unexpected error: where it came from
            queue.put({"trace": traceback.format_exc(limit=4)})
    queue.put({"phase": "done"})


def _collect(proc, queue, timeout: float, gradient_timeout: float | None) -> dict:
    """Merge the messages of one problem's process until it is done or over its limits:
    ``timeout`` seconds for the import and the likelihood, then ``gradient_timeout`` for
    the gradient (None: what remains of ``timeout``). The process is ended at a limit and
    the row keeps what had arrived, with ``status`` or ``grad_limit`` saying which limit."""
    import queue as queue_mod

    out: dict = {}
    start = time.monotonic()
    deadline = start + timeout
    while True:
        try:
            msg = queue.get(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
        except queue_mod.Empty:
            if not proc.is_alive():
                # the process has ended; its last messages may still be in the pipe
                try:
                    msg = queue.get(timeout=5.0)
                except queue_mod.Empty:   # it died without saying why (a crash)
                    if "evaluated" in out:
                        out["grad_error"] = f"exit code {proc.exitcode}"
                    else:
                        out["status"] = f"exit code {proc.exitcode}"
                    break
            elif time.monotonic() >= deadline:
                proc.terminate()
                if "evaluated" in out:    # the likelihood's row stands
                    out["grad_limit"] = f"{gradient_timeout:g} s" if gradient_timeout \
                        else f"{timeout:.0f} s in all"
                else:
                    out["status"] = f"time limit ({timeout:.0f} s)"
                break
            else:
                continue
        phase = msg.pop("phase", None)
        out.update(msg)
        if phase == "evaluated":
            out["evaluated"] = time.monotonic()
            if gradient_timeout:      # 0: no gradient is run, None: the same deadline
                deadline = out["evaluated"] + gradient_timeout
        elif phase == "done":
            break
    proc.join()
    return out


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


def _fmt(v, fmt: str) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _gradient_cell(out: dict, has_ref: bool, gradient_timeout: float | None) -> str:
    """The ``grad rel`` cell: the relative error, or why there is none."""
    if "grad_limit" in out:
        cell = f"time limit ({out['grad_limit']})"
        return cell if has_ref else cell + "; no reference"
    if "grad_error" in out:
        return "failed (see status)"
    if gradient_timeout == 0:
        return "not run"
    if not has_ref:
        return "no reference"
    return _fmt(out.get("grad_rel"), ".1e")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("collection", help="the Benchmark-Models directory")
    ap.add_argument("--references", help="benchmark-references.tsv (AMICI)")
    ap.add_argument("--gradients", help="benchmark-gradients.json (AMICI)")
    ap.add_argument("--problems", nargs="*", help="only these problems")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="seconds per problem for the import and the likelihood (and the "
                         "gradient, unless --gradient-timeout is given)")
    ap.add_argument("--gradient-timeout", type=float,
                    help="seconds for the gradient, counted once the likelihood is done "
                         "(default: what remains of --timeout; 0: no gradient). Over it, "
                         "the row keeps the likelihood and says 'time limit' for the gradient")
    ap.add_argument("--rtol", type=float, default=1e-9)
    ap.add_argument("--atol", type=float, default=1e-12)
    ap.add_argument("--method", help="solver method (default: dl.petab's)")
    ap.add_argument("--gradient", choices=("auto", "forward", "adjoint"),
                    help="gradient method passed to dl.petab.load (default: dl.petab's)")
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
    if args.gradient:
        opts["gradient"] = args.gradient
    if args.preequilibration:
        opts["preequilibration"] = args.preequilibration
    with_gradient = args.gradient_timeout != 0
    header = ("| problem | status | nllh | ref nllh | abs diff | grad rel | max rel | "
              "t_import s | t_first s | t_eval s | t_grad s | AMICI t_sim ms | AMICI t_grad ms | "
              "eval / AMICI | grad / AMICI |")
    print(header)
    print("|" + "---|" * 15)
    n_ok = n_match = n_nllh_only = n_grad_limit = 0
    ctx = mp.get_context("spawn")
    for name in names:
        try:
            yaml_path = _problem_yaml(args.collection, name)
        except FileNotFoundError as exc:
            print(f"| {name} | {exc} |" + " |" * 13)
            continue
        q = ctx.Queue()
        p = ctx.Process(target=_run_one,
                        args=(yaml_path, grads.get(name), opts, with_gradient, q))
        p.start()
        out = _collect(p, q, args.timeout, args.gradient_timeout)
        ref = refs.get(name)
        ref_nllh = float(ref["nllh"]) if ref is not None and str(ref["nllh"]) != "nan" \
            else math.nan
        nllh = out.get("nllh", math.nan)
        diff = abs(nllh - ref_nllh)
        has_ref_grad = bool(grads.get(name))
        status = out["status"]
        if status == "ok":
            if out.get("tol", f"{args.rtol:g}") != f"{args.rtol:g}":
                status += f" (tol {out['tol']})"
            if out.get("paths"):
                status += " [" + ", ".join(f"{k} {v}" for k, v in sorted(out["paths"].items())) \
                    + "]"
        if "grad_error" in out:
            status += "; gradient: " + out["grad_error"]
        status = status.replace("|", "/").replace("\n", " ")[:120]
        if out["status"].startswith("ok"):
            n_ok += 1
            n_grad_limit += "grad_limit" in out
            if diff < 1e-3 and out.get("grad_rel", 1.0) < 1e-3:
                n_match += 1
            elif diff < 1e-3 and "grad_rel" not in out:
                n_nllh_only += 1    # no reference gradient, or ours not run or not finished
        # the first likelihood and gradient (compiling); the likelihood's alone without one
        t_first = out.get("t_first_eval")
        if t_first is not None and "t_first_grad" in out:
            t_first_cell = _fmt(t_first + out["t_first_grad"], ".3g")
        else:
            t_first_cell = _fmt(t_first, ".3g") + (" (nllh)" if t_first is not None else "")
        diff_cell = _fmt(diff, ".2e") if not math.isnan(ref_nllh) or math.isnan(nllh) \
            else "no reference"
        grad_cell = _gradient_cell(out, has_ref_grad, args.gradient_timeout) \
            if "nllh" in out else ""
        print(f"| {name} | {status} | {_fmt(nllh, '.6f')} | {_fmt(ref_nllh, '.6f')} | "
              f"{diff_cell} | {grad_cell} | "
              f"{_fmt(out.get('grad_max_rel'), '.1e')} | {_fmt(out.get('t_import'), '.3g')} | "
              f"{t_first_cell} | {_fmt(out.get('t_eval'), '.3g')} | "
              f"{_fmt(out.get('t_grad'), '.3g')} | "
              f"{'' if ref is None else ref.get('t_sim_ms', '')} | "
              f"{'' if ref is None else ref.get('t_grad_ms', '')} | "
              f"{_fmt(_ratio(out.get('t_eval'), ref, 't_sim_ms'), '.3g')} | "
              f"{_fmt(_ratio(out.get('t_grad'), ref, 't_grad_ms'), '.3g')} |", flush=True)
        if "trace" in out:
            print(out["trace"], file=sys.stderr)
    print(f"\nimported and evaluated: {n_ok} of {len(names)}; nllh within 1e-3 and gradient "
          f"within 1e-3 relative: {n_match}; nllh within 1e-3, gradient not compared (no "
          f"reference, not run or over its limit): {n_nllh_only}; gradient over its time "
          f"limit: {n_grad_limit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
