"""dynlearn and AMICI side by side on PEtab problems (issue #15): likelihood, gradient and
multi-start fits at the same tolerances, in one run, alternating the two tools so that
both see the same machine load.

dynlearn runs here (``dl.petab.load``, ``nllh`` and ``loss_and_grad`` at the nominal
parameters); AMICI runs in its own virtualenv through ``benchmarks/peers/amici_peer.py``
(``--amici-python``), which prints its results as one JSON line. Per problem:

1. AMICI imports and compiles the model (timed; cached in ``--models-dir`` for the later
   calls);
2. dynlearn loads the problem and makes its first evaluation and gradient (this compiles
   its functions: ``dl load s``, ``dl first s``);
3. ``--rounds`` rounds, each: dynlearn's timings at every tolerance of ``--tols`` (medians
   of ``--repeats`` calls), then AMICI's (the same, in one peer call); the table gives the
   median over the rounds;
4. with ``--fit N``: N-start fits from the same starts (drawn uniformly on the parameters'
   scales within the bounds, seed ``--seed``), dynlearn's ``problem.fit(starts=...)``
   (its default optimizer) then AMICI + pyPESTO + fides, both at ``--fit-rtol`` /
   ``--fit-atol`` and with a wall-clock limit ``--fit-time`` each; then one row per start:
   dynlearn's status, end nllh, iterations, solves and solves with sensitivities
   (``n_eval``, ``n_sens`` of its run) and time, AMICI's end, pyPESTO's counts of
   evaluations and gradients (fides evaluates every trial point with its sensitivities,
   so these are its trial points) and time;
5. the starts needed: with the nllh at the collection's nominal parameters (the published
   optimum; dynlearn's, at the fits' tolerances) as the target, per tool the starts whose
   end is at most 0.1 above it (``reached / run``), the number of starts needed (one plus
   the index of the first start that reaches it, in the order the starts were drawn),
   ``best - nominal``, wall time and the solves (dynlearn: with sensitivities / all;
   AMICI: pyPESTO's evaluations, each with sensitivities).

Columns: ``dl gradient``: dynlearn's gradient method (``PetabProblem.gradient``;
``--dl-gradients auto forward adjoint`` times each, one row each); ``nllh`` of both and
``|diff|``; ``grad rel`` = ``||g_dl - g_amici|| / ||g_amici||`` against AMICI's forward
sensitivities at the same tolerance; ``dl grad rel vs tight AMICI`` against AMICI's forward
sensitivities at the tightest tolerance of the run, and the same for AMICI's own gradient
(its accuracy at that tolerance); ``eval``: one likelihood (ms) and the ratio dynlearn /
AMICI; ``grad``: one likelihood + gradient, against AMICI's forward sensitivities (and, for
reference, its adjoint); ``AMICI compile s``: AMICI's import + compile (with
``--reuse-compiled``: as recorded when an earlier run compiled it); ``dl load s``,
``dl first s``: ``dl.petab.load`` and the first gradient (which compiles dynlearn's
functions). ``uptime`` is printed before every problem and with the table.

``--stiff-suite`` adds the Robertson and reaction-chain problems of ``bench_stiff.py``
(exported with ``dl.petab.save`` to ``--export-dir``): the scaling of the gradient time
with the number of states (chain n = ``--sizes``, n rate parameters).

Usage::

    python benchmarks/petab_vs_amici.py --amici-python /work/amici-venv/bin/python \\
        [--collection ../shared/petab/benchmark-models/Benchmark-Models] \\
        [--problems Raia_CancerResearch2011 ...] [--tols 1e-12 1e-8] [--repeats 3] \\
        [--rounds 2] [--dl-gradients auto forward adjoint] [--reuse-compiled] \\
        [--fit 20 --fit-time 900] [--stiff-suite --sizes 10 30 100] \\
        [--no-collection] [--markdown] [--json-out results.json]

Without ``--problems``: Boehm_JProteomeRes2014 if the collection has it, else those of
Borghans, Brannmark, Raia, Laske, Bachmann, Fiedler and Elowitz it has.

Re-running one side:

* ``--amici-json OLD.json`` reuses AMICI's compile record and fit of each problem from the
  JSON of an earlier run (``--json-out``) instead of calling AMICI; with ``--rounds 0`` (no
  timings) nothing of AMICI runs, so only dynlearn's fit is measured again. The starts
  must be the same (checked against the starts stored in OLD.json, or, for files written
  before they were stored, the number of starts and the tolerances).
* ``--from-json A.json B.json ...`` runs nothing and prints the tables of earlier runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEER = HERE / "peers" / "amici_peer.py"
DEFAULT_COLLECTION = HERE.parent.parent / "shared" / "petab" / "benchmark-models" / \
    "Benchmark-Models"
FALLBACK = ["Borghans_BiophysChem1997", "Brannmark_JBC2010", "Raia_CancerResearch2011",
            "Laske_PLOSComputBiol2019", "Bachmann_MSB2011", "Fiedler_BMCSystBiol2016",
            "Elowitz_Nature2000"]


def uptime() -> str:
    """The load averages, as ``uptime`` prints them."""
    try:
        out = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout
        return out.strip()
    except OSError:
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def problem_yaml(root: Path, name: str) -> Path:
    """The YAML file of a collection problem (``NAME.yaml``, else ``problem.yaml``, else
    the first YAML file of its folder)."""
    d = root / name
    for cand in (f"{name}.yaml", "problem.yaml"):
        if (d / cand).exists():
            return d / cand
    ys = sorted(p for p in d.glob("*.y*ml") if "visu" not in p.name)
    if not ys:
        raise FileNotFoundError(f"no YAML file in {d}")
    return ys[0]


def default_problems(root: Path) -> list[str]:
    if (root / "Boehm_JProteomeRes2014").is_dir():
        return ["Boehm_JProteomeRes2014"]
    return [p for p in FALLBACK if (root / p).is_dir()]


def run_peer(args, yaml: Path, name: str, extra: list[str], timeout: float) -> dict:
    """Run amici_peer.py under AMICI's interpreter; its one JSON line as a dict."""
    cmd = [args.amici_python, str(PEER), str(yaml), "--name", name,
           "--models-dir", str(args.models_dir), *extra]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"AMICI peer: time limit ({timeout:.0f} s)"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = proc.stderr.strip().splitlines()[-5:]
        return {"error": f"AMICI peer exit {proc.returncode}: {' / '.join(tail)}"}
    if args.verbose:
        sys.stderr.write(proc.stderr[-3000:])
    return json.loads(lines[-1])


