"""The forward-sensitivity right-hand side of physics-only models beyond the symbolic system,
before and after a change, side by side (issue #15: the per-step Python of stiff
forward-sensitivity gradients).

The previous ``dynlearn/sensitivity/forward.py`` (and ``CompiledExprs.__call__``, which the
previous right-hand side went through) are loaded from a git revision (``--baseline``,
default ``HEAD``) beside the working tree's, and swapped in turn into
``ForwardSensitivity``; for every problem:

* microseconds per right-hand-side call: the function of one sensitivity solve of the
  gradient (the first one not taking the symbolic system), at a state from the middle of
  that solve, best of ``--batches`` interleaved batches of ``--calls`` calls, for the
  baseline and for the working tree with ``product="auto"``, ``"dense"`` and ``"sparse"``
  (:func:`dynlearn.sensitivity.forward.compiled_sensitivity_rhs`), with their largest
  difference from the baseline's result relative to its largest entry;
* seconds per gradient: ``loss_and_grad`` at the nominal parameters with the baseline and
  with the working tree (``auto``), interleaved, medians of ``--repeats`` after one round
  that compiles, and the gradients' norm-wise relative difference.

Problems: PEtab benchmark-collection problems (``--petab ROOT --problems ...``) at their
loader's tolerances (or ``--rtol/--atol``), and the reaction chains of
``benchmarks/bench_stiff.py`` (``--chains 10 30 100``; LSODA, rtol 1e-8, atol 1e-10).

Usage::

    python benchmarks/forward_rhs.py --petab ../shared/petab/benchmark-models/Benchmark-Models \\
        --problems Raimundez_PCB2020 Bachmann_MSB2011 [--chains 10 30 100] \\
        [--baseline REV] [--repeats 3] [--markdown]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _table import print_table  # noqa: E402

import dynlearn as dl  # noqa: E402
import dynlearn.sensitivity.forward as forward  # noqa: E402
from dynlearn.core.symbolic import CompiledExprs  # noqa: E402

VARIANTS = ("auto", "dense", "sparse")


def load_baseline(rev: str, path: str, name: str):
    """The module at ``path`` as of git revision ``rev``, imported under ``name``."""
    src = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=HERE.parent, check=True,
                         capture_output=True, text=True).stdout
    tmp = Path(tempfile.mkdtemp()) / f"{name}.py"
    tmp.write_text(src)
    spec = importlib.util.spec_from_file_location(name, tmp)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Swapper:
    """Puts the baseline's or the working tree's right-hand side into ForwardSensitivity,
    and records the first non-symbolic sensitivity right-hand side each one builds."""

    def __init__(self, rev: str):
        self.old = load_baseline(rev, "dynlearn/sensitivity/forward.py", "baseline_forward")
        old_sym = load_baseline(rev, "dynlearn/core/symbolic.py", "baseline_symbolic")
        self.old_call = old_sym.CompiledExprs.__call__
        self.new_call = CompiledExprs.__call__
        self.new_integrate = forward.ForwardSensitivity._integrate
        self.old_integrate = self.old.ForwardSensitivity._integrate
        self.make_rhs = forward.compiled_sensitivity_rhs
        self.captured: dict = {}
        self.capture_as = None
        for mod in (self.old, forward):
            mod.integrate = self._recording(mod.integrate)

    def _recording(self, integrate):
        def wrapped(fun, span, z0, t_obs, breaks, **kw):
            res = integrate(fun, span, z0, t_obs, breaks, **kw)
            key = self.capture_as
            if key is not None and key not in self.captured and z0.size > \
                    forward.SENSITIVITY_SYSTEM_LIMIT and res.status == 0:
                self.captured[key] = (fun, float(t_obs[t_obs.size // 2]),
                                      res.y[:, t_obs.size // 2].copy())
            return res
        return wrapped

    def use(self, variant: str, capture: bool = False):
        self.capture_as = variant if capture else None
        if variant == "before":
            forward.ForwardSensitivity._integrate = self.old_integrate
            CompiledExprs.__call__ = self.old_call
            return
        forward.ForwardSensitivity._integrate = self.new_integrate
        CompiledExprs.__call__ = self.new_call
        make = self.make_rhs
        forward.compiled_sensitivity_rhs = (
            lambda vf, q, W, product="auto": make(vf, q, W, variant))


def per_call(fns, t, z, batches: int, calls: int) -> list[float]:
    best = [np.inf] * len(fns)
    for _ in range(batches):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn(t, z)
            best[i] = min(best[i], (time.perf_counter() - t0) / calls * 1e6)
    return best


def run(name, grad, sw: Swapper, args) -> list[str]:
    """One row: ``grad()`` returns a gradient with whatever ForwardSensitivity does now."""
    # first round: compiles, and records each variant's right-hand side
    sw.captured.clear()
    grads = {}
    for v in ("before", *VARIANTS):
        sw.use(v, capture=True)
        grads[v] = grad()
    ref = grads["before"]
    rel = {v: float(np.linalg.norm(grads[v] - ref) / np.linalg.norm(ref)) for v in VARIANTS}
    cells = [name]
    if "before" in sw.captured:
        fns = [sw.captured[v][0] for v in ("before", *VARIANTS)]
        _, t, z = sw.captured["before"]
        sw.use("auto")
        out0 = fns[0](t, z)
        # (relative to the largest entry; absolute where the state makes all of them zero)
        diff = max(float(np.max(np.abs(fn(t, z) - out0))) for fn in fns[1:]) / \
            (float(np.max(np.abs(out0))) or 1.0)
        us = per_call(fns, t, z, args.batches, args.calls)
        cells += [f"{z.size}", f"{us[0]:.1f}", *(f"{u:.1f}" for u in us[1:]),
                  f"{us[0] / us[1]:.2f}", f"{diff:.1e}"]
    else:
        cells += ["symbolic"] + ["-"] * 6
    times = {"before": [], "auto": []}
    for _ in range(args.repeats):
        for v in times:
            sw.use(v)
            t0 = time.perf_counter()
            g = grad()
            times[v].append(time.perf_counter() - t0)
            if v == "auto":
                rel["auto"] = max(rel["auto"],
                                  float(np.linalg.norm(g - ref) / np.linalg.norm(ref)))
    tb, ta = (float(np.median(times[v])) for v in ("before", "auto"))
    cells += [f"{tb:.3g}", f"{ta:.3g}", f"{tb / ta:.2f}", f"{rel['auto']:.1e}",
              f"{max(rel['dense'], rel['sparse']):.1e}"]
    sw.use("auto")
    print(cells, flush=True)
    return cells


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--petab", help="the collection's Benchmark-Models directory")
    ap.add_argument("--problems", nargs="*", default=[])
    ap.add_argument("--chains", type=int, nargs="*", default=[])
    ap.add_argument("--rtol", type=float)
    ap.add_argument("--atol", type=float)
    ap.add_argument("--baseline", default="HEAD")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, default=7)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    sw = Swapper(args.baseline)
    rows = []
    kw = {k: getattr(args, k) for k in ("rtol", "atol") if getattr(args, k) is not None}
    for name in args.problems:
        problem = dl.petab.load(os.path.join(args.petab, name, f"{name}.yaml"), **kw)
        x = problem.x_nominal
        rows.append(run(name, lambda problem=problem, x=x: problem.loss_and_grad(x)[1],
                        sw, args))
    if args.chains:
        from bench_stiff import chain_problem
        for n in args.chains:
            model, data, theta = chain_problem(n)

            def grad(model=model, data=data, theta=theta):
                return dl.loss_and_grad(model, data, theta, method="LSODA", rtol=1e-8,
                                        atol=1e-10, sensitivity=dl.ForwardSensitivity())[1]
            rows.append(run(f"chain n={n}", grad, sw, args))
    print()
    print(f"load {os.getloadavg()}; baseline {args.baseline}; us per right-hand-side call "
          f"best of {args.batches} x {args.calls}, interleaved; gradient s medians of "
          f"{args.repeats}, interleaved")
    print_table(["problem", "components", "us before", "us auto", "us dense", "us sparse",
                 "per-call speed-up", "max rel. diff per call", "grad s before",
                 "grad s after", "speed-up", "grad rel. diff (auto)",
                 "grad rel. diff (dense/sparse)"], rows, args.markdown)


if __name__ == "__main__":
    main()
