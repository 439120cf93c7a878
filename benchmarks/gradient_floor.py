"""What bounds a PEtab gradient's cost against the problem's own likelihood evaluation
(issue #15 asks for at most 3x): two experiments on the forward-sensitivity path, side by
side in one process per problem.

* **The sensitivity system's Jacobian.** LSODA integrates ``[y, S]`` with a block-diagonal
  Jacobian (the states' ``J`` on every block, banded; ``dynlearn.core.bandwidth``). The
  exact one also has the blocks ``d(J S + df/dtheta W)/dy`` in its first block column,
  which no band holds. ``--full`` solves the same system again with LSODA's own
  difference-quotient Jacobian of the whole system (exact to rounding, dense): the steps,
  right-hand-side calls and Jacobians it takes show how much of the gradient's extra steps
  the block-diagonal approximation costs (Newton iterations that fail to converge), and
  what a dense Jacobian would cost.
* **A compiled right-hand side.** ``--jit`` (needs numba, not a dynlearn dependency)
  compiles ``f`` and the sensitivity right-hand side ``[f, J S + df/dtheta W]`` from the
  model's sympy equations with numba, and puts them in place of dynlearn's lambdified
  functions: what is left is LSODA's own work and the Python callback, for the state
  solve and for the gradient alike.

For each problem and variant: the median time of ``nllh`` and of ``loss_and_grad`` at the
nominal parameters (after one warm-up call), their ratio, LSODA's steps and Jacobian
evaluations summed over the simulations, and the gradient's relative difference from the
default path's; with ``--starts K`` also the gradient's steps and time against the
evaluation's at ``K`` random starts (``draw_starts(problem, K, 1)``), median and worst.

Example (session 14)::

    S=../shared/petab/benchmark-models/Benchmark-Models
    python benchmarks/gradient_floor.py --collection $S --problems Raia_CancerResearch2011 \\
        Elowitz_Nature2000 Fiedler_BMCSystBiol2016 --full --jit --markdown
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

# (benchmarks/ is on sys.path when run as a script)
from petab_gradient_cost import find_yaml, median_times  # noqa: E402  (the collection's layout, one place)


class LsodaCounts:
    """LSODA's counters (steps, right-hand sides, Jacobians) of every solve, read after
    each call into ODEPACK (scipy's ``ode("lsoda")`` object keeps them in ``iwork``)."""

    def __init__(self):
        import scipy.integrate._ode as ode_module

        self.last = {}
        cls = ode_module.lsoda
        run = cls.run
        counts = self

        def counted(integrator, *args):
            out = run(integrator, *args)
            iw = integrator.iwork
            # (the integrator is kept, so that its id is not reused before the reset)
            counts.last[id(integrator)] = (integrator, (int(iw[10]), int(iw[11]),
                                                        int(iw[12])))
            return out
        cls.run = counted

    def reset(self):
        self.last.clear()

    def total(self) -> list[int]:
        return [int(v) for v in np.sum([c for _, c in self.last.values()] or [(0, 0, 0)],
                                       axis=0)]


def jit_functions(model):
    """numba-compiled ``f(t, y, p)`` and ``s(t, z, p, W, q, index...)`` (the sensitivity
    right-hand side of :func:`dynlearn.sensitivity.forward.compiled_sensitivity_rhs`, same
    layout) from the model's equations, or None where numba or the printer cannot."""
    try:
        import numba
    except ImportError:
        return None
    import math

    import sympy as sp
    from sympy.printing.pycode import PythonCodePrinter

    from dynlearn.core.symbolic import jacobian_exprs
    from dynlearn.core.vectorfield import VectorField

    Y, P = list(model.states), list(model.param_symbols)
    n = len(Y)
    c = VectorField(model, np.zeros(len(P))).c
    free = [P[i] for i in c.free]
    rhs = list(model.rhs)
    J, G = jacobian_exprs(rhs, Y), jacobian_exprs(rhs, free)
    Jn = [(i, k, J[i][k]) for i in range(n) for k in range(n) if J[i][k] != 0]
    Gn = [(i, u, G[i][u]) for i in range(n) for u in range(len(free)) if G[i][u] != 0]
    names = {s: sp.Symbol(f"y[{i}]") for i, s in enumerate(Y)}
    names.update({s: sp.Symbol(f"p[{j}]") for j, s in enumerate(P)})
    names.update({s: sp.Symbol("t") for s in c._groups[0]})
    printer = PythonCodePrinter({"fully_qualified_modules": True})

    def body(exprs, out):
        defs, reduced = sp.cse([e.xreplace(names) for e in exprs])
        lines = [f"    {s} = {printer.doprint(e)}" for s, e in defs]
        return lines + [f"    {out}[{i}] = {printer.doprint(e)}" for i, e in
                        enumerate(reduced)]
    source = "\n".join(
        ["def f(t, y, p):", f"    out = np.empty({n})", *body(rhs, "out"), "    return out",
         "", "def s(t, z, p, W, q, Jr, Jc, Gr, Gc, Gv):", "    y = z",
         f"    v = np.empty({n + len(Jn) + len(Gn)})",
         *body(rhs + [e for *_, e in Jn] + [e for *_, e in Gn], "v"),
         f"    out = np.zeros({n} * (q + 1))", f"    out[:{n}] = v[:{n}]",
         "    for c in range(q):", f"        b = {n} * (c + 1)",
         "        for r in range(Jr.size):",
         f"            out[b + Jr[r]] += v[{n} + r] * z[b + Jc[r]]",
         "        for r in range(Gr.size):",
         "            out[b + Gr[r]] += v[Gv[r]] * W[Gc[r], c]",
         "    return out"])
    space = {"np": np, "math": math}
    try:
        exec(compile(source, "<jit>", "exec"), space)
    except SyntaxError:       # a function the printer does not know
        return None
    index = [np.array(a, dtype=np.int64) for a in
             ([i for i, *_ in Jn], [k for _, k, _ in Jn], [i for i, *_ in Gn],
              [u for _, u, _ in Gn], range(n + len(Jn), n + len(Jn) + len(Gn)))]
    opts = dict(error_model="numpy")
    return numba.njit(**opts)(space["f"]), numba.njit(**opts)(space["s"]), index


def use_jit(model) -> bool:
    """Put the compiled functions in place of dynlearn's (this process only)."""
    made = jit_functions(model)
    if made is None:
        return False
    f, s, (Jr, Jc, Gr, Gc, Gv) = made
    import dynlearn.sensitivity.forward as forward
    from dynlearn.core.vectorfield import VectorField

    def fun(self, t, y):
        self.nfev += 1
        p = self.__dict__.get("_jit_p")
        if p is None:
            p = self._jit_p = np.asarray(self.pl, dtype=float)
        return f(t, y, p)

    def sensitivity_rhs(vf, q, W, product="auto"):
        Wm = np.eye(vf.n_theta, q) if W is None else np.ascontiguousarray(W, dtype=float)
        p = np.asarray(vf.pl, dtype=float)
        used = np.isin(Gc, np.flatnonzero(np.any(Wm != 0, axis=1)))
        gr, gc, gv = Gr[used], Gc[used], Gv[used]

        def rhs(t, z):
            vf.nfev += 1
            return s(t, z, p, Wm, q, Jr, Jc, gr, gc, gv)
        return rhs
    VectorField.fun = fun
    forward.compiled_sensitivity_rhs = sensitivity_rhs
    return True


def measure(args) -> None:
    """The inner run: one problem, one variant."""
    import warnings

    import dynlearn as dl
    import dynlearn.sensitivity.forward as forward

    warnings.simplefilter("ignore")
    counts = LsodaCounts()
    p = dl.petab.load(args.inner, rtol=args.rtol, atol=args.atol, gradient="forward",
                      crawl_factor=None)
    row = dict(variant=args.variant)
    if args.variant == "full":
        # no banded layout: LSODA then differences the whole system's right-hand side
        forward.lsoda_layout = lambda *a, **k: None
    if args.variant == "jit":
        t = time.perf_counter()
        if not use_jit(p.model):
            print(json.dumps(dict(row, skipped="numba or the printer cannot")))
            return
        row["build"] = time.perf_counter() - t
    x = np.asarray(p.x_nominal, dtype=float)
    t = time.perf_counter()
    p.nllh(x)
    p.loss_and_grad(x)
    row["first"] = time.perf_counter() - t
    counts.reset()
    p.nllh(x)
    row["eval_counts"] = counts.total()
    counts.reset()
    _, g = p.loss_and_grad(x)
    row["grad_counts"] = counts.total()
    t_eval, t_grad, _ = median_times(p, x, args.repeats)
    row.update(eval=t_eval, grad=t_grad, g=list(map(float, g)))
    if args.starts:
        # away from the nominal point: the gradient's steps and time against the
        # evaluation's at random starts (one call each)
        from dynlearn.petab.fitting import draw_starts

        steps, times = [], []
        for xs in draw_starts(p, args.starts, 1):
            try:
                counts.reset()
                t = time.perf_counter()
                p.nllh(xs)
                te1, se = time.perf_counter() - t, counts.total()[0]
                counts.reset()
                t = time.perf_counter()
                p.loss_and_grad(xs)
                tg1, sg = time.perf_counter() - t, counts.total()[0]
            except Exception:       # a start the solver cannot do: not counted
                continue
            steps.append(sg / max(se, 1))
            times.append(tg1 / te1)
        row["starts"] = [len(steps), float(np.median(steps)), float(np.max(steps)),
                         float(np.median(times)), float(np.max(times))]
    print(json.dumps(row))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--collection", nargs="+", default=[])
    ap.add_argument("--problems", nargs="+", default=[])
    ap.add_argument("--rtol", type=float, default=1e-8)
    ap.add_argument("--atol", type=float, default=1e-12)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--starts", type=int, default=0,
                    help="also the steps and time at this many random starts")
    ap.add_argument("--full", action="store_true", help="also LSODA's full Jacobian")
    ap.add_argument("--jit", action="store_true", help="also numba-compiled functions")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--inner", help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="default", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        measure(args)
        return
    variants = ["default"] + (["full"] if args.full else []) + (["jit"] if args.jit else [])
    rows = []
    for name in args.problems:
        path = find_yaml(args.collection, name)
        base = None
        for v in variants:
            cmd = [sys.executable, __file__, "--inner", path, "--variant", v, "--rtol",
                   str(args.rtol), "--atol", str(args.atol), "--repeats", str(args.repeats),
                   "--starts", str(args.starts)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            if not lines:
                print(f"{name} {v}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            r = json.loads(lines[-1])
            r["problem"] = name
            if "skipped" in r:
                rows.append(r)
                continue
            g = np.asarray(r.pop("g"))
            if base is None:
                base = g
            r["diff"] = float(np.linalg.norm(g - base) / max(np.linalg.norm(base), 1e-300))
            rows.append(r)
            if not args.markdown:
                print(json.dumps(r), flush=True)
    if args.markdown:
        print("| problem | variant | eval s | grad s | grad/eval | steps eval | steps grad "
              "(x) | Jacobians eval / grad | grad vs default |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            if "skipped" in r:
                print(f"| {r['problem']} | {r['variant']} | {r['skipped']} |||||||")
                continue
            se, sg = r["eval_counts"][0], r["grad_counts"][0]
            print(f"| {r['problem']} | {r['variant']} | {r['eval']:.4f} | {r['grad']:.4f} | "
                  f"{r['grad'] / r['eval']:.2f} | {se} | {sg} ({sg / max(se, 1):.2f}) | "
                  f"{r['eval_counts'][2]} / {r['grad_counts'][2]} | {r['diff']:.1e} |")
        starts = [r for r in rows if r.get("starts")]
        if starts:
            print("\n| problem | variant | random starts | grad/eval steps median | max | "
                  "grad/eval time median | max |")
            print("|---|---|---|---|---|---|---|")
            for r in starts:
                k, sm, sx, tm, tx = r["starts"]
                print(f"| {r['problem']} | {r['variant']} | {k} | {sm:.2f} | {sx:.2f} | "
                      f"{tm:.1f} | {tx:.1f} |")


if __name__ == "__main__":
    main()
