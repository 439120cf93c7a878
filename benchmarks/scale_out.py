"""Scale-out on Dask (issues 6 and 16): serial against a local cluster, and the per-task overhead.

A small model first (issue 16): multi-start fits of the bundled lynx-hare example
(Lotka-Volterra, four rates, ``loss="log"``, ``y0="estimate"``) with ``--small-starts``
starts (16, 64, 256), serially, on Dask with tasks sized by cost (the default), and on Dask
with one start per task (``dl.Parallel(client, over="starts", task_seconds=None)``: how it
was before; ``--packing sized|one`` runs only one of the two); the median of
``--small-repeats`` runs, all alternating, and the Dask overhead per task: the time a worker
sits idle between two tasks of the fit (from Dask's task stream; median and 90th
percentile). Then the workers' cache of compiled models: the first evaluation round of a
new fit of a model the workers fitted before, with the cache and with it emptied
(``--cache-repeats`` new fits each, alternating; lynx-hare and the heavy problem below).
``--small-only`` stops there.

Then a heavy problem: a hybrid Lotka-Volterra model (the four mass-action terms with unknown
rates, bounded to +-25% of the truth, plus a 2-5-5-5-2 rbf network correcting both equations,
started small: 91 parameters) fitted to 32 experiments, each from its own initial state
(drawn uniformly in [1, 2.5] x [1, 2.5], around the equilibrium (2.25, 1.44); seed 0),
sampled every 0.1 up to t = 10 with 5% multiplicative noise; RK45 at rtol = atol = 1e-8.

Measured, serially (in-process) and on a ``LocalCluster`` of ``--workers`` processes with one
thread each (``dynlearn.distributed.local_client``, defined in
``dynlearn.distributed.dask``):

* one residual Jacobian, stacked; what a Levenberg-Marquardt iteration needs (serially the
  Jacobian, on Dask the triangular factor of ``[J r]``, each worker reducing its rows by a
  QR decomposition); and one loss gradient (adjoint; what L-BFGS and Adam need); the
  experiments split into one batch per worker; the median of ``--repeats``, serial and Dask
  runs alternating, after a warm-up;
* a whole fit, ``dl.fit(..., optimizer=dl.LevenbergMarquardt(max_iter=--fit-iters))``, end
  to end (scattering the objective and compiling the model on the workers included);
* multi-start, ``n_starts = 4 x workers`` with the same optimizer, each start a task;
* the ceiling: the same split of the same evaluations over plain processes
  (``multiprocessing``, no Dask), alternating with the serial run: what the machine itself
  allows (on a shared virtual machine, two busy processes do not always get two cores);
* the per-task overhead of the cluster: the round trip of an empty task, the cost per task
  of a burst of empty tasks, and the overhead per evaluation round in the Jacobian
  measurement (``dask time - serial time / workers``).

Usage::

    python benchmarks/scale_out.py [--experiments 32] [--workers 2] [--repeats 9]
                                   [--fit-iters 20] [--small-starts 16,64,256]
                                   [--small-repeats 3] [--packing both|sized|one]
                                   [--cache-repeats 5] [--small-only] [--markdown]

The machine should be otherwise idle: the script reports the CPU time other processes
took during the run, and speedups measured next to other jobs are meaningless.
"""

from __future__ import annotations

import os

# Dask's nanny starts workers with one BLAS thread (distributed.nanny.pre-spawn-environ);
# the serial side gets the same, so that both run the same code the same way (threads
# only add synchronisation on these tiny matrices). Set before numpy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import sympy as sp  # noqa: E402
from _table import print_table  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

import dynlearn as dl  # noqa: E402

RTOL = ATOL = 1e-8