def median(xs):
    xs = sorted(x for x in xs if x is not None and math.isfinite(x))
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def timed_median(fn, repeats: int):
    """Median seconds of ``repeats`` calls and the last result."""
    ts, out = [], None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return median(ts), out


def dl_round(prob, x, tols, repeats: int, gradients: list[str]) -> dict:
    """dynlearn's nllh, gradient and medians (s) at each tolerance, for each gradient
    method of ``gradients`` (``PetabProblem.gradient``: "auto", "forward", "adjoint");
    keyed ``"<tol>"`` for the first method, ``"<tol>/<method>"`` for the others."""
    out = {}
    for tol in tols:
        prob.rtol = prob.atol = tol
        for k, mode in enumerate(gradients):
            prob.gradient = mode
            entry: dict = {"gradient": mode}
            try:
                if k == 0:
                    t_eval, f = timed_median(lambda: prob.nllh(x), repeats)
                    entry.update(nllh=float(f), eval_s=t_eval)
                t_grad, (f, g) = timed_median(lambda: prob.loss_and_grad(x), repeats)
                entry.setdefault("nllh", float(f))
                entry.update(grad=[float(v) for v in g], grad_s=t_grad)
            except Exception as exc:  # noqa: BLE001 - a failure is a result of the benchmark
                entry["error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
            out[f"{tol:g}" if k == 0 else f"{tol:g}/{mode}"] = entry
        prob.gradient = gradients[0]
    return out


def rel(a, b):
    import numpy as np

    a, b = np.asarray(a, float), np.asarray(b, float)
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / nb) if nb > 0 else float(np.linalg.norm(a))


def aligned(grad_amici: dict, names: list[str]) -> list[float]:
    """AMICI's gradient (a dict by parameter id) in dynlearn's order."""
    return [float(grad_amici.get(k, math.nan)) for k in names]


