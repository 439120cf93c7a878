"""The ``dynlearn`` command: fit, simulate, recover, check-gradients and demo.

Every command reads a TOML model file (see :mod:`dynlearn.io`) and, where it needs one, a
CSV of measurements. A user error (missing file, malformed TOML, unknown symbol, bad CSV,
bad option) prints one line ``error: ...`` naming the file and the line, row or column where
known, and exits with status 2; ``--debug`` shows the traceback instead. Outputs are written
to a temporary file in the destination folder and renamed, so a folder never holds a
half-written file.

Exit status: 0 success; 1 a fit that failed or gradients that disagree
(``check-gradients``); 2 a user error; 130 interrupted (a fit keeps its checkpoint, and
``--resume`` continues it).

Run ``dynlearn --help`` or ``dynlearn COMMAND --help`` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dynlearn.errors import DynlearnError, OptionError

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# demo budget: small enough to finish well within a minute on a laptop
DEMO_MAXITER = 60


class UsageError(DynlearnError):
    """A bad command line (unknown option, missing argument)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error raises instead of printing usage and exiting, so that
    ``main`` prints it as one ``error:`` line like every other user error."""

    def error(self, message: str):
        raise UsageError(message)


# --- output helpers -------------------------------------------------------------------------
class Console:
    """Messages for the user: results on stdout, notes on stderr, silenced by ``--quiet``."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def out(self, text: str = "") -> None:
        print(text, file=sys.stdout, flush=True)

    def note(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@contextlib.contextmanager
def _warnings_as_lines(console: Console):
    """Show warnings as one ``warning: ...`` line each (no source lines), once."""
    seen = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = _one_line(message)
        if text not in seen and not console.quiet:
            seen.add(text)
            print(f"warning: {text}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def _prepare_out_dir(path) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"--out {out}: cannot create the folder: {exc.strerror}") from None
    return out


def _write_csv(frame, path, index: bool = False) -> None:
    from dynlearn.report.html import write_text_atomic
    write_text_atomic(path, frame.to_csv(index=index, float_format="%.10g"))


# --- argument parsing -----------------------------------------------------------------------
def _common(parser: argparse.ArgumentParser) -> None:
    """Options every command accepts (before or after the command name)."""
    g = parser.add_argument_group("common options")
    g.add_argument("--seed", type=int, default=argparse.SUPPRESS,
                   help="random seed (network initialisation, multi-start, optimizer)")
    g.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="no progress bar and no notes; results and errors only")
    g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the full traceback on errors")


def _scale_out(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("scale-out")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="parallel workers for experiments and multi-start (default: serial)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="address of a running Dask scheduler (default: a local cluster when "
                        "--workers is given)")


def _fit_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("fit settings (override the model file's [fit] table)")
    g.add_argument("--loss", choices=["ls", "gaussian", "log"], default=None,
                   help="least squares, Gaussian likelihood (noise estimated) or log-scale "
                        "residuals (positive counts)")
    g.add_argument("--maxiter", type=int, default=None, metavar="N",
                   help="iteration budget of the optimizer")
    g.add_argument("--method", default=None, metavar="METHOD",
                   help="solve_ivp method: RK45, RK23, DOP853, Radau, BDF, LSODA")
    g.add_argument("--max-time", type=float, default=None, metavar="SECONDS",
                   help="stop after this long, keeping the best point (and a checkpoint "
                        "for --resume)")
    g.add_argument("--no-plots", action="store_true", help="skip the figures and the report")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``dynlearn`` command."""
    from dynlearn import __version__
    p = _Parser(prog="dynlearn",
                description="Fit hybrid dynamical models (equations plus small neural "
                            "networks) to measured time series.",
                epilog="Start with 'dynlearn demo'. Model files are TOML; see "
                       "examples/models/ and 'dynlearn fit --help'.")
    p.add_argument("--version", action="version", version=f"dynlearn {__version__}")
    _common(p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    f = sub.add_parser("fit", help="fit a model file to a CSV and write results, plots and "
                                   "a report",
                       description="Fit MODEL.toml to DATA.csv and write into DIR: "
                                   "params.csv, summary.txt, predictions.csv, result.json "
                                   "(+ result.npz; dl.load_result reads them), fit.png, "
                                   "residuals.png, loss.png, learned_terms.png (hybrid "
                                   "models), report.html, run.json (provenance) and a copy "
                                   "of the model file. An interrupted fit leaves "
                                   "checkpoint.json/.npz in DIR; --resume continues it.")
    f.add_argument("model", metavar="MODEL.toml",
                   help="the model file (TOML; see examples/models/)")
    f.add_argument("data", metavar="DATA.csv", nargs="?",
                   help="measurements (default: [data] file in the model file)")
    f.add_argument("--out", "-o", metavar="DIR", default=None,
                   help="output folder (default: ./<model name>-fit)")
    f.add_argument("--resume", action="store_true",
                   help="continue an interrupted fit from the checkpoint in DIR")
    _fit_options(f)
    _scale_out(f)
    _common(f)

    s = sub.add_parser("simulate", help="simulate a model file and write a CSV",
                       description="Integrate MODEL.toml and write states and observables "
                                   "as CSV (to stdout without --out).")
    s.add_argument("model", metavar="MODEL.toml")
    s.add_argument("--t", dest="t", default=None, metavar="START:STOP:STEP",
                   help="output times, e.g. 0:10:0.1 (default: [simulate] t)")
    s.add_argument("--params", default=None, metavar="result.json",
                   help="use fitted parameters (and initial state) from a fit result")
    s.add_argument("--y0", default=None, metavar="NAME=VALUE,...",
                   help="initial state, e.g. hare=30,lynx=4")
    s.add_argument("--set", dest="set_", action="append", default=[], metavar="NAME=VALUE",
                   help="override a parameter value (repeatable)")
    s.add_argument("--inputs", default=None, metavar="INPUTS.csv",
                   help="input signals: a CSV whose first column is time")
    s.add_argument("--method", default=None, metavar="METHOD")
    s.add_argument("--rtol", type=float, default=None)
    s.add_argument("--atol", type=float, default=None)
    s.add_argument("--out", "-o", default=None, metavar="FILE.csv")
    _common(s)

    r = sub.add_parser("recover", help="recover equations for the networks of a fitted "
                                       "hybrid model",
                       description="Sparse regression of the trained networks in DIR (written "
                                   "by 'dynlearn fit') onto a library of candidate terms.")
    r.add_argument("dir", metavar="DIR")
    r.add_argument("--library", default="poly3", metavar="LIB",
                   help="candidate terms: poly1..poly5 (polynomials of the network inputs' "
                        "symbols up to that degree), optionally '+trig' or '+exp'")
    r.add_argument("--threshold", type=float, default=None,
                   help="sparsity threshold (default: chosen automatically)")
    _common(r)

    c = sub.add_parser("check-gradients",
                       help="compare forward-sensitivity, adjoint and finite-difference "
                            "gradients",
                       description="Evaluate the gradient of the sum-of-squares loss of "
                                   "MODEL.toml against DATA.csv with forward sensitivities, "
                                   "the adjoint and 4th-order finite differences, and print "
                                   "them side by side. Exit status 1 if they disagree.")
    c.add_argument("model", metavar="MODEL.toml")
    c.add_argument("data", metavar="DATA.csv", nargs="?")
    c.add_argument("--params", default=None, metavar="result.json",
                   help="evaluate at fitted parameters instead of the initial ones")
    c.add_argument("--method", default="RK45", metavar="METHOD")
    c.add_argument("--rtol", type=float, default=1e-9)
    c.add_argument("--atol", type=float, default=1e-11)
    c.add_argument("--tol", type=float, default=1e-3,
                   help="largest accepted relative difference (default 1e-3): relative to "
                        "the gradient or, near an optimum, to the gradient change of a 0.1%% "
                        "change of the parameter")
    c.add_argument("--fd-max", type=int, default=40, metavar="N",
                   help="finite differences on at most N parameters (default 40)")
    c.add_argument("--rows", type=int, default=20, metavar="N",
                   help="print at most N parameters (default 20)")
    _common(c)

    d = sub.add_parser("demo", help="fit the bundled lynx-hare data end to end",
                       description="Fit the Lotka-Volterra model to the Hudson's Bay lynx and "
                                   "hare pelt records (bundled) with a small budget and write "
                                   "the results, figures and report.")
    d.add_argument("--out", "-o", metavar="DIR", default="dynlearn-demo",
                   help="output folder (default: ./dynlearn-demo)")
    d.add_argument("--resume", action="store_true")
    d.add_argument("--maxiter", type=int, default=None, metavar="N")
    _scale_out(d)
    _common(d)
    return p


# --- shared steps ---------------------------------------------------------------------------
def _parse_assignments(text: str | Sequence[str], what: str) -> dict[str, float]:
    items = text if not isinstance(text, str) else text.split(",")
    out = {}
    for item in items:
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise OptionError(f"{what}: expected NAME=VALUE, got {item!r}") from None
    return out


def _load_result(path):
    """A saved fit result (``dl.load_result``), with a clear error when it is not one."""
    import dynlearn as dl
    path = Path(path)
    if path.is_dir():
        path = path / "result.json"
    if not path.exists():
        raise OptionError(f"{path}: no such file (expected a result.json written by "
                          "'dynlearn fit')")
    load = getattr(dl, "load_result", None)
    if load is None:
        raise OptionError("reading fit results needs dl.load_result, which this version of "
                          "dynlearn does not have")
    return load(path)


def _model_from_file(args):
    from dynlearn.io.model_file import load_model_file
    return load_model_file(args.model, default_seed=getattr(args, "seed", None))


# --- commands -------------------------------------------------------------------------------
def cmd_simulate(args, console: Console) -> int:
    """``dynlearn simulate``."""
    import pandas as pd

    from dynlearn.io.model_file import parse_time_grid
    from dynlearn.solve import simulate
    mf = _model_from_file(args)
    model = mf.model
    states = [s.name for s in model.states]
    theta = None
    y0 = None
    if args.params:
        res = _load_result(args.params)
        theta, y0 = _theta_y0_from_result(res, model)
    if args.set_:
        changes = _parse_assignments(args.set_, "--set")
        try:
            model = model.with_params(**changes) if theta is None else \
                model.with_theta(theta).with_params(**changes)
        except DynlearnError as exc:
            raise OptionError(f"--set: {exc}") from None
        theta = None
    if args.t is not None:
        t = parse_time_grid(args.t, "--t")
    elif "t" in mf.simulate:
        t = mf.simulate["t"]
    else:
        raise OptionError(f"no output times: pass --t START:STOP:STEP or set t in "
                          f"[simulate] of {mf.source}")
    if args.y0 is not None:
        vals = _parse_assignments(args.y0, "--y0")
        unknown = [k for k in vals if k not in states]
        missing = [s for s in states if s not in vals]
        if unknown or missing:
            raise OptionError(f"--y0: give one value per state {states}"
                              + (f"; unknown {unknown}" if unknown else "")
                              + (f"; missing {missing}" if missing else ""))
        y0 = np.array([vals[s] for s in states])
    elif y0 is None and "y0" in mf.simulate:
        y0 = np.array([mf.simulate["y0"][s] for s in states])
    elif y0 is None and mf.initial["values"]:
        y0 = np.array([mf.initial["values"][s] for s in states])
    if y0 is None:
        raise OptionError(f"no initial state: pass --y0 {','.join(s + '=...' for s in states)}"
                          f", --params result.json, or set y0 in [simulate] of {mf.source}")
    inputs = None
    if model.inputs:
        if args.inputs is None:
            raise OptionError(f"the model has inputs {[u.name for u in model.inputs]}: pass "
                              "--inputs INPUTS.csv (time first, then one column per input)")
        try:
            inputs = pd.read_csv(args.inputs)
        except FileNotFoundError:
            raise OptionError(f"--inputs {args.inputs}: no such file") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise OptionError(f"--inputs {args.inputs}: cannot read as CSV: "
                              f"{_one_line(exc)}") from None
    kw = {k: v for k, v in (("method", args.method or mf.simulate.get("method")),
                            ("rtol", args.rtol or mf.simulate.get("rtol")),
                            ("atol", args.atol or mf.simulate.get("atol"))) if v is not None}
    sol = simulate(model, t, y0, theta=theta, inputs=inputs, **kw)
    frame = sol.to_frame()
    if args.out is None:
        sys.stdout.write(frame.to_csv(index=False, float_format="%.10g"))
    else:
        out = Path(args.out)
        if out.parent and not out.parent.exists():
            raise OptionError(f"--out {out}: the folder {out.parent} does not exist")
        _write_csv(frame, out)
        console.note(f"wrote {len(frame)} rows to {out}")
    return EXIT_OK


def _theta_y0_from_result(res, model):
    """Fitted theta and the first experiment's initial state from a FitResult, checked
    against the model file's layout."""
    theta = np.asarray(res.model.theta0, dtype=float)
    if theta.shape != (model.n_theta,) or res.model.theta_names != model.theta_names:
        raise OptionError(f"the fit result has parameters {res.model.theta_names[:6]}"
                          f"{'...' if len(res.model.theta_names) > 6 else ''} but the model "
                          f"file has {model.theta_names[:6]}"
                          f"{'...' if len(model.theta_names) > 6 else ''}; was it fitted with "
                          "this model file?")
    y0 = next(iter(res.y0.values()), None) if res.y0 else None
    return theta, (None if y0 is None else np.asarray(y0, dtype=float))


def cmd_check_gradients(args, console: Console) -> int:
    """``dynlearn check-gradients``."""
    from dynlearn.objective.objective import Objective
    from dynlearn.sensitivity import Adjoint, ForwardSensitivity
    mf = _model_from_file(args)
    model = mf.model
    data = mf.read_data(args.data)
    theta = None
    if args.params:
        theta, _ = _theta_y0_from_result(_load_result(args.params), model)
    theta = model.check_theta(theta)
    y0 = mf.y0()
    y0 = None if isinstance(y0, str) else y0
    # finite differences cost 4 solves per parameter: on hybrid models check all physical
    # parameters and a random sample of the network weights
    n_phys = len(model.free_params)
    idx = np.arange(model.n_theta)
    if model.n_theta > args.fd_max:
        rng = np.random.default_rng(getattr(args, "seed", None) or 0)
        pick = rng.choice(np.arange(n_phys, model.n_theta),
                          size=max(args.fd_max - n_phys, 0), replace=False)
        idx = np.concatenate([np.arange(n_phys), np.sort(pick)])
    grads, vals, times = {}, {}, {}
    for name, sens in (("forward", ForwardSensitivity()), ("adjoint", Adjoint())):
        obj = Objective(model, data, y0=y0, method=args.method, rtol=args.rtol,
                        atol=args.atol, sensitivity=sens)
        t0 = time.perf_counter()
        vals[name], g = obj.value_and_grad(theta)
        times[name] = time.perf_counter() - t0
        grads[name] = g[idx]
    t0 = time.perf_counter()
    grads["finite-diff"], curv = _central_differences(obj, theta, idx)
    times["finite-diff"] = time.perf_counter() - t0
    ref = grads["finite-diff"]
    scale = max(float(np.max(np.abs(ref))), 1e-300)
    # Relative to each entry, except where the gradient is nearly zero (at an optimum, or
    # a parameter the loss hardly depends on): there the scale is 1e-3 of the curvature
    # times the parameter, the gradient a 0.1% change of the parameter makes.
    denom = np.maximum.reduce([np.abs(ref),
                               1e-3 * np.abs(curv) * np.maximum(np.abs(theta[idx]), 1e-8),
                               np.full(ref.shape, 1e-9 * scale)])
    err = {k: np.abs(grads[k] - ref) / denom for k in ("forward", "adjoint")}
    worst = np.maximum(err["forward"], err["adjoint"])
    names = [model.theta_names[i] for i in idx]
    order = np.argsort(-worst) if len(names) > args.rows else np.arange(len(names))
    shown = sorted(order[:args.rows])
    w = max(12, *(len(names[i]) for i in shown))
    console.out(f"loss (sum of squares) = {vals['forward']:.10g} at "
                f"{'fitted' if args.params else 'initial'} parameters; method={args.method}, "
                f"rtol={args.rtol:g}, atol={args.atol:g}")
    console.out(f"{'parameter':<{w}}  {'forward':>14}  {'adjoint':>14}  {'finite-diff':>14}"
                f"  {'max rel.diff':>12}")
    for i in shown:
        console.out(f"{names[i]:<{w}}  {grads['forward'][i]:>14.7g}  "
                    f"{grads['adjoint'][i]:>14.7g}  {ref[i]:>14.7g}  {worst[i]:>12.2e}")
    if len(names) > args.rows:
        console.out(f"... {len(names) - args.rows} more parameters not shown (the "
                    f"{args.rows} largest differences are); --rows N shows more")
    if len(idx) < model.n_theta:
        console.out(f"finite differences on {len(idx)} of {model.n_theta} parameters "
                    f"(all physical ones and a random sample of network weights; --fd-max N "
                    "checks more)")
    console.out("time: " + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in times.items()))
    bad = float(worst.max()) if worst.size else 0.0
    if bad > args.tol:
        console.out(f"DISAGREE: largest relative difference {bad:.2e} > tolerance {args.tol:g}")
        return EXIT_FAILED
    console.out(f"OK: forward and adjoint agree with finite differences to {bad:.1e} "
                f"(tolerance {args.tol:g})")
    return EXIT_OK


def _central_differences(obj, theta, idx, rel_step: float = 1e-4):
    """4th-order central differences of ``obj.value`` in the coordinates ``idx``, and the
    diagonal curvature ``d2L/dtheta_i^2`` from the same evaluations.

    The step is relative (``rel_step * max(1, |theta_i|)``): at solver tolerances near 1e-9
    it balances truncation (~h^4) against the solver's own noise (~tol / h).
    """
    f0 = obj.value(theta)
    g = np.empty(len(idx))
    curv = np.empty(len(idx))
    for k, i in enumerate(idx):
        h = rel_step * max(1.0, abs(theta[i]))
        f = []
        for c in (-2.0, -1.0, 1.0, 2.0):
            th = theta.copy()
            th[i] += c * h
            f.append(obj.value(th))
        g[k] = (f[0] - 8.0 * f[1] + 8.0 * f[2] - f[3]) / (12.0 * h)
        curv[k] = (-f[0] + 16.0 * f[1] - 30.0 * f0 + 16.0 * f[2] - f[3]) / (12.0 * h * h)
    return g, curv


def cmd_fit(args, console: Console) -> int:
    """``dynlearn fit``."""
    from dynlearn.io.model_file import load_model_file
    mf = load_model_file(args.model, default_seed=getattr(args, "seed", None))
    data = mf.read_data(args.data)
    out = _prepare_out_dir(args.out or f"{mf.model.name}-fit")
    csv = Path(args.data) if args.data is not None else mf.data["file"]
    return _run_fit(mf, data, out, args, console, csv)


def cmd_demo(args, console: Console) -> int:
    """``dynlearn demo``: the bundled lynx-hare fit."""
    from dynlearn.io.model_file import load_model_file
    src = Path(__file__).with_name("bundled") / "lynx_hare.toml"
    if not src.exists():
        raise OptionError(f"the demo's model file is missing from the installation ({src}); "
                          "reinstall dynlearn")
    mf = load_model_file(src, default_seed=getattr(args, "seed", None))
    data = mf.read_data()
    if args.maxiter is None:
        args.maxiter = DEMO_MAXITER
    args.loss = args.method = None
    args.no_plots = False
    out = _prepare_out_dir(args.out)
    console.note(f"dynlearn demo: Lotka-Volterra fit to the Hudson's Bay lynx and hare pelts "
                 f"(1900-1920), {len(data.experiments[0])} years")
    code = _run_fit(mf, data, out, args, console, mf.data["file"])
    console.out(f"Results are in {out.resolve()}; open {out.resolve() / 'report.html'} in a "
                "browser.")
    return code


CHECKPOINT = "checkpoint"      # dl.fit writes checkpoint.json + checkpoint.npz


def _fit_kwargs(mf, args, out: Path) -> dict:
    """Keyword arguments of :func:`dynlearn.fit` from the model file and the command line
    (the command line wins). Settings that were not given are left to ``dl.fit``."""
    import dynlearn as dl
    ft = mf.fit
    kw: dict = {}
    for key in ("loss", "method", "rtol", "atol", "seed", "n_starts", "l2", "max_time"):
        if key in ft:
            kw[key] = ft[key]
    if mf.noise["sigma"] == "estimate":
        kw.setdefault("loss", "gaussian")
    elif mf.noise["sigma"] is not None:
        kw["sigma"] = mf.noise["sigma"]
    if "sensitivity" in ft:
        kw["sensitivity"] = {"forward": dl.ForwardSensitivity, "adjoint": dl.Adjoint,
                             "finite-difference": dl.FiniteDifference}[ft["sensitivity"]]()
    optimizer = mf.optimizer(maxiter=getattr(args, "maxiter", None))
    if optimizer is not None:
        kw["optimizer"] = optimizer
    kw["y0"] = mf.y0()
    if mf.y0_init() is not None:
        kw["y0_init"] = mf.y0_init()
    for key in ("loss", "method", "seed", "max_time"):
        v = getattr(args, key, None)
        if v is not None:
            kw[key] = v
    if "method" in kw:       # checked here so that a bad --method fails before any output
        from dynlearn.solve import check_method
        check_method(kw["method"])
    workers = getattr(args, "workers", None)
    if workers is not None and workers < 1:
        raise OptionError(f"--workers must be a positive integer, got {workers}")
    options = ft.get("options", {})
    if options:
        import inspect

        from dynlearn.solve import SOLVER_OPTIONS
        known = set(inspect.signature(dl.fit).parameters) | SOLVER_OPTIONS
        known -= {"model", "data", "options", "client", "callback", "progress", "checkpoint",
                  "resume"}
        for key in options:
            if key not in known:
                raise OptionError(f"{mf.where('fit', 'options', key)}: [fit.options] {key}: "
                                  f"dl.fit has no option '{key}'; options are "
                                  f"{sorted(known)}")
        kw.update(options)
    # a progress bar only on a terminal: redirected to a file or a CI log it is noise
    kw["progress"] = bool(not args.quiet and ft.get("progress", True) and sys.stderr.isatty())
    kw["checkpoint"] = str(out / CHECKPOINT)
    kw["resume"] = bool(getattr(args, "resume", False))
    return kw


@contextlib.contextmanager
def _dask_client(args, console: Console):
    """A Dask client for ``--workers N`` (a new local cluster on loopback, closed at the end)
    or ``--scheduler ADDRESS`` (an existing cluster); None without either, and then Dask is
    not imported."""
    workers, address = getattr(args, "workers", None), getattr(args, "scheduler", None)
    if workers is None and address is None:
        yield None
        return
    if workers is not None and address is not None:
        raise OptionError("give either --workers (a local cluster) or --scheduler (an "
                          "existing one), not both")
    if workers is not None and workers < 1:
        raise OptionError(f"--workers must be a positive integer, got {workers}")
    try:
        from dask.distributed import Client
    except ImportError:
        raise OptionError("--workers and --scheduler need Dask: pip install "
                          "'dynlearn[dist]'") from None
    if address is not None:
        try:
            client = Client(address, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise OptionError(f"--scheduler {address}: cannot connect: {_one_line(exc)}"
                              ) from None
    else:
        from dynlearn.distributed.dask import local_client
        client = local_client(workers)
    info = client.scheduler_info()
    console.note(f"running on Dask: scheduler {info.get('address', address)}, "
                 f"{len(info.get('workers', {}))} workers")
    try:
        yield client
    finally:
        client.close()


def _run_fit(mf, data, out: Path, args, console: Console, csv: Path | None = None) -> int:
    import dynlearn as dl
    kw = _fit_kwargs(mf, args, out)
    model = mf.model
    nrows = sum(len(e) for e in data.experiments)
    with _dask_client(args, console) as client:
        if client is not None:
            kw["client"] = client
        console.note(f"fitting '{model.name}': {model.n_theta} parameters "
                     f"({len(model.free_params)} physical"
                     + (f", {model.n_theta - len(model.free_params)} network weights" if
                        model.networks else "")
                     + f") to {nrows} rows in {len(data.experiments)} experiment(s)"
                     + (f"; resuming from {out / CHECKPOINT}.json" if kw["resume"] else ""))
        result = dl.fit(model, data, **kw)
    if result.status == 3:           # interrupted: the checkpoint is written, stop here
        raise KeyboardInterrupt
    written = write_fit_outputs(result, mf, data, out, plots=not args.no_plots,
                                console=console, csv=csv,
                                command=["dynlearn", *getattr(args, "argv", [])])
    status = "converged" if result.success else "did not converge"
    console.note(f"fit {status} in {result.elapsed:.1f} s ({result.nfev} solves): "
                 f"{result.message}")
    if not args.quiet:
        console.out(result.summary().rstrip() + "\n")
    console.out(f"wrote {', '.join(written)} to {out}")
    # a fit that ran out of budget still produced results; only a failed one is an error
    if result.status == 1:
        print(f"error: the fit failed: {_one_line(result.message)} (results of the starting "
              f"point are in {out})", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _prediction_frames(result, data, n: int = 300):
    """Model predictions on a fine grid per experiment (plus the data times)."""
    import pandas as pd
    frames = []
    for exp in data.experiments:
        t = np.union1d(np.linspace(exp.t[0], exp.t[-1], n), exp.t)
        df = result.predict(t, experiment=exp.name)
        if len(data.experiments) > 1:
            df.insert(0, "experiment", exp.name)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _bands(prediction, observables) -> dict:
    """Columns of a prediction frame that hold a band per observable, if any."""
    out = {}
    for o in observables:
        for lo, hi in ((f"{o}_lower", f"{o}_upper"), (f"{o}_lo", f"{o}_hi"),
                       (f"{o}_low", f"{o}_high")):
            if lo in prediction.columns and hi in prediction.columns:
                out[o] = (lo, hi)
                break
    return out


def write_fit_outputs(result, mf, data, out: Path, plots: bool = True,
                      console: Console | None = None, csv: Path | None = None,
                      command: list[str] | None = None) -> list[str]:
    """Write a fit's tables, figures and report into ``out`` (each file atomically).

    Besides the results, ``run.json`` records where the model file and the data came from
    (absolute paths), the dynlearn version and the time, for ``dynlearn recover`` and for
    whoever reads the folder later.

    Returns
    -------
    list of str
        The names of the files written.
    """
    from dynlearn.report.html import write_text_atomic
    console = console or Console(quiet=True)
    written = []
    model = mf.model
    tname = data.time_name

    params = result.params
    _write_csv(params, out / "params.csv", index=True)
    written.append("params.csv")
    summary = result.summary()
    write_text_atomic(out / "summary.txt", summary if summary.endswith("\n") else summary + "\n")
    written.append("summary.txt")
    pred = _prediction_frames(result, data)
    if model.time.name in pred.columns and model.time.name != tname:
        pred = pred.rename(columns={model.time.name: tname})
    _write_csv(pred, out / "predictions.csv")
    written.append("predictions.csv")
    _save_result(result, out)
    written += ["result.json", "result.npz"]
    if mf.path is not None:
        write_text_atomic(out / "model.toml", mf.path.read_text(encoding="utf-8"))
        written.append("model.toml")
    write_text_atomic(out / "run.json", _run_record(mf, csv, result, command))
    written.append("run.json")
    if not plots:
        return written
    try:
        images = _write_plots(result, mf, data, pred, out)
    except ImportError as exc:     # matplotlib missing: everything else is written
        console.note(f"warning: no figures or report: {_one_line(exc)}")
        return written
    written += [p.name for p in images]
    _write_report(result, mf, data, out, images,
                  has_bands=bool(_bands(pred, list(mf.model.observable_names))))
    written.append("report.html")
    return written


def _run_record(mf, csv, result, command) -> str:
    import datetime as dt
    import json

    from dynlearn import __version__
    rec = {"dynlearn": __version__,
           "finished": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
           "model_file": str(mf.path.resolve()) if mf.path is not None else None,
           "data_file": str(Path(csv).resolve()) if csv is not None else None,
           "command": command,
           "success": bool(result.success), "message": result.message}
    return json.dumps(rec, indent=1) + "\n"


def _save_result(result, out: Path) -> None:
    """``result.save`` (``result.json`` + ``result.npz``) under temporary names in ``out``,
    then renamed: the arrays first, the JSON last, so whoever finds ``result.json`` finds
    a complete result."""
    import secrets
    base = out / f".result-{secrets.token_hex(6)}"
    tmp_json, tmp_npz = Path(f"{base}.json"), Path(f"{base}.npz")
    try:
        result.save(base)
        os.replace(tmp_npz, out / "result.npz")
        os.replace(tmp_json, out / "result.json")
    except BaseException:
        for p in (tmp_json, tmp_npz):
            with contextlib.suppress(OSError):
                p.unlink()
        raise


def _residual_frame(result, data, loss: str):
    """Residuals in wide form (time, one column per observable[, experiment]): on the log
    scale for ``loss="log"``, in data units otherwise."""
    r = result.residuals()
    if not len(r):
        return None
    tname = data.time_name
    if loss == "log":
        with np.errstate(divide="ignore", invalid="ignore"):
            r["value"] = np.log(r["data"]) - np.log(r["fitted"])
    else:
        r["value"] = r["residual"]
    wide = r.pivot_table(index=["experiment", tname], columns="observable", values="value",
                         sort=False).reset_index()
    wide.columns = [str(c) for c in wide.columns]
    return wide


def _write_plots(result, mf, data, pred, out: Path) -> list[Path]:
    from dynlearn.report import figures as P
    model = mf.model
    tname = data.time_name
    obs = list(model.observable_names)
    dframe = data.to_frame()
    exp_col = "experiment" if len(data.experiments) > 1 else None
    images = []
    fig = P.fit_figure(dframe, pred, obs, tname, bands=_bands(pred, obs),
                       experiment_col=exp_col)
    P.save_figure(fig, out / "fit.png")
    images.append(out / "fit.png")
    loss = result.config.get("loss", "ls")
    res = _residual_frame(result, data, loss)
    if res is not None:
        label = "log residual" if loss == "log" else "residual"
        P.save_figure(P.residuals_figure(res, obs, tname, exp_col, ylabel=label),
                      out / "residuals.png")
        images.append(out / "residuals.png")
    if len(result.history):
        P.save_figure(P.loss_figure(np.asarray(result.history, dtype=float),
                                    ylabel=f"loss ({loss})"), out / "loss.png")
        images.append(out / "loss.png")
    if model.networks:
        e0 = data.experiments[0]
        traj = result.predict(np.linspace(e0.t[0], e0.t[-1], 400), bands=False)
        fig = P.learned_terms_figure(result.model, result.model.theta0, traj)
        if fig is not None:
            P.save_figure(fig, out / "learned_terms.png")
            images.append(out / "learned_terms.png")
    return images


def _params_display(params):
    """The parameter table as shown in the report: value, stderr, interval, start."""
    import pandas as pd
    rows = {}
    for name, r in params.iterrows():
        fixed = bool(r.get("fixed", False))
        lo, hi = r.get("ci_lower", np.nan), r.get("ci_upper", np.nan)
        rows[name] = {
            "value": f"{r['value']:.6g}",
            "stderr": "fixed" if fixed else (f"{r['stderr']:.3g}"
                                             if np.isfinite(r.get("stderr", np.nan)) else "n/a"),
            "95% interval": (f"[{lo:.5g}, {hi:.5g}]" if np.isfinite(lo) and np.isfinite(hi)
                             else ""),
            "start": f"{r['initial']:.6g}" if "initial" in r else "",
            "kind": str(r.get("kind", "")) + (" (fixed)" if fixed else ""),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def _write_report(result, mf, data, out: Path, images, has_bands: bool = True) -> None:
    from dynlearn.report.html import Report
    model = mf.model
    ok = result.success
    cfg = result.config
    rep = Report(f"dynlearn fit: {model.name}",
                 subtitle=f"model file {mf.source}; {sum(len(e) for e in data.experiments)} "
                          f"data rows in {len(data.experiments)} experiment(s); fitted in "
                          f"{result.elapsed:.1f} s")
    rep.paragraph(("Fit converged: " if ok else "Fit did not converge: ") + result.message,
                  "ok" if ok else "bad")
    rep.heading("Model")
    rep.items(model.equations(), code=True)
    if list(model.observable_names) != [s.name for s in model.states]:
        rep.paragraph("Observables:")
        rep.items([f"{k} = {v}" for k, v in model.observables.items()], code=True)
    for net in model.networks:
        rep.paragraph(f"Network {net.name}: inputs {', '.join(map(str, net.inputs))}; "
                      f"{net.n_outputs} outputs; {net.n_weights} weights"
                      + (f"; hidden layers {list(net.hidden)}, {net.activation}"
                         if hasattr(net, "hidden") else ""))
    rep.heading("Parameters")
    rep.table(_params_display(result.params))
    opt = result.optimizer.to_dict() if result.optimizer is not None else {}
    rep.paragraph(f"Loss: {cfg.get('loss')}; optimizer: {opt.get('type', 'default')}; "
                  f"solver: {cfg.get('method')} (rtol={cfg.get('rtol'):g}, "
                  f"atol={cfg.get('atol'):g}); {result.nfev} solves, {result.nit} iterations; "
                  f"AIC {result.aic:.4g}, BIC {result.bic:.4g}.")
    captions = {"fit": "Data (circles) and the fitted model (line)"
                       + ("; shaded: pointwise 95% confidence band of the prediction from the "
                          "parameter covariance." if has_bands else
                          " (no confidence band: the parameter covariance is not available, "
                          "e.g. more parameters than data)."),
                "residuals": ("Residuals on the log scale" if cfg.get("loss") == "log" else
                              "Residuals (data minus model)")
                             + " against time; grey: plus or minus two standard deviations.",
                "loss": "Best loss so far against the number of loss evaluations.",
                "learned_terms": "What each network output learned, over the region of its "
                                 "inputs the fit visited, with the fitted trajectory."}
    rep.heading("Figures")
    for p in images:
        rep.image(p, captions.get(p.stem, ""))
    rep.heading("Summary")
    rep.preformatted(result.summary())
    rep.heading("Files")
    rep.items(sorted(p.name for p in out.iterdir() if not p.name.startswith(".")
                     and p.name != "report.html") + ["report.html"], code=True)
    rep.write(out / "report.html")


def parse_library(spec: str):
    """A candidate library from a short text: ``poly3``, ``poly2+trig``, ``poly1+exp``.

    ``polyN``: all monomials up to degree N of the variables the networks see; ``trig``:
    sine and cosine of them; ``exp``: exponentials ``exp(x)``, ``exp(-x)``.
    """
    import re

    import dynlearn as dl
    parts = [p.strip() for p in str(spec).split("+")]
    lib = None
    for p in parts:
        m = re.fullmatch(r"poly(\d)", p)
        if m:
            piece = dl.polynomial_library(int(m.group(1)))
        elif p in ("trig", "trigonometric"):
            piece = dl.trigonometric_library()
        elif p in ("exp", "exponential"):
            piece = dl.exponential_library()
        else:
            raise OptionError(f"--library {spec!r}: unknown part {p!r}; use polyN (N = 0..9), "
                              "trig or exp, joined by '+', e.g. poly2+trig")
        lib = piece if lib is None else lib + piece
    return lib


def _recorded_data_file(out: Path) -> str | None:
    """The data file a fit in ``out`` used, from its run.json (None if unknown)."""
    import json
    try:
        rec = json.loads((out / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    f = rec.get("data_file") if isinstance(rec, dict) else None
    return f if isinstance(f, str) and Path(f).exists() else None


def cmd_recover(args, console: Console) -> int:
    """``dynlearn recover``: sparse regression of the trained networks in DIR."""
    import dynlearn as dl
    from dynlearn.io.model_file import load_model_file, model_to_toml
    from dynlearn.report.html import write_text_atomic
    out = Path(args.dir)
    if not out.is_dir():
        raise OptionError(f"{out}: not a folder; pass the --out folder of 'dynlearn fit'")
    result = _load_result(out)
    if not result.model.networks:
        raise OptionError(f"{out}: the fitted model has no networks, so there is nothing to "
                          "recover; recovery turns a trained network into equations")
    library = parse_library(args.library)
    kw = {"library": library, "seed": getattr(args, "seed", None) or 0}
    if args.threshold is not None:
        if args.threshold < 0:
            raise OptionError(f"--threshold must be >= 0, got {args.threshold}")
        kw["optimizer"] = dl.STLSQ(threshold=args.threshold)
    rec = dl.recover(result, **kw)
    eqs = rec.equations()
    score = rec.score
    console.out("recovered terms (" + args.library + " library):")
    for line in eqs:
        console.out(f"  {line}")
    console.out(score.to_string(float_format=lambda v: f"{v:.4g}"))
    model = rec.to_model()
    console.out("recovered model:")
    for line in model.equations():
        console.out(f"  {line}")
    # a model file for the refit: the recovered model plus the original data and fit settings
    tables = {}
    src = out / "model.toml"
    if src.exists():
        try:
            orig = load_model_file(src)
        except DynlearnError:
            orig = None
        if orig is not None:
            d = {k: v for k, v in (("time", orig.data["time"]), ("group", orig.data["group"]))
                 if v is not None}
            data_file = _recorded_data_file(out)
            if data_file is not None:
                d = {"file": data_file, **d}
            if orig.data["columns"] is not None:
                d["columns"] = orig.data["columns"]
            if orig.data["rename"]:
                d["rename"] = orig.data["rename"]
            tables["data"] = d
            if orig.initial["estimate"] or orig.initial["values"]:
                tables["initial"] = {k: v for k, v in (("values", orig.initial["values"]),
                                                       ("estimate", orig.initial["estimate"]))
                                     if v}
            tables["fit"] = {k: v for k, v in orig.fit.items()
                             if k in ("loss", "method", "rtol", "atol", "seed")}
    text = model_to_toml(model, tables,
                         comment=f"Recovered by 'dynlearn recover {out} --library "
                                 f"{args.library}' from the fitted hybrid model.\n"
                                 + "\n".join(eqs) + "\nRefit it: dynlearn fit "
                                 f"{out / 'recovered.toml'} --out {out}-refit")
    write_text_atomic(out / "recovered.toml", text)
    _write_csv(rec.coefficients, out / "recovery_coefficients.csv", index=True)
    write_text_atomic(out / "recovery.txt", "\n".join(eqs) + "\n\n"
                      + score.to_string(float_format=lambda v: f"{v:.4g}") + "\n")
    console.out(f"wrote recovery.txt, recovery_coefficients.csv, recovered.toml to {out}; "
                f"refit with: dynlearn fit {out / 'recovered.toml'} --out {out}-refit")
    return EXIT_OK


COMMANDS = {"fit": cmd_fit, "simulate": cmd_simulate, "recover": cmd_recover,
            "check-gradients": cmd_check_gradients, "demo": cmd_demo}


# --- entry point ----------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dynlearn`` command and return its exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 when a check fails, 2 on a user error, 130 when interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:        # --help and --version exit through argparse
            return int(exc.code or 0)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        args.argv = argv
        args.quiet = getattr(args, "quiet", False)
        args.debug = getattr(args, "debug", False)
        console = Console(args.quiet)
        with _warnings_as_lines(console):
            return COMMANDS[args.command](args, console)
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted; a fit can be continued with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as exc:
        if debug:
            raise
        cmd = next((a for a in argv if a in COMMANDS), None)
        prog = f"dynlearn {cmd}" if cmd else "dynlearn"
        print(f"error: {_one_line(exc)} (see '{prog} --help')", file=sys.stderr)
        return EXIT_USAGE
    except (DynlearnError, OSError) as exc:
        if debug:
            raise
        msg = str(exc)
        if isinstance(exc, OSError) and exc.filename is not None:
            msg = f"{exc.filename}: {exc.strerror or msg}"
        print(f"error: {_one_line(msg)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        if debug:
            raise
        print(f"error: internal error ({type(exc).__name__}: {_one_line(exc)}); run again "
              "with --debug for the traceback and please report it", file=sys.stderr)
        return EXIT_FAILED