def problem(n_exp: int = 32, n_t: int = 101, t_end: float = 10.0, seed: int = 0):
    """The hybrid model and a dataset of ``n_exp`` experiments."""
    x, y = sp.symbols("x y")
    a, b, c, d = sp.symbols("alpha beta gamma delta")
    nn = dl.MLP("nn", inputs=[x, y], outputs=2, hidden=[5, 5, 5], activation="rbf", seed=0,
                scale=0.1)
    # rates within +-25% of the truth, log-transformed: random starts are drawn in there
    rates = {a: 1.3, b: 0.9, c: 0.8, d: 1.8}
    params = {s: dl.Parameter(v, min=0.75 * v, max=1.25 * v, transform="log")
              for s, v in rates.items()}
    model = dl.HybridModel(states=[x, y],
                           rhs={x: a * x - b * x * y + nn[0], y: c * x * y - d * y + nn[1]},
                           params=params, name="lv-hybrid")
    truth = dl.HybridModel(states=[x, y], rhs={x: a * x - b * x * y, y: c * x * y - d * y},
                           params=rates)
    rng = np.random.default_rng(seed)
    t = np.linspace(0, t_end, n_t)
    frames = []
    for i in range(n_exp):
        y0 = rng.uniform([1.0, 1.0], [2.5, 2.5])
        Y = dl.simulate(truth, t, y0, rtol=1e-10, atol=1e-10).y
        Y = Y * (1 + 0.05 * rng.standard_normal(Y.shape))
        frames.append(pd.DataFrame({"run": f"e{i:02d}", "t": t, "x": Y[:, 0], "y": Y[:, 1]}))
    return model, dl.Dataset.from_frame(pd.concat(frames), group="run")


def objective_settings(model, data):
    """The settings ``dl.fit`` builds its objective from (y0 from the first rows)."""
    from dynlearn.core.parameters import ParameterSpace
    from dynlearn.objective.binding import FirstRow
    y0s = FirstRow()
    bound = y0s.bind(model, data)
    space = ParameterSpace(model, y0s.parameters(model, data, bound), [e.name for e in data])
    return dict(model=model, bound=bound, space=space, l2=1e-3, rtol=RTOL, atol=ATOL)


