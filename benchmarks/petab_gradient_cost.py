"""One likelihood and one likelihood + gradient of PEtab problems with several versions of
dynlearn side by side: time, gradient / evaluation and the gradient's error against
reference gradients (AMICI's).

Each version is a directory holding a ``dynlearn`` package (a checkout or ``git archive``
of a commit). For every problem the versions run one after another, each in its own
process (imports and compiled functions are not shared), ``--rounds`` times interleaved;
a row gives medians of ``--repeats`` calls after one warm-up call.

Example (session 12: the sensitivities' tolerances)::

    git archive 15cd4fb | tar -x -C /tmp/before
    S=../shared/petab
    python benchmarks/petab_gradient_cost.py --versions before=/tmp/before after=. \\
        --collection $S/benchmark-models/Benchmark-Models \\
        --gradients $S/benchmark-gradients.json \\
        --problems Raia_CancerResearch2011 Fiedler_BMCSystBiol2016 --markdown
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def find_yaml(collections: list[str], name: str) -> str:
    for c in collections:
        for candidate in (Path(c) / name / f"{name}.yaml", Path(c) / name / "problem.yaml"):
            if candidate.exists():
                return str(candidate)
    raise SystemExit(f"{name}: not found in {collections}")


def reference_gradient(files: list[str], name: str) -> dict | None:
    for f in files:
        data = json.loads(Path(f).read_text())
        if name in data:
            return data[name]
    return None


def median_times(p, x, repeats: int) -> tuple[float, float, object]:
    """Median seconds of ``p.nllh(x)`` and of ``p.loss_and_grad(x)`` over ``repeats``
    calls of each, interleaved, and the last gradient."""
    import numpy as np

    te, tg = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        p.nllh(x)
        te.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _, g = p.loss_and_grad(x)
        tg.append(time.perf_counter() - t0)
    return float(np.median(te)), float(np.median(tg)), g


def measure(args) -> None:
    """The inner run: one problem, one version (the one on ``sys.path``)."""
    import numpy as np

    import dynlearn as dl

    options = {"gradient": args.gradient}
    if args.rtol is not None:
        options.update(rtol=args.rtol, atol=args.atol)
    p = dl.petab.load(args.inner, **options)
    x = np.asarray(p.x_nominal, dtype=float)
    p.nllh(x)
    p.loss_and_grad(x)
    t_eval, t_grad, g = median_times(p, x, args.repeats)
    out = {"eval": t_eval, "grad": t_grad, "error": None}
    ref = json.loads(args.reference) if args.reference else None
    if ref:
        g0 = np.array([ref[k] for k in p.x_names], dtype=float)
        # references are gradients of the negative or of the positive log-likelihood
        out["error"] = float(min(np.linalg.norm(g - g0), np.linalg.norm(g + g0))
                             / np.linalg.norm(g0))
    print("RESULT " + json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", nargs="+", metavar="NAME=DIR",
                    help="directories holding a dynlearn package, each named")
    ap.add_argument("--collection", action="append", default=[],
                    help="a Benchmark-Models directory (repeatable)")
    ap.add_argument("--gradients", action="append", default=[],
                    help="reference gradients, JSON {problem: {parameter: value}}")
    ap.add_argument("--problems", nargs="+")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--rtol", type=float, help="default: dl.petab's")
    ap.add_argument("--atol", type=float)
    ap.add_argument("--gradient", default="forward", choices=("forward", "adjoint", "auto"))
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--inner", help=argparse.SUPPRESS)
    ap.add_argument("--reference", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        measure(args)
        return
    if not args.versions or not args.problems or not args.collection:
        ap.error("give --versions, --collection and --problems")
    if args.rtol is not None and args.atol is None:
        args.atol = args.rtol
    versions = [v.split("=", 1) for v in args.versions]
    results: dict = {}
    for _ in range(args.rounds):
        for name in args.problems:
            yaml = find_yaml(args.collection, name)
            ref = reference_gradient(args.gradients, name)
            for label, path in versions:
                cmd = [sys.executable, __file__, "--inner", yaml, "--repeats",
                       str(args.repeats), "--gradient", args.gradient]
                if args.rtol is not None:
                    cmd += ["--rtol", str(args.rtol), "--atol", str(args.atol)]
                if ref:
                    cmd += ["--reference", json.dumps(ref)]
                env = dict(os.environ, PYTHONPATH=str(Path(path).resolve()))
                try:
                    run = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                         timeout=args.timeout)
                    line = [s for s in run.stdout.splitlines() if s.startswith("RESULT ")]
                    res = (json.loads(line[-1][7:]) if line else
                           {"failed": (run.stderr.strip().splitlines() or ["?"])[-1][:120]})
                except subprocess.TimeoutExpired:
                    res = {"failed": f"over {args.timeout:g} s"}
                results.setdefault((name, label), []).append(res)
                print(f"# {name} {label}: {res}", file=sys.stderr, flush=True)
    labels = [lab for lab, _ in versions]
    head = ["problem"] + [f"{w} {lab}" for w in ("grad s", "grad/eval", "error")
                          for lab in labels]
    rows = []
    for name in args.problems:
        cells = {}
        for lab in labels:
            runs = [r for r in results[(name, lab)] if "failed" not in r]
            if not runs:
                cells[lab] = ("failed", "", results[(name, lab)][-1]["failed"])
                continue
            grad = sorted(r["grad"] for r in runs)[len(runs) // 2]
            ev = sorted(r["eval"] for r in runs)[len(runs) // 2]
            err = runs[-1]["error"]
            cells[lab] = (f"{grad:.3g}", f"{grad / ev:.3g}",
                          "" if err is None else f"{err:.1e}")
        rows.append([name] + [cells[lab][i] for i in range(3) for lab in labels])
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        for r in [head] + rows:
            print("  ".join(str(c) for c in r))


if __name__ == "__main__":
    main()