def compare_problem(args, name: str, yaml: Path, label: str | None = None) -> dict:
    """Everything measured for one problem (see the module notes)."""
    import dynlearn as dl

    label = label or name
    res: dict = {"problem": label, "uptime": [uptime()],
                 "settings": {"tols": list(args.tols), "repeats": args.repeats,
                              "rounds": args.rounds}}
    print(f"\n== {label}: {res['uptime'][0]}", flush=True)
    tols = sorted(args.tols, reverse=True)
    tols_s = [f"{t:g}" for t in tols]
    # 1. AMICI's import and compile
    saved = saved_amici(args, label)
    if saved is not None:
        comp = dict(saved.get("amici_compile") or {}, reused_from=args.amici_json)
    else:
        comp = run_peer(args, yaml, label,
                        ["--compile-only"] + ([] if args.reuse_compiled
                                              else ["--force-compile"]),
                        args.peer_timeout)
    res["amici_compile"] = comp
    if comp.get("compile_s") is None and comp.get("cached_compile_s") is not None:
        comp["compile_s"] = comp["cached_compile_s"]      # measured when it was compiled
        comp["compile_cached"] = True
    print(f"AMICI compile: {comp.get('compile_s', comp.get('error'))}", flush=True)
    # 2. dynlearn's load and first evaluation
    t0 = time.perf_counter()
    prob = dl.petab.load(str(yaml), rtol=tols[-1], atol=tols[-1],
                         gradient=args.dl_gradients[0])
    res["dl_load_s"] = time.perf_counter() - t0
    x = prob.x_nominal
    res["x_names"] = list(prob.x_names)
    res["n_states"] = len(prob.sbml.states)
    t0 = time.perf_counter()
    try:
        prob.loss_and_grad(x)
    except Exception as exc:  # noqa: BLE001
        res["dl_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
    res["dl_first_s"] = time.perf_counter() - t0
    print(f"dynlearn load {res['dl_load_s']:.3g} s, first gradient {res['dl_first_s']:.3g} s",
          flush=True)
    # 3. alternating rounds
    dl_rounds, am_rounds = [], []
    for r in range(args.rounds):
        dl_rounds.append(dl_round(prob, x, tols, args.repeats, args.dl_gradients))
        peer_args = ["--tols", *tols_s, "--repeats", str(args.repeats)]
        if args.no_adjoint:
            peer_args.append("--no-adjoint")
        am_rounds.append(run_peer(args, yaml, label, peer_args, args.peer_timeout))
        print(f"round {r + 1}: dynlearn "
              + ", ".join(f"{t}: {dl_rounds[-1][t].get('grad_s')}" for t in tols_s)
              + " s; AMICI " + str(am_rounds[-1].get("error", "ok")), flush=True)
    res["dl_rounds"], res["amici_rounds"] = dl_rounds, am_rounds
    res["uptime"].append(uptime())
    # 4. fits from the same starts
    if args.fit:
        res["fit"] = compare_fits(args, prob, yaml, label)
        res["uptime"].append(uptime())
    return res


def compare_fits(args, prob, yaml: Path, label: str) -> dict:
    """N-start fits of both tools from the same starts (see the module notes)."""
    import numpy as np

    from dynlearn.petab.fitting import draw_starts

    starts = draw_starts(prob, args.fit, seed=args.seed)
    path = Path(args.models_dir) / f"{label}.starts.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"x_names": list(prob.x_names), "starts": starts.tolist()}))
    out: dict = {"n_starts": args.fit, "rtol": args.fit_rtol, "atol": args.fit_atol,
                 "seed": args.seed, "starts": starts.tolist()}
    saved = saved_amici(args, label)
    if saved is not None:       # before dynlearn's fit: stop early on other starts
        check_same_starts(saved.get("fit") or {}, out, label)
    prob.rtol, prob.atol = args.fit_rtol, args.fit_atol
    try:
        # the target: the nllh at the published optimum, at the fits' tolerances
        out["nominal"] = float(prob.nllh(prob.x_nominal))
    except Exception as exc:  # noqa: BLE001 - the fits still run; the target is then missing
        out["nominal_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
    # the load before dynlearn's fit, between the two and after AMICI's
    out["uptime"] = [uptime()]
    print(f"dynlearn fit ({args.fit} starts) ... {out['uptime'][0]}", flush=True)
    t0 = time.perf_counter()
    try:
        fr = prob.fit(starts=starts, max_time=args.fit_time)
        status = {}
        for run in fr.runs:
            status[run["status"]] = status.get(run["status"], 0) + 1
        out["dl"] = dict(wall_s=time.perf_counter() - t0, best=float(fr.fun),
                         n_at_best=fr.n_at_best(0.1), statuses=status,
                         posterior=bool(fr.posterior),
                         n_run=sum(1 for r in fr.runs if r["status"] != "not run"),
                         n_eval=int(sum(r.get("n_eval", 0) for r in fr.runs)),
                         n_sens=int(sum(r.get("n_sens", 0) for r in fr.runs)),
                         runs=[dict(index=int(r["index"]), status=r["status"],
                                    reason=r.get("reason"), nllh=float(r["nllh"]),
                                    nit=int(r.get("nit", 0)), n_eval=int(r.get("n_eval", 0)),
                                    n_sens=int(r.get("n_sens", 0)),
                                    time=float(r.get("time", 0.0)))
                               for r in sorted(fr.runs, key=lambda r: r["index"])])
    except Exception as exc:  # noqa: BLE001
        out["dl"] = {"error": f"{type(exc).__name__}: {str(exc)[:120]}",
                     "wall_s": time.perf_counter() - t0}
    print(f"dynlearn fit: { {k: v for k, v in out['dl'].items() if k != 'runs'} }", flush=True)
    out["uptime"].append(uptime())
    if saved is not None:
        out["amici"] = dict((saved.get("fit") or {}).get("amici")
                            or {"error": "no AMICI fit in the JSON"},
                            reused_from=args.amici_json)
    else:
        print(f"AMICI fit ({args.fit} starts) ...", flush=True)
        out["amici"] = run_peer(args, yaml, label,
                                ["--fit", str(args.fit), "--starts", str(path),
                                 "--fit-rtol", f"{args.fit_rtol:g}",
                                 "--fit-atol", f"{args.fit_atol:g}",
                                 "--fit-time", f"{args.fit_time:g}", "--no-evals"],
                                args.fit_time * 2 + args.peer_timeout)
    print(f"AMICI fit: { {k: v for k, v in out['amici'].items() if k != 'versions'} }",
          flush=True)
    out["uptime"].append(uptime())
    out["same_starts"] = bool(np.isfinite(starts).all())
    nominal = fit_nominal({}, out)
    out["reach"] = {"dl": reach(dl_ends(out), nominal), "amici": reach(amici_ends(out), nominal)}
    print(f"starts reaching nominal + {REACH}: {out['reach']}", flush=True)
    return out


def saved_amici(args, label: str) -> dict | None:
    """The result for ``label`` in the JSON of ``--amici-json`` (None without the option)."""
    if not getattr(args, "amici_json", None):
        return None
    for res in json.loads(Path(args.amici_json).read_text()):
        if res.get("problem") == label:
            return res
    raise SystemExit(f"--amici-json {args.amici_json}: no result for {label}")


def check_same_starts(old: dict, new: dict, label: str) -> None:
    """Stop unless the reused AMICI fit ran from the starts of this run."""
    import numpy as np

    if "starts" in old:
        same = np.allclose(np.asarray(old["starts"], float), np.asarray(new["starts"], float),
                           rtol=1e-12, atol=0.0, equal_nan=True) \
            if np.shape(old["starts"]) == np.shape(new["starts"]) else False
    else:   # written before the starts were stored: what the draw depends on
        same = all(old.get(k) == new.get(k) for k in ("n_starts", "rtol", "atol")) and \
            old.get("seed", new["seed"]) == new["seed"]
        print(f"{label}: the reused JSON has no starts; same count, seed and tolerances "
              f"assumed to give the same starts ({same})", flush=True)
    if not same:
        raise SystemExit(f"--amici-json: {label}'s AMICI fit ran from other starts")


def fmt(v, spec=".3g") -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else \
        format(v, spec)


def ratio(a, b) -> str:
    return fmt(a / b) if a is not None and b else ""


def table_rows(results: list[dict], tols: list[float]) -> list[list[str]]:
    rows = []
    tight = f"{min(tols):g}"
    for res in results:
        names = res.get("x_names", [])
        comp = res.get("amici_compile", {})
        ref_tight = None
        am_tight = [r.get("evals", {}).get(tight, {}) for r in res.get("amici_rounds", [])]
        if am_tight and "grad_forward" in am_tight[0]:
            ref_tight = aligned(am_tight[0]["grad_forward"], names)
        keys = [k for k in (res.get("dl_rounds") or [{}])[0]] or \
            [f"{tol:g}" for tol in sorted(tols, reverse=True)]
        for key in keys:
            t, _, mode_k = key.partition("/")
            dls = [r.get(key, {}) for r in res.get("dl_rounds", [])]
            ams = [r.get("evals", {}).get(t, {}) for r in res.get("amici_rounds", [])]
            dl0 = next((d for d in dls if "nllh" in d), {})
            am0 = next((a for a in ams if "nllh" in a), {})
            err = dl0.get("error") or res.get("dl_error") or am0.get("error") or \
                next((r.get("error") for r in res.get("amici_rounds", []) if "error" in r),
                     None) or comp.get("error")
            d_eval = median([d.get("eval_s") for d in dls])
            d_grad = median([d.get("grad_s") for d in dls])
            a_eval = median([a.get("eval_ms") for a in ams])
            a_fwd = median([a.get("grad_forward_ms") for a in ams])
            a_adj = median([a.get("grad_adjoint_ms") for a in ams])
            nd, na = dl0.get("nllh"), am0.get("nllh")
            g_rel = g_tight = None
            if "grad" in dl0 and "grad_forward" in am0:
                g_rel = rel(dl0["grad"], aligned(am0["grad_forward"], names))
            if "grad" in dl0 and ref_tight is not None:
                g_tight = rel(dl0["grad"], ref_tight)
            a_tight = None
            if "grad_forward" in am0 and ref_tight is not None:
                a_tight = rel(aligned(am0["grad_forward"], names), ref_tight)
            mode = dl0.get("gradient", mode_k)
            rows.append([
                res["problem"], f"{res.get('n_states', '')}/{len(names)}", t, mode,
                fmt(nd, ".6f"), fmt(na, ".6f"),
                fmt(abs(nd - na), ".1e") if nd is not None and na is not None else "",
                fmt(g_rel, ".1e"), fmt(g_tight, ".1e"), fmt(a_tight, ".1e"),
                fmt(None if d_eval is None else 1e3 * d_eval), fmt(a_eval),
                ratio(None if d_eval is None else 1e3 * d_eval, a_eval),
                fmt(None if d_grad is None else 1e3 * d_grad), fmt(a_fwd),
                ratio(None if d_grad is None else 1e3 * d_grad, a_fwd), fmt(a_adj),
                fmt(comp.get("compile_s")), fmt(res.get("dl_load_s")),
                fmt(res.get("dl_first_s")), (err or "")[:80].replace("|", "/")])
    return rows


HEADER = ["problem", "states/params", "tol", "dl gradient", "nllh dynlearn", "nllh AMICI",
          "|diff|", "grad rel", "dl grad rel vs tight AMICI",
          "AMICI fwd grad rel vs tight AMICI", "eval ms dl", "eval ms AMICI",
          "eval ratio", "grad ms dl", "grad ms AMICI fwd", "grad ratio", "grad ms AMICI adj",
          "AMICI compile s", "dl load s", "dl first s", "note"]


def _fits(results: list[dict]):
    """``(result, fit)`` of every problem that ran the fits (``--fit``)."""
    for res in results:
        if res.get("fit"):
            yield res, res["fit"]


def fit_rows(results: list[dict]) -> list[list[str]]:
    rows = []
    for res, f in _fits(results):
        d, a = f.get("dl", {}), f.get("amici", {})
        comp = res.get("amici_compile", {}).get("compile_s")
        a_wall = a.get("wall_s")
        # a fit stopped by --fit-time: its time is a lower bound of the full fit's
        cut = {k: ">" if (x.get("n_run", f["n_starts"]) < f["n_starts"]
                          or "max_time" in (x.get("statuses") or {})) else ""
               for k, x in (("dl", d), ("amici", a))}
        a_run = sum(1 for r in a.get("runs", []) if r.get("fval") is not None or
                    not str(r.get("message", "")).startswith("not run"))
        if a.get("runs"):
            a["n_run"] = a_run
        rows.append([
            res["problem"], str(f["n_starts"]), f"{f['rtol']:g}/{f['atol']:g}",
            f"{d.get('n_run', '')}/{a.get('n_run', '')}",
            cut["dl"] + fmt(d.get("wall_s")), fmt(d.get("best"), ".4f"),
            str(d.get("n_at_best", "")),
            fmt(a_wall), fmt(a_wall + comp if a_wall is not None and comp else None),
            fmt(a.get("best"), ".4f"), str(a.get("n_at_best", "")),
            "" if cut["amici"] else cut["dl"] + ratio(d.get("wall_s"), a_wall),
            "" if cut["amici"] else cut["dl"] + ratio(
                d.get("wall_s"), a_wall + comp if a_wall is not None and comp else None),
            "; ".join(str(x)[:60] for x in (d.get("error"), a.get("error"),
                                            d.get("statuses"), a.get("statuses")) if x)])
    return rows


def start_rows(results: list[dict]) -> list[list[str]]:
    """One row per start of the fits: each tool's end, its counts and its time."""
    rows = []
    for res, f in _fits(results):
        d_runs = (f.get("dl") or {}).get("runs") or []
        a_runs = (f.get("amici") or {}).get("runs") or []
        for k in range(f["n_starts"]):
            d = d_runs[k] if k < len(d_runs) else {}
            a = a_runs[k] if k < len(a_runs) else {}
            rows.append([
                res["problem"], str(k), str(d.get("reason", "")), fmt(d.get("nllh"), ".4f"),
                str(d.get("nit", "")), str(d.get("n_eval", "")), str(d.get("n_sens", "")),
                fmt(d.get("time")), fmt(a.get("fval"), ".4f"), str(a.get("n_fval", "")),
                str(a.get("n_grad", "")), fmt(a.get("time")),
                ratio(d.get("time"), a.get("time")),
                ratio(d.get("n_sens"), a.get("n_grad"))])
    return rows


START_HEADER = ["problem", "start", "dl status", "dl nllh", "dl iterations",
                "dl solves", "dl with sensitivities", "dl s", "AMICI nllh",
                "AMICI evaluations", "AMICI gradients", "AMICI s", "time dl / AMICI",
                "sensitivity solves dl / AMICI"]


FIT_HEADER = ["problem", "starts", "rtol/atol", "starts run dl/AMICI", "dl wall s", "dl best",
              "dl at best (0.1)",
              "AMICI wall s", "AMICI + compile s", "AMICI best", "AMICI at best (0.1)",
              "dl / AMICI", "dl / (AMICI + compile)", "statuses"]


REACH = 0.1   # a start reaches the published optimum when it ends at most this above it
REACH_FINE = 0.01   # also counted: ends closer, to tell the optimum from nearby local ones


def fit_nominal(res: dict, f: dict) -> float | None:
    """The target of the fits: dynlearn's nllh at the nominal parameters, at the fits'
    tolerances, else (JSON files of earlier runs) at the timings' tolerance nearest to the
    fits' rtol."""
    if f.get("nominal") is not None:
        return float(f["nominal"])
    rounds = res.get("dl_rounds") or [{}]
    keys = [k for k in rounds[0] if "/" not in k and "nllh" in rounds[0][k]]
    if not keys:
        return None
    key = min(keys, key=lambda k: abs(math.log(float(k) / f["rtol"])))
    return float(rounds[0][key]["nllh"])


def amici_nominal(res: dict, f: dict) -> float | None:
    """AMICI's nllh at the nominal parameters (from the timings, if they ran), for the
    cross-check of the target."""
    rounds = res.get("amici_rounds") or [{}]
    evals = rounds[0].get("evals") or {}
    keys = [k for k in evals if "nllh" in evals[k]]
    if not keys:
        return None
    key = min(keys, key=lambda k: abs(math.log(float(k) / f["rtol"])))
    return float(evals[key]["nllh"])


def _finite(v) -> float | None:
    return float(v) if v is not None and math.isfinite(float(v)) else None


def dl_ends(f: dict) -> list[float | None]:
    """dynlearn's end nllh of every start, in the starts' order (None: not run or failed)."""
    runs = (f.get("dl") or {}).get("runs") or []
    ends: list[float | None] = [None] * f["n_starts"]
    for r in runs:
        if r.get("status") != "not run" and 0 <= r["index"] < len(ends):
            ends[r["index"]] = _finite(r.get("nllh"))
    return ends


def amici_ends(f: dict) -> list[float | None]:
    """AMICI's end nllh of every start, in the starts' order (None: not run or failed)."""
    runs = (f.get("amici") or {}).get("runs") or []
    ends = [_finite(r.get("fval")) for r in runs[:f["n_starts"]]]
    return ends + [None] * (f["n_starts"] - len(ends))


def reach(ends: list[float | None], nominal: float | None) -> dict:
    """How the starts' ends compare with the target ``nominal``: ``reached`` (ends at most
    ``REACH`` above it), ``reached_fine`` (at most ``REACH_FINE`` above), ``run`` (starts
    with an end), ``needed`` (1 + the index of the first start that reaches it; None if
    none does) and ``best_minus_nominal``."""
    got = [e for e in ends if e is not None]
    if nominal is None:
        return {"reached": None, "reached_fine": None, "run": len(got), "needed": None,
                "best_minus_nominal": None}
    hits = [k for k, e in enumerate(ends) if e is not None and e <= nominal + REACH]
    return {"reached": len(hits),
            "reached_fine": sum(1 for e in got if e <= nominal + REACH_FINE),
            "run": len(got), "needed": hits[0] + 1 if hits else None,
            "best_minus_nominal": min(got) - nominal if got else None}


def reach_rows(results: list[dict]) -> list[list[str]]:
    """One row per problem: the starts each tool needs to reach the published optimum."""
    rows = []
    for res, f in _fits(results):
        nominal = fit_nominal(res, f)
        a_nom = amici_nominal(res, f)
        d, a = f.get("dl") or {}, f.get("amici") or {}
        cells = [res["problem"], str(f["n_starts"]), fmt(nominal, ".4f"),
                 fmt(None if a_nom is None or nominal is None else a_nom - nominal, ".1e")]
        a_runs = a.get("runs") or []
        solves = {"dl": f"{d.get('n_sens', '')} / {d.get('n_eval', '')}",
                  "amici": str(sum(r.get("n_grad", 0) for r in a_runs)) if a_runs else ""}
        for tool, ends, x in (("dl", dl_ends(f), d), ("amici", amici_ends(f), a)):
            r = reach(ends, nominal)
            cut = ">" if ("max_time" in (x.get("statuses") or {})
                          or r["run"] < f["n_starts"]) else ""
            cells += [f"{'' if r['reached'] is None else r['reached']} / {r['run']}",
                      str("" if r["reached_fine"] is None else r["reached_fine"]),
                      "none" if r["needed"] is None and r["reached"] is not None
                      else str(r["needed"] or ""),
                      fmt(r["best_minus_nominal"], "+.2g"), cut + fmt(x.get("wall_s")),
                      solves[tool]]
        rows.append(cells)
    return rows


REACH_HEADER = ["problem", "starts", "nominal nllh", "AMICI nominal - dl nominal",
                f"dl reached (nominal+{REACH}) / run", f"dl within {REACH_FINE}",
                "dl starts needed",
                "dl best - nominal", "dl wall s", "dl solves (sens / all)",
                f"AMICI reached (nominal+{REACH}) / run", f"AMICI within {REACH_FINE}",
                "AMICI starts needed",
                "AMICI best - nominal", "AMICI wall s", "AMICI evaluations (with sens)"]


def stiff_suite(args) -> list[tuple[str, Path]]:
    """Robertson and the reaction chains of bench_stiff.py, written as PEtab problems."""
    import dynlearn as dl

    sys.path.insert(0, str(HERE))
    from bench_stiff import chain_problem

    from dynlearn.testing import robertson_problem

    out = []
    cases = [("Robertson", *robertson_problem())]
    cases += [(f"chain{n}", *chain_problem(n)) for n in args.sizes]
    for label, model, data, theta in cases:
        d = Path(args.export_dir) / label
        # a known noise level: only the rate parameters are estimated
        yaml = dl.petab.save(model, data, d, theta=theta, sigma=0.01)
        out.append((label, Path(yaml)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--amici-python", default="/work/amici-venv/bin/python",
                    help="the interpreter of AMICI's virtualenv")
    ap.add_argument("--collection", default=str(DEFAULT_COLLECTION),
                    help="the Benchmark-Models directory")
    ap.add_argument("--problems", nargs="*", help="collection problems (see the notes)")
    ap.add_argument("--no-collection", action="store_true",
                    help="no collection problems (with --stiff-suite)")
    ap.add_argument("--tols", type=float, nargs="+", default=[1e-12, 1e-8],
                    help="rtol = atol values")
    ap.add_argument("--repeats", type=int, default=3, help="calls per timing (median)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    ap.add_argument("--no-adjoint", action="store_true", help="skip AMICI's adjoint")
    ap.add_argument("--dl-gradients", nargs="+", default=["auto"],
                    choices=["auto", "forward", "adjoint"],
                    help="dynlearn's gradient methods to time (the first also for the fit)")
    ap.add_argument("--reuse-compiled", action="store_true",
                    help="use AMICI models compiled by an earlier run (their compile time "
                         "as recorded then)")
    ap.add_argument("--fit", type=int, default=0, help="N-start fits of both")
    ap.add_argument("--fit-rtol", type=float, default=1e-8)
    ap.add_argument("--fit-atol", type=float, default=1e-12)
    ap.add_argument("--fit-time", type=float, default=1800.0,
                    help="wall-clock limit of each tool's fit (s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the fits' starts")
    ap.add_argument("--stiff-suite", action="store_true",
                    help="add Robertson and the reaction chains (PEtab export)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 30, 100])
    ap.add_argument("--models-dir", default="/tmp/amici_models",
                    help="where AMICI's compiled models and the starts files go")
    ap.add_argument("--export-dir", default="/tmp/dl_stiff_petab")
    ap.add_argument("--peer-timeout", type=float, default=1800.0)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json-out", help="write every measurement to this JSON file")
    ap.add_argument("--verbose", action="store_true", help="show the peer's stderr")
    ap.add_argument("--amici-json", help="reuse AMICI's compile record and fits from this "
                    "JSON of an earlier run (see the notes)")
    ap.add_argument("--from-json", nargs="+", metavar="JSON",
                    help="run nothing: print the tables of these earlier runs")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(HERE))
    from _table import print_table

    if args.from_json:
        results = [r for p in args.from_json for r in json.loads(Path(p).read_text())]
        # the settings those runs used (files written before they were stored: the
        # tolerances their timings ran at, the repeats unknown)
        tols = {float(k) for r in results for rnd in r.get("dl_rounds") or []
                for k in rnd if "/" not in k}
        args.tols = sorted(tols) or args.tols
        reps = {(r.get("settings") or {}).get("repeats") for r in results}
        args.repeats = reps.pop() if len(reps) == 1 and None not in reps else "?"
        args.rounds = "/".join(sorted({str(len(r.get("dl_rounds") or [])) for r in results}))
        print_tables(results, args, print_table)
        return 0
    todo: list[tuple[str, Path]] = []
    if not args.no_collection:
        root = Path(args.collection)
        for name in args.problems or default_problems(root):
            todo.append((name, problem_yaml(root, name)))
    if args.stiff_suite:
        todo += stiff_suite(args)
    results = []
    for label, yaml in todo:
        results.append(compare_problem(args, label, yaml))
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(results, indent=1))
    print()
    print(uptime())
    print_tables(results, args, print_table)
    return 0


def print_tables(results: list[dict], args, print_table) -> None:
    """The timing table (if any round ran), then the fit tables."""
    if any(res.get("dl_rounds") for res in results):
        print(f"times: medians of {args.repeats} calls, median over {args.rounds} "
              "alternating rounds; ratio = dynlearn / AMICI")
        print_table(HEADER, table_rows(results, args.tols), args.markdown)
    frows = fit_rows(results)
    if frows:
        print()
        print_table(FIT_HEADER, frows, args.markdown)
        print()
        print(f"starts needed: a start reaches the published optimum when it ends at most "
              f"{REACH} above the nllh at the nominal parameters; starts needed = 1 + the "
              "index of the first that does; '>' = stopped by --fit-time")
        print_table(REACH_HEADER, reach_rows(results), args.markdown)
        print()
        print_table(START_HEADER, start_rows(results), args.markdown)


if __name__ == "__main__":
    sys.exit(main())