def paired_times(f_serial, f_dask, repeats: int) -> tuple[float, float]:
    """Median times of two functions, run alternately after a warm-up of each (alternating
    spreads the machine's slow spells over both sides)."""
    f_serial(), f_dask()  # warm-up: compilation, caches, first transfer
    ts, tp = [], []
    for _ in range(repeats):
        for f, out in ((f_serial, ts), (f_dask, tp)):
            t0 = time.perf_counter()
            f()
            out.append(time.perf_counter() - t0)
    return statistics.median(ts), statistics.median(tp)


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds used by the whole machine, by this process and its children) so far.

    Their difference over a run is what other jobs took: on a shared 2-core machine it is
    the difference between a speedup and a measurement of the neighbours.
    """
    import psutil  # a dependency of dask.distributed
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    me = psutil.Process()
    t = me.cpu_times()
    own = t.children_user + t.children_system   # workers that have exited already
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            own += t.user + t.system
        except psutil.Error:
            pass
    return busy, own


def _ceiling_worker(n_exp, batch, what, repeats, barrier, results):
    from dynlearn.distributed.fanned import experiment_task
    from dynlearn.objective.objective import FitObjective
    model, data = problem(n_exp)
    settings = objective_settings(model, data)
    x0 = settings["space"].x0
    obj = FitObjective(**settings)
    experiment_task(obj, "c", batch, what, x0, obj.sigma_hat)   # warm-up, fills the cache
    for _ in range(repeats + 1):
        barrier.wait()
        t0 = time.perf_counter()
        experiment_task("c", "c", batch, what, x0, obj.sigma_hat)
        results.put(time.perf_counter() - t0)


def ceiling(n_exp: int, workers: int, what: str, repeats: int) -> tuple[float, float]:
    """The same split of the same evaluation over plain processes (multiprocessing, no Dask),
    alternating with the serial evaluation: median (serial, parallel wall) times.

    This is the speedup the machine itself allows; on a shared virtual machine two busy
    processes do not always get two cores' worth.
    """
    import multiprocessing as mp

    from dynlearn.distributed.fanned import contiguous_batches
    from dynlearn.objective.objective import FitObjective
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(workers + 1), ctx.Queue()
    procs = [ctx.Process(target=_ceiling_worker, args=(n_exp, b, what, repeats, barrier,
                                                       results), daemon=True)
             for b in contiguous_batches(n_exp, None, workers)]
    for p in procs:
        p.start()
    model, data = problem(n_exp)
    settings = objective_settings(model, data)
    x0 = settings["space"].x0
    f = getattr(FitObjective(**settings), "compute_" + what)   # not remembered between calls
    f(x0)
    ts, tp = [], []
    try:
        for r in range(repeats + 1):
            t0 = time.perf_counter()
            f(x0)                          # the children wait at the barrier meanwhile
            t_serial = time.perf_counter() - t0
            t0 = time.perf_counter()
            barrier.wait()
            for _ in procs:
                results.get(timeout=600)
            if r:                          # round 0 waits for the children to start
                ts.append(t_serial)
                tp.append(time.perf_counter() - t0)
    finally:
        for p in procs:
            p.join(timeout=60)
    return statistics.median(ts), statistics.median(tp)


def _noop(i):
    return i


def task_overhead(client, n_round_trips: int = 50, burst: int = 200) -> dict:
    """Round trip of one empty task, and time per task in a burst of empty tasks."""
    client.submit(_noop, -1, pure=False).result()
    rt = []
    for i in range(n_round_trips):
        t0 = time.perf_counter()
        client.submit(_noop, i, pure=False).result()
        rt.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    client.gather(client.map(_noop, range(burst), pure=False))
    per_task = (time.perf_counter() - t0) / burst
    return {"round_trip_ms": 1e3 * statistics.median(rt), "burst_per_task_ms": 1e3 * per_task}


# --- a small model: where the per-task overhead decides ------------------------------------
PLACE_COLUMNS = ["worker", "task", "seconds", "task_seconds"]


def lynx_hare():
    """The bundled Lotka-Volterra lynx-hare example (``dynlearn example lynx_hare``): four
    log-transformed rates, fitted with the estimated initial state."""
    from pathlib import Path
    hare, lynx = sp.symbols("hare lynx")
    a, b, g, d = sp.symbols("alpha beta gamma delta")
    params = {s: dl.Parameter(v, min=0.0, transform="log")
              for s, v in ((a, 0.5), (b, 0.02), (g, 0.8), (d, 0.02))}
    model = dl.HybridModel(states=[hare, lynx],
                           rhs={hare: a * hare - b * hare * lynx, lynx: d * hare * lynx - g * lynx},
                           params=params, name="lynx-hare")
    csv = Path(dl.__file__).parent / "bundled" / "models" / "lynx_hare.csv"
    return model, dl.Dataset.from_frame(pd.read_csv(csv).rename(columns={"year": "t"}))


def task_gaps(stream, prefix: str) -> list[float]:
    """Per task: the time its worker sat idle before it (since that worker's previous task
    of ``prefix``, from Dask's task stream) plus the task's own time beyond its items (the
    scheduling, transfer and bookkeeping each task costs; the first task of each worker is
    left out)."""
    by_worker: dict = {}
    for rec in stream:
        key = str(rec["key"] if isinstance(rec["key"], str) else rec["key"][0])
        if not key.startswith(prefix):
            continue
        for ss in rec["startstops"]:
            if ss["action"] == "compute":
                by_worker.setdefault(rec["worker"], []).append((ss["start"], ss["stop"]))
    gaps = []
    for spans in by_worker.values():
        spans.sort()
        gaps += [b0 - a1 for (_, a1), (b0, _) in zip(spans, spans[1:])]
    return gaps


#: Dask configurations of the small-model measurement: tasks sized by cost (now, the
#: default) and one start per task (before the packing)
PACKINGS = {"sized": {}, "one": {"over": "starts", "task_seconds": None}}


def small_model(client, workers: int, sizes, repeats: int,
                packings=("sized", "one")) -> list[dict]:
    """Lynx-hare multi-start (loss="log", y0="estimate"): serial against Dask with each of
    ``packings`` (see :data:`PACKINGS`): medians of ``repeats`` runs, all alternating; the
    Dask overhead per task (median, 90th percentile) and the tasks of each."""
    from distributed import get_task_stream
    model, data = lynx_hare()
    kw = dict(loss="log", y0="estimate", progress=False)
    configs = [("serial", None)] + [(p, dl.Parallel(client, **PACKINGS[p])) for p in packings]
    dl.fit(model, data, n_starts=2 * workers, seed=0, client=client, **kw)   # warm-up
    rows = []
    for n in sizes:
        times: dict = {name: [] for name, _ in configs}
        gaps: dict = {name: [] for name in packings}
        tasks: dict = {}
        ref = same = None
        for _ in range(repeats):
            for name, cl in configs:
                with get_task_stream(client) as ts:
                    t0 = time.perf_counter()
                    r = dl.fit(model, data, n_starts=n, seed=0, client=cl, **kw)
                    times[name].append(time.perf_counter() - t0)
                frame = r.starts.drop(columns=PLACE_COLUMNS, errors="ignore")
                if name == "serial":
                    ref = frame
                else:
                    gaps[name] += task_gaps(ts.data, "dynlearn-starts")
                    same = frame.equals(ref) if same is None else same and frame.equals(ref)
                    tasks[name] = r.starts["task"].nunique() if "task" in r.starts else 0
        rows.append({"starts": n, "times": {k: statistics.median(v) for k, v in times.items()},
                     "tasks": tasks,
                     "gaps_ms": {k: (1e3 * float(np.median(g)), 1e3 * float(np.quantile(g, 0.9)))
                                 if g else (float("nan"), float("nan")) for k, g in gaps.items()},
                     "check": "identical starts" if same else "starts differ"})
        print(f"  (so far: {n} starts, medians {rows[-1]['times']}, tasks {tasks})", flush=True)
    return rows


def model_cache_effect(client, problems, repeats: int) -> list[list]:
    """The first task of a new fit on workers that ran a fit of the same model before: with
    the workers' cache of compiled models (``dynlearn.distributed.dask.share_compiled``) and
    with the cache emptied just before (``clear_compiled_models``: every worker compiles the
    model again, as every fit did before the cache).

    A new fit is a new experiment-split objective (``FannedObjective``: its objective is
    scattered under a new key, so the per-fit cache cannot help), and its first task the
    first evaluation of the residuals (one task per worker: unpickling the objective, getting
    the model compiled, solving each experiment once). ``problems``: ``(label, model,
    data)``; medians over ``repeats`` new fits of each kind, alternating.
    """
    from dynlearn.distributed.dask import Parallel, clear_compiled_models, model_cache_info
    from dynlearn.distributed.fanned import FannedObjective
    rows = []
    for label, model, data in problems:
        settings = objective_settings(model, data)
        x0 = settings["space"].x0
        times: dict = {"compiled": [], "cached": []}
        for r in range(repeats + 1):
            for name in ("compiled", "cached"):
                if name == "compiled":
                    client.run(clear_compiled_models)
                fanned = FannedObjective(Parallel(client), **settings)
                try:
                    t0 = time.perf_counter()
                    fanned.compute_residuals(x0)
                    if r:                        # round 0: warm-up
                        times[name].append(time.perf_counter() - t0)
                finally:
                    fanned.close()
        hits = sum(i["hits"] for i in client.run(model_cache_info).values())
        rows.append([label, 1e3 * statistics.median(times["compiled"]),
                     1e3 * statistics.median(times["cached"]), hits])
        print(f"  (so far: model cache {rows[-1]})", flush=True)
    return rows


def run(args) -> dict:
    from dynlearn.distributed.dask import Parallel, local_client
    from dynlearn.distributed.fanned import FannedObjective
    from dynlearn.objective.objective import FitObjective
    model, data = problem(args.experiments)
    settings = objective_settings(model, data)
    x0 = settings["space"].x0
    serial = FitObjective(**settings)
    rows, extra = [], {}
    client = local_client(args.workers)
    try:
        client.wait_for_workers(args.workers)
        if args.small_starts:
            extra["small"] = small_model(client, args.workers, args.small_starts,
                                         args.small_repeats, args.packings)
        if args.cache_repeats:
            extra["cache"] = model_cache_effect(
                client, [("lynx-hare, 1 experiment", *lynx_hare()),
                         (f"heavy problem, {args.experiments} experiments", model, data)],
                args.cache_repeats)
        if args.small_only:
            return {"rows": rows, **extra}
        fanned = FannedObjective(Parallel(client), **settings)
        try:
            # the raw evaluations (the public methods remember their last point). An LM step
            # needs the Jacobian serially, and on Dask the triangular factor of [J r], which
            # the workers reduce their rows to: compared through the normal equations
            rel = lambda a, b: float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))  # noqa: E731
            for (ws, wp), label in ((("compute_jacobian", "compute_jacobian"),
                                     "residual Jacobian"),
                                    (("compute_jacobian", "compute_system"),
                                     "LM step's system (Dask: QR-reduced on the workers)"),
                                    (("compute_cost_and_grad", "compute_cost_and_grad"),
                                     "loss gradient (adjoint)")):
                f_s, f_p = getattr(serial, ws), getattr(fanned, wp)
                ts, tp = paired_times(lambda f=f_s: f(x0), lambda f=f_p: f(x0), args.repeats)
                a_s, a_p = f_s(x0), f_p(x0)
                if wp == "compute_system":
                    (r, J), (_, A, b) = a_s, a_p
                    err = max(rel(A.T @ A, J.T @ J), rel(A.T @ b, J.T @ r))
                    check = f"normal equations: max rel. diff {err:.1e}"
                else:
                    err = max(rel(p, s) for s, p in zip(a_s, a_p))
                    check = f"max rel. diff {err:.1e}"
                rows.append([f"{label}, {args.experiments} experiments", ts, tp, check])
                print(f"  (so far: {rows[-1]})", flush=True)
                if wp == "compute_jacobian":
                    extra["round_overhead_ms"] = 1e3 * (tp - ts / args.workers)
            extra["batches"] = len(fanned.batches)
        finally:
            fanned.close()

        for what, label in (("jacobian", "residual Jacobian"), ("cost_and_grad",
                                                                  "loss gradient")):
            ts, tp = ceiling(args.experiments, args.workers, what, args.repeats)
            rows.append([f"  same split over {args.workers} plain processes, no Dask: "
                         f"the machine's ceiling ({label})", ts, tp, ""])
            print(f"  (so far: {rows[-1]})", flush=True)

        opt = dl.LevenbergMarquardt(max_iter=args.fit_iters)
        kw = dict(optimizer=opt, rtol=RTOL, atol=ATOL, l2=1e-3, progress=False)
        t0 = time.perf_counter()
        r_s = dl.fit(model, data, **kw)
        ts = time.perf_counter() - t0
        t0 = time.perf_counter()
        r_p = dl.fit(model, data, client=client, **kw)
        tp = time.perf_counter() - t0
        same = "identical x" if np.array_equal(r_s.x, r_p.x) else \
            f"max abs. diff of x {np.max(np.abs(r_s.x - r_p.x)):.1e}"
        rows.append([f"fit, LM {args.fit_iters} iterations ({r_s.njev} Jacobians, "
                     f"{r_s.nfev} solves)", ts, tp, same])
        print(f"  (so far: {rows[-1]})", flush=True)

        k = 4 * args.workers
        sub = dl.Dataset(data.experiments[:args.starts_experiments])
        t0 = time.perf_counter()
        m_s = dl.fit(model, sub, n_starts=k, seed=0, **kw)
        ts = time.perf_counter() - t0
        packed = dl.Parallel(client, **PACKINGS["one" if args.packings == ("one",)
                                              else "sized"])
        t0 = time.perf_counter()
        m_p = dl.fit(model, sub, n_starts=k, seed=0, client=packed, **kw)
        tp = time.perf_counter() - t0
        same = ("identical starts" if m_s.starts.equals(
            m_p.starts.drop(columns=PLACE_COLUMNS, errors="ignore")) else "starts differ")
        rows.append([f"multi-start, {k} starts x {args.starts_experiments} experiments",
                     ts, tp, same])
        extra.update(task_overhead(client))
    finally:
        client.close()
    return {"rows": rows, **extra}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--fit-iters", type=int, default=20)
    ap.add_argument("--starts-experiments", type=int, default=8,
                    help="experiments in the multi-start measurement")
    ap.add_argument("--small-starts", type=lambda v: [int(k) for k in v.split(",") if k],
                    default=[16, 64, 256],
                    help="starts of the lynx-hare multi-start measurement (comma-separated; "
                         "empty: skip it)")
    ap.add_argument("--small-repeats", type=int, default=3)
    ap.add_argument("--small-only", action="store_true",
                    help="only the lynx-hare measurements (multi-start, model cache)")
    ap.add_argument("--packing", dest="packings", default="both",
                    type=lambda v: {"both": ("sized", "one"), "sized": ("sized",),
                                    "one": ("one",)}[v],
                    help="Dask configurations of the multi-start measurements: 'sized' "
                         "(tasks sized by cost, the default since issue 16), 'one' (one "
                         "start per task, no packing: as before) or 'both' side by side "
                         "(default)")
    ap.add_argument("--cache-repeats", type=int, default=5,
                    help="new fits per kind in the model-cache measurement (0: skip it)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    print(f"{os.cpu_count()} cores; load average (1 min) before the run: "
          f"{os.getloadavg()[0]:.2f}")
    busy0, own0 = cpu_seconds()
    t0 = time.perf_counter()
    out = run(args)
    wall = time.perf_counter() - t0
    busy1, own1 = cpu_seconds()
    foreign = max(0.0, (busy1 - busy0) - (own1 - own0))
    if out.get("small"):
        w = args.workers
        label = {"sized": "sized tasks", "one": "1 start/task"}
        packs = args.packings
        print(f"lynx-hare multi-start (loss='log', y0='estimate'), median of "
              f"{args.small_repeats}, all configurations alternating")
        header = ["starts", "serial (s)"]
        for p in packs:
            header += [f"Dask {w} w., {label[p]} (s)", "speedup"]
        header += ["tasks (" + " / ".join(label[p] for p in packs) + ")", "check"]
        table = []
        for row in out["small"]:
            t = row["times"]
            line = [str(row["starts"]), f"{t['serial']:.2f}"]
            for p in packs:
                line += [f"{t[p]:.2f}", f"{t['serial'] / t[p]:.2f}x"]
            line += [" / ".join(str(row["tasks"][p]) for p in packs), row["check"]]
            table.append(line)
        print_table(header, table, args.markdown)
        print("Dask overhead per task: the time a worker sits idle between two tasks of the "
              "fit (Dask's task stream), ms")
        header = ["starts"] + [f"{label[p]}: median / p90" for p in packs]
        table = [[str(row["starts"])] + [f"{row['gaps_ms'][p][0]:.1f} / "
                                         f"{row['gaps_ms'][p][1]:.1f}" for p in packs]
                 for row in out["small"]]
        print_table(header, table, args.markdown)
    if out.get("cache"):
        print(f"the first evaluation round of a new fit (a new split objective) on workers "
              f"that fitted the model before, median of {args.cache_repeats}: compiling the "
              "model again (cache emptied) against its compiled functions kept by the workers")
        header = ["problem", "compiling (ms)", "kept (ms)", "saved (ms)",
                  "cache hits (last fit)"]
        table = [[lab, f"{tc:.0f}", f"{tk:.0f}", f"{tc - tk:.0f}", str(h)]
                 for lab, tc, tk, h in out["cache"]]
        print_table(header, table, args.markdown)
    if out["rows"]:
        header = ["task", "serial (s)", f"Dask, {args.workers} workers (s)", "speedup",
                  "check"]
        table = [[r[0], f"{r[1]:.3f}", f"{r[2]:.3f}", f"{r[1] / r[2]:.2f}x", r[3]]
                 for r in out["rows"]]
        print_table(header, table, args.markdown)
    if "round_trip_ms" in out:
        print(f"per-task overhead: {out['round_trip_ms']:.1f} ms round trip of an empty "
              f"task; {out['burst_per_task_ms']:.2f} ms per task in a burst of 200; "
              f"{out['round_overhead_ms']:.0f} ms per evaluation round beyond an ideal split "
              f"({out['batches']} batches of {args.experiments // out['batches']} "
              "experiments)")
    print(f"other processes used {foreign:.1f} CPU-seconds during the {wall:.0f} s run "
          f"({100 * foreign / wall:.0f}% of one core)"
          + ("; rerun on an idle machine" if foreign > 0.05 * wall else ""))
    out["foreign_cpu_s"], out["wall_s"] = foreign, wall
    return out


if __name__ == "__main__":
    main()
