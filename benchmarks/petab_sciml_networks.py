"""PEtab SciML network import: drive the test suite's ``ml_model_import`` cases.

Usage::

    python benchmarks/petab_sciml_networks.py SUITE_DIR [--no-grad] [CASE ...]

``SUITE_DIR`` is ``.../petab_sciml_testsuite/test_cases/ml_model_import`` (read in place,
never copied). For every case (``NNN/net.yaml`` with ``net_ps_K.hdf5``, ``net_input_K.hdf5``
or ``net_input_K_argJ.hdf5`` and ``net_output_K.hdf5``, K = 1..3, listed in
``solutions.yaml``) the network is read with :func:`dynlearn.petab.networks.network_from_yaml`,
its parameters with :func:`~dynlearn.petab.networks.read_parameters`, and the output on each
stored input is compared with the stored reference, elementwise within the case's absolute
tolerance. The suite generates its references with ``torch.testing.assert_close(...,
atol=atol, rtol=0)``, atol 1e-3 unless the case's ``create_testdata/net.py`` passes another
(the dropout cases, whose references are means of 40000-50000 random passes); this script
reads that number the same way.

For every case, autograd's gradient of ``sum(c * output)`` (``c`` fixed random) with respect
to the weights (``dw rel``) and to the first input (``dx rel``) is also compared with central
finite differences on a random subset of at most 40 entries (step 1e-6 relative), reported
as the largest error relative to the largest gradient entry.

Prints one row per case and a summary ``N of M pass``. With ``--speed``, also times a
network inside a model computed in closed form (as :class:`dynlearn.MLP`) against autograd,
side by side.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np

try:
    import h5py
    import yaml
except ImportError:  # pragma: no cover
    sys.exit("needs h5py and pyyaml: pip install 'dynlearn[petab]'")

from autograd import grad

from dynlearn.errors import PetabError
from dynlearn.petab.networks import network_from_yaml, read_parameters

DEFAULT_ATOL = 1e-3   # test_nn's default in the suite's helper.py


def _tolerance(case: Path) -> float:
    script = case / "create_testdata" / "net.py"
    if script.exists():
        m = re.search(r"atol\s*=\s*([0-9.eE+-]+)", script.read_text())
        if m:
            return float(m.group(1))
    return DEFAULT_ATOL


def _read_array(path: Path, group: str) -> np.ndarray:
    with h5py.File(path, "r") as fh:
        grp = fh[group]
        key = next(iter(grp))
        return np.asarray(grp[key]["data"][()], dtype=float)


def _inputs(case: Path, sol: dict, k: int) -> list[np.ndarray]:
    if "net_input" in sol:
        return [_read_array(case / sol["net_input"][k], "inputs")]
    args, j = [], 0
    while f"net_input_arg{j}" in sol:
        args.append(_read_array(case / sol[f"net_input_arg{j}"][k], "inputs"))
        j += 1
    return args


def _fd_check(f, x, rng, n_max: int = 40) -> float:
    """Largest error of autograd's gradient of scalar ``f`` at ``x`` against central
    differences on at most ``n_max`` random entries, relative to the largest entry."""
    with warnings.catch_warnings():
        # a layer the output does not use (cases 040/041) has a zero gradient, and says so
        warnings.filterwarnings("ignore", "Output seems independent of input")
        g = np.asarray(grad(f)(x)).ravel()
    flat = x.ravel()
    idx = rng.choice(flat.size, size=min(n_max, flat.size), replace=False)
    fd = np.empty(idx.size)
    for n, i in enumerate(idx):
        h = 1e-6 * max(1.0, abs(flat[i]))
        xp, xm = flat.copy(), flat.copy()
        xp[i] += h
        xm[i] -= h
        fd[n] = (f(xp.reshape(x.shape)) - f(xm.reshape(x.shape))) / (2 * h)
    scale = max(np.abs(fd).max(), np.abs(g[idx]).max(), 1e-12)
    return float(np.abs(g[idx] - fd).max() / scale)


def _grad_checks(net, w, xs, rng) -> tuple[float, float]:
    """(weight gradient error, input gradient error) of ``sum(c * output)``, c random."""
    out = np.asarray(net.evaluate(w, *xs))
    c = rng.standard_normal(out.shape)
    gw = _fd_check(lambda ww: (net.evaluate(ww, *xs) * c).sum(), w, rng) \
        if net.n_weights else float("nan")
    # max pooling has kinks where two inputs tie; random inputs make ties unlikely
    gx = _fd_check(lambda x0: (net.evaluate(w, x0, *xs[1:]) * c).sum(), xs[0], rng)
    return gw, gx


def run_case(case: Path, check_grad: bool = True) -> dict:
    sol = yaml.safe_load((case / "solutions.yaml").read_text())
    spec = yaml.safe_load((case / sol.get("net_file", "net.yaml")).read_text())
    layers = sorted({entry["layer_type"] for entry in spec.get("layers") or []})
    funs = sorted({str(n["target"]) for n in spec.get("forward") or []
                   if n.get("op") in ("call_function", "call_method")})
    row = {"case": case.name, "layers": "+".join(layers + funs), "atol": _tolerance(case)}
    t0 = time.perf_counter()
    try:
        net = network_from_yaml(case / sol.get("net_file", "net.yaml"))
    except PetabError as exc:
        row.update(status="unsupported", error=float("nan"), note=str(exc))
        return row
    err = 0.0
    rng = np.random.default_rng(0)
    gerr = xerr = float("nan")
    for k in range(len(sol["net_output"])):
        # cases without parameters (pooling, flatten) have no parameter files
        w = read_parameters(case / sol["net_ps"][k], net) if "net_ps" in sol else net.weights
        xs = _inputs(case, sol, k)
        ref = _read_array(case / sol["net_output"][k], "outputs")
        out = np.asarray(net.evaluate(w, *xs))
        if out.shape != ref.shape:
            row.update(status="FAIL", error=float("inf"),
                       note=f"shape {out.shape} != reference {ref.shape}")
            return row
        err = max(err, float(np.abs(out - ref).max()))
        if check_grad and k == 0:
            gerr, xerr = _grad_checks(net, w, xs, rng)
    row.update(status="pass" if err <= row["atol"] else "FAIL", error=err, grad=gerr, xgrad=xerr,
               seconds=time.perf_counter() - t0, note="")
    return row


def speed(suite: Path, repeat: int = 200) -> None:
    """Time a network in a model, computed as dl.MLP (closed form) and through autograd, on
    case 001's network (Linear 2-5-5-1 with tanh, the shape of most hybrid cases), and print
    the ratios. Both are measured here, side by side, in the same process."""
    import timeit

    import sympy as sp

    x, y = sp.symbols("x y")
    path = suite / "001" / "net.yaml"
    nets = {"closed": network_from_yaml(path, name="nn", inputs=[x, y]),
            "autograd": network_from_yaml(path, name="nn", inputs=[x, y], closed_form=False)}
    assert nets["closed"].closed_form and not nets["autograd"].closed_form
    rng = np.random.default_rng(0)
    w = rng.standard_normal(nets["closed"].n_weights)
    v, V = rng.standard_normal(2), rng.standard_normal((20, 2))
    cot = rng.standard_normal((20, 1))
    calls = {
        "point_function(w)(v)": lambda n, f: f(v),
        "forward_and_input_jacobian, 1 row": lambda n, f: n.forward_and_input_jacobian(w, v),
        "weight_jacobian, 1 row": lambda n, f: n.weight_jacobian(w, v),
        "weight_jacobian, 20 rows": lambda n, f: n.weight_jacobian(w, V),
        "weight_vjp, 20 rows": lambda n, f: n.weight_vjp(w, V, cot),
    }
    print(f"\n{'call (case 001 network in a model)':38} {'closed us':>10} {'autograd us':>12} "
          f"{'ratio':>7}")
    for label, call in calls.items():
        t = {}
        for key, net in nets.items():
            f = net.point_function(w)
            n = max(1, repeat // (1 if key == "closed" else 20))
            t[key] = min(timeit.repeat(lambda c=call, m=net, g=f: c(m, g), number=n,
                                       repeat=3)) / n
        print(f"{label:38} {t['closed'] * 1e6:10.1f} {t['autograd'] * 1e6:12.1f} "
              f"{t['autograd'] / t['closed']:7.0f}x")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("suite", type=Path, help=".../test_cases/ml_model_import")
    ap.add_argument("cases", nargs="*", help="case numbers (default: all)")
    ap.add_argument("--no-grad", action="store_true", help="skip the gradient check")
    ap.add_argument("--speed", action="store_true",
                    help="also time closed-form against autograd derivatives in a model")
    args = ap.parse_args(argv)
    cases = sorted(p for p in args.suite.iterdir() if (p / "solutions.yaml").exists())
    if args.cases:
        cases = [c for c in cases if c.name in set(args.cases)]
    print(f"{'case':5} {'status':11} {'max|err|':>9} {'atol':>7} {'dw rel':>8} {'dx rel':>8} "
          f"{'s':>5}  layers / functions")
    n_pass = 0
    worst_grad = worst_xgrad = 0.0
    for case in cases:
        r = run_case(case, check_grad=not args.no_grad)
        n_pass += r["status"] == "pass"
        g, gx = r.get("grad", float("nan")), r.get("xgrad", float("nan"))
        worst_grad = max(worst_grad, g) if np.isfinite(g) else worst_grad
        worst_xgrad = max(worst_xgrad, gx) if np.isfinite(gx) else worst_xgrad
        print(f"{r['case']:5} {r['status']:11} {r['error']:9.2e} {r['atol']:7.0e} "
              f"{g:8.1e} {gx:8.1e} {r.get('seconds', 0):5.2f}  {r['layers']}"
              + (f"  [{r['note']}]" if r.get("note") else ""))
    print(f"\n{n_pass} of {len(cases)} pass; largest relative error of autograd's gradient "
          f"against central differences: weights {worst_grad:.1e}, inputs {worst_xgrad:.1e}")
    if args.speed:
        speed(args.suite)
    return 0 if n_pass == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
