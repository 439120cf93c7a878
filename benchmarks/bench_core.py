"""Core engine benchmarks: forward solves and gradients, side by side with the peers.

Run from the repository root::

    python benchmarks/bench_core.py            # everything (a few minutes)
    python benchmarks/bench_core.py --quick    # fewer repetitions
    python benchmarks/bench_core.py --no-peers

Peers (torchdiffeq, diffrax, CasADi) run in their own virtualenv, created by
``benchmarks/setup_peers.sh``; they are skipped with a message when it is absent. Each
problem is written to an ``.npz`` file that the peer scripts read, so every implementation
solves the identical problem (same data, same initial weights, same tolerances).

Printed: medians of repeated runs, ratios measured in this one run, and the relative error
of each gradient against a tight-tolerance reference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

import dynlearn as dl
from dynlearn.testing import (
    lotka_volterra_problem,
    lv_ude_problem,
    relative_error,
    robertson_problem,
    spiral_problem,
)

HERE = Path(__file__).resolve().parent
PEER_PY = Path(os.environ.get("DYNLEARN_PEER_PYTHON", HERE / ".venv-peers" / "bin" / "python"))


def median_ms(fn, repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def run_peer(name: str, problem: str, npz: Path, repeats: int) -> dict:
    script = HERE / "peers" / f"{name}_peer.py"
    if not PEER_PY.exists():
        return {"skipped": f"no peer venv at {PEER_PY} (run benchmarks/setup_peers.sh)"}
    try:
        out = subprocess.run([str(PEER_PY), str(script), "--problem", problem, "--input",
                              str(npz), "--repeats", str(repeats)], capture_output=True,
                             text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    lines = [ln for ln in out.stdout.splitlines() if ln.strip().startswith("{")]
    if not lines:
        return {"error": out.stderr.strip().splitlines()[-1:] or "no output"}
    return json.loads(lines[-1])


def network_npz(model, data, theta, path: Path, rtol, atol, extra=None) -> None:
    exp = data[0]
    arrays = {"t": exp.t, "y0": np.array([exp.columns[s.name][0] for s in model.states]),
              "yobs": np.column_stack([exp.columns[s.name] for s in model.states]),
              "rtol": rtol, "atol": atol}
    p, ws = model.split_theta(theta)
    for sym, v in zip(model.param_symbols, p):
        arrays[sym.name] = v
    for net, w in zip(model.networks, ws):
        for k, (W, b) in enumerate(net.unflatten(w)):
            arrays[f"W{k}"], arrays[f"b{k}"] = W, b
    arrays.update(extra or {})
    np.savez(path, **arrays)


def fmt(v, spec=".3g"):
    return "-" if v is None else format(v, spec)


def row(name, fwd, grad, err, note=""):
    ratio = f"{grad / fwd:.2f}" if fwd and grad else "-"
    print(f"  {name:<46} {fmt(fwd, '9.3f')} {fmt(grad, '10.3f')} {ratio:>7} {fmt(err, '9.1e')}"
          f"  {note}")


def header(title):
    print(f"\n== {title}")
    print(f"  {'implementation':<46} {'fwd ms':>9} {'grad ms':>10} {'g/f':>7} {'grad err':>9}")


def first_gradient_seconds() -> float:
    """Fresh interpreter: import, build the LV-UDE model, first loss+gradient."""
    code = ("import time; t0 = time.perf_counter()\n"
            "import dynlearn as dl\n"
            "from dynlearn.testing import lv_ude_problem\n"
            "m, d, th = lv_ude_problem()\n"
            "dl.loss_and_grad(m, d, th, rtol=1e-6, atol=1e-6)\n"
            "print(time.perf_counter() - t0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def network_peers(problem, model, data, theta, tol, ref, reps, tmp) -> dict:
    """Run torchdiffeq and diffrax on a network problem; print their rows; return figures."""
    npz = tmp / f"{problem}.npz"
    network_npz(model, data, theta, npz, tol["rtol"], tol["atol"])
    out = {}
    t = run_peer("torchdiffeq", problem, npz, max(3, reps // 4))
    if "grad_ms" in t:
        row("torchdiffeq odeint backprop", t["forward_ms"], t["grad_ms"],
            relative_error(t["grad"], ref))
        row("torchdiffeq odeint_adjoint", t["forward_ms"], t["grad_adjoint_ms"],
            relative_error(t["grad_adjoint"], ref))
        out["torch_grad"] = t["grad_ms"]
    else:
        print("  torchdiffeq:", t)
    j = run_peer("diffrax", problem, npz, reps)
    if "grad_ms" in j:
        row("diffrax recursive checkpoint (after jit)", j["forward_ms"], j["grad_ms"],
            relative_error(j["grad"], ref), f"first gradient {j['first_grad_s']:.2f} s")
        row("diffrax backsolve adjoint (after jit)", j["forward_ms"], j["grad_backsolve_ms"],
            relative_error(j["grad_backsolve"], ref))
        out["diffrax_grad"], out["diffrax_first_s"] = j["grad_ms"], j["first_grad_s"]
    else:
        print("  diffrax:", j)
    return out


def bench_lv_ude(reps, peers, tmp):
    model, data, theta = lv_ude_problem()
    tol = dict(rtol=1e-6, atol=1e-6)
    ref = dl.loss_and_grad(model, data, theta, sensitivity=dl.ForwardSensitivity(),
                           method="DOP853", rtol=1e-12, atol=1e-12)[1]
    header("LV-UDE (2-5-5-5-2 rbf, 89 parameters, 21 times, RK45 rtol=atol=1e-6)")
    obj = dl.Objective(model, data, **tol)
    fwd = median_ms(lambda: obj.value(theta), reps)
    res = {}
    for name, sens in [("dynlearn discrete adjoint (default)", dl.Adjoint()),
                       ("dynlearn forward sensitivities", dl.ForwardSensitivity()),
                       ("dynlearn continuous adjoint", dl.Adjoint(kind="continuous"))]:
        o = dl.Objective(model, data, sensitivity=sens, **tol)
        g = o.value_and_grad(theta)[1]
        ms = median_ms(lambda o=o: o.value_and_grad(theta), reps if "discrete" in name
                       else max(3, reps // 5))
        res[name] = ms
        row(name, fwd, ms, relative_error(g, ref))
    first = first_gradient_seconds()
    print(f"  dynlearn time to first gradient (fresh process, import + compile): {first:.2f} s")
    out = {"dynlearn_fwd": fwd, "dynlearn_grad": res["dynlearn discrete adjoint (default)"],
           "dynlearn_first_s": first}
    if peers:
        out.update(network_peers("lv_ude", model, data, theta, tol, ref, reps, tmp))
    g = out["dynlearn_grad"]
    print(f"  -> dynlearn loss+gradient / forward solve: {g / fwd:.2f} (target <= 1.5)")
    if "torch_grad" in out:
        print(f"  -> torchdiffeq backprop / dynlearn gradient: {out['torch_grad'] / g:.1f}x "
              "(target >= 20x)")
    if "diffrax_first_s" in out:
        print(f"  -> time to first gradient: dynlearn {first:.2f} s vs diffrax "
              f"{out['diffrax_first_s']:.2f} s; per gradient after compile dynlearn/diffrax "
              f"{g / out['diffrax_grad']:.1f}x")
    return out


def bench_spiral(reps, peers, tmp):
    model, data, theta = spiral_problem()
    tol = dict(rtol=1e-7, atol=1e-9)
    ref = dl.loss_and_grad(model, data, theta, sensitivity=dl.Adjoint(kind="continuous"),
                           method="DOP853", rtol=1e-12, atol=1e-13)[1]
    header("Spiral neural ODE (2-50-2 tanh, 252 parameters, 1000 times, rtol 1e-7 atol 1e-9)")
    obj = dl.Objective(model, data, **tol)
    fwd = median_ms(lambda: obj.value(theta), reps)
    o = dl.Objective(model, data, sensitivity=dl.Adjoint(), **tol)
    g = o.value_and_grad(theta)[1]
    grad = median_ms(lambda: o.value_and_grad(theta), reps)
    row("dynlearn discrete adjoint (default)", fwd, grad, relative_error(g, ref))
    o2 = dl.Objective(model, data, sensitivity=dl.Adjoint(kind="continuous"), **tol)
    g2 = o2.value_and_grad(theta)[1]
    row("dynlearn continuous adjoint (1000 jumps)", fwd,
        median_ms(lambda: o2.value_and_grad(theta), 2), relative_error(g2, ref))
    if peers:
        network_peers("spiral", model, data, theta, tol, ref, reps, tmp)
    print(f"  -> dynlearn gradient / forward solve with 1000 observation times: {grad / fwd:.2f} "
          "(target <= 5)")


def bench_robertson(reps, peers, tmp):
    model, data, theta = robertson_problem()
    ref = dl.loss_and_grad(model, data, theta, sensitivity=dl.ForwardSensitivity(),
                           method="Radau", rtol=1e-13, atol=1e-16)[1]
    header("Robertson (stiff, 3 log-rate parameters, 40 log-spaced times to 1e5)")
    best = None
    for method, rtol, atol, sens in [
            ("LSODA", 1e-9, 1e-14, dl.ForwardSensitivity()),
            ("LSODA", 1e-8, 1e-14, dl.ForwardSensitivity()),
            ("LSODA", 1e-8, 1e-12, dl.ForwardSensitivity()),
            ("LSODA", 1e-6, 1e-10, dl.ForwardSensitivity()),
            ("Radau", 1e-6, 1e-10, dl.ForwardSensitivity()),
            ("Radau", 1e-8, 1e-12, dl.ForwardSensitivity()),
            ("BDF", 1e-9, 1e-13, dl.ForwardSensitivity()),
            ("LSODA", 1e-9, 1e-14, dl.Adjoint()),
            ("Radau", 1e-8, 1e-12, dl.Adjoint())]:
        o = dl.Objective(model, data, method=method, rtol=rtol, atol=atol, sensitivity=sens)
        g = o.value_and_grad(theta)[1]
        r = reps if method == "LSODA" else max(3, reps // 5)
        fwd = median_ms(lambda o=o: o.value(theta), r)
        ms = median_ms(lambda o=o: o.value_and_grad(theta), r)
        err = relative_error(g, ref)
        row(f"dynlearn {method} {type(sens).__name__} {rtol:g}/{atol:g}", fwd, ms, err)
        if err <= 1e-6 and (best is None or ms < best[0]):
            best = (ms, err, f"{method} {type(sens).__name__} rtol {rtol:g} atol {atol:g}")
    casadi = None
    if peers:
        npz = tmp / "robertson.npz"
        exp = data[0]
        np.savez(npz, t=exp.t[1:], t0=0.0, y0=np.array([1.0, 0, 0]),
                 yobs=np.column_stack([exp.columns[s] for s in ("y1", "y2", "y3")])[1:],
                 rtol=1e-6, atol=1e-10, logk=theta)
        # CasADi at the target's tolerances, then tight enough for a comparison at equal
        # gradient accuracy
        tight = tmp / "robertson_tight.npz"
        np.savez(tight, **{**dict(np.load(npz)), "rtol": 1e-9, "atol": 1e-14})
        for path, tol in ((npz, "1e-6/1e-10"), (tight, "1e-9/1e-14")):
            c = run_peer("casadi", "robertson", path, reps)
            if "grad_ms" not in c:
                print("  casadi:", c)
                continue
            row(f"CasADi CVODES forward sens. {tol}", c["forward_ms"], c["grad_ms"],
                relative_error(c["grad"], ref))
            row(f"CasADi CVODES adjoint {tol}", c["forward_ms"], c["grad_adjoint_ms"],
                relative_error(c["grad_adjoint"], ref))
            if path is npz:
                casadi = c
        j = run_peer("diffrax", "robertson", npz, max(3, reps // 4))
        if "grad_ms" in j:
            row("diffrax Kvaerno5 forward mode 1e-6/1e-10", j["forward_ms"], j["grad_ms"],
                relative_error(j["grad"], ref), f"first gradient {j['first_grad_s']:.2f} s")
        else:
            print("  diffrax:", j)
    if best:
        print(f"  -> fastest dynlearn gradient accurate to 1e-6: {best[0]:.1f} ms "
              f"(error {best[1]:.1e}, {best[2]})")
        if casadi:
            print(f"  -> CasADi at rtol 1e-6: forward sens. {casadi['grad_ms']:.1f} ms, adjoint "
                  f"{casadi['grad_adjoint_ms']:.1f} ms (error "
                  f"{relative_error(casadi['grad'], ref):.1e})")


def bench_memory():
    """Peak memory of the discrete adjoint as the number of steps grows, with and without
    checkpointing (tracemalloc, Python allocations)."""
    print("\n== Adjoint memory (Lotka-Volterra over longer horizons; peak traced allocations)")
    print(f"  {'t_end':>6} {'steps':>7} {'full MB':>9} {'ckpt(50) MB':>12} {'continuous MB':>14} "
          f"{'cont. ckpt MB':>14}")
    for t_end in (5, 50, 500, 5000):
        model, data, theta = lotka_volterra_problem(t=np.linspace(0, t_end, 21))
        out = []
        for sens in (dl.Adjoint(), dl.Adjoint(checkpoint_every=50),
                     dl.Adjoint(kind="continuous"), dl.Adjoint(kind="continuous",
                                                               checkpoint_every=2)):
            o = dl.Objective(model, data, rtol=1e-6, atol=1e-6, sensitivity=sens)
            o.value_and_grad(theta)
            tracemalloc.start()
            o.value_and_grad(theta)
            out.append(tracemalloc.get_traced_memory()[1] / 1e6)
            tracemalloc.stop()
        from scipy.integrate import solve_ivp
        p = dl.Objective(model, data, rtol=1e-6, atol=1e-6).problems(theta)[0]
        steps = solve_ivp(p.vf.fun, (0, t_end), p.y0, rtol=1e-6, atol=1e-6).t.size - 1
        print(f"  {t_end:>6} {steps:>7} {out[0]:>9.2f} {out[1]:>12.2f} {out[2]:>14.2f} "
              f"{out[3]:>14.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--only", choices=["lv_ude", "spiral", "robertson", "memory"])
    args = ap.parse_args()
    reps = 10 if args.quick else 40
    peers = not args.no_peers
    if peers and not PEER_PY.exists():
        print(f"(peers skipped: no venv at {PEER_PY}; run benchmarks/setup_peers.sh)")
        peers = False
    print(f"dynlearn {dl.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.only in (None, "lv_ude"):
            bench_lv_ude(reps, peers, tmp)
        if args.only in (None, "spiral"):
            bench_spiral(max(3, reps // 4), peers, tmp)
        if args.only in (None, "robertson"):
            bench_robertson(reps, peers, tmp)
        if args.only in (None, "memory"):
            bench_memory()


if __name__ == "__main__":
    main()
