"""The ``dynlearn`` command: fit, simulate, recover, check-gradients and demo.

Every command reads a TOML model file (see :mod:`dynlearn.io`) and, where it needs one, a
CSV of measurements; ``fit`` also reads a PEtab problem (``problem.yaml``, see
:mod:`dynlearn.petab.outputs`). A user error (missing file, malformed TOML, unknown symbol, bad CSV,
bad option) prints one line ``error: ...`` naming the file and the line, row or column where
known, and exits with status 2; ``--debug`` shows the traceback instead. Outputs are written
to a temporary file in the destination folder and renamed, so a folder never holds a
half-written file. An output never replaces an input of the command, and ``fit`` refuses an
output folder holding files it did not write unless ``--force`` is given; the default
folder's name is made safe from the model's name. Without ``-v``, the log lines of Dask are
silenced, so that stderr holds the command's own lines only.

Exit status: 0 success; 1 a fit that failed or gradients that disagree
(``check-gradients``); 2 a user error; 3 a fit that did not converge (it stalled or ran out
of iterations or time: its results are written all the same); 130 interrupted (a fit keeps
its checkpoint, and ``--resume`` continues it; ``params.csv`` and ``summary.txt`` hold its
best point so far, marked interrupted). A converged fit removes its checkpoint; one that
did not converge keeps it (the ``wrote`` line lists it), for ``--resume``.

Run ``dynlearn --help`` or ``dynlearn COMMAND --help`` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import inspect
import json
import logging
import os
import re
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dynlearn.data.dataset import read_csv
from dynlearn.discovery import (
    STLSQ,
    exponential_library,
    polynomial_library,
    recover,
    trigonometric_library,
)
from dynlearn.discovery.recovery import SELECTIONS
from dynlearn.discovery.sampling import REGIONS
from dynlearn.discovery.selection import CRITERIA
from dynlearn.errors import DataError, DynlearnError, FitInterrupted, OptionError, UsageError
from dynlearn.files import safe_file_name, write_text_atomic
from dynlearn.fitting import fit
from dynlearn.io.examples import example_description, example_files, example_names, write_example
from dynlearn.io.model_file import load_model_file, looks_like_csv, model_to_toml, parse_time_grid
from dynlearn.objective import Objective
from dynlearn.objective.losses import LOSS_NAMES, loss_from_name
from dynlearn.optimizers import Status
from dynlearn.petab.fitting import FIT_OPTIMIZERS, available_optimizers, choose_optimizer
from dynlearn.petab.outputs import PETAB_FIT_OUTPUTS, looks_like_petab
from dynlearn.report.tables import write_csv
from dynlearn.results import load_result
from dynlearn.results.diagnostics import count_fitted_values, describe_counts
from dynlearn.sensitivity import Adjoint, FiniteDifference, ForwardSensitivity
from dynlearn.sensitivity.finite_difference import parameter_step_scales
from dynlearn.solve import SOLVER_OPTIONS, check_method, simulate
from dynlearn.version import __version__

__all__ = ["build_parser", "fit_arguments", "main", "model_files_reference"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_NOT_CONVERGED = 3

# demo budget: small enough to finish well within a minute on a laptop
DEMO_MAXITER = 60


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


#: the files ``dynlearn fit`` and ``demo`` write into their output folder
FIT_OUTPUTS = frozenset({"params.csv", "summary.txt", "predictions.csv", "result.json",
                         "result.npz", "model.toml", "run.json", "fit.png", "residuals.png",
                         "loss.png", "learned_terms.png", "report.html", "checkpoint.json",
                         "checkpoint.npz"}) | PETAB_FIT_OUTPUTS
#: the files ``dynlearn recover`` writes beside them
RECOVER_OUTPUTS = frozenset({"recovered.toml", "recovery_coefficients.csv", "recovery.txt",
                             "candidates.csv", "inclusion.csv"})


def _read_json_file(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _dynlearn_files(out: Path) -> frozenset[str] | None:
    """The names of the files dynlearn writes in ``out``, when ``out`` is a folder dynlearn
    wrote (its ``run.json`` or checkpoint says so); ``None`` when it is not."""
    run = _read_json_file(out / "run.json")
    ckpt = _read_json_file(out / "checkpoint.json")
    ours = isinstance(run, dict) and "dynlearn" in run or \
        isinstance(ckpt, dict) and "names" in ckpt
    if not ours:
        return None
    recorded = run.get("files", []) if isinstance(run, dict) else []
    return FIT_OUTPUTS | RECOVER_OUTPUTS | {str(f) for f in recorded if isinstance(f, str)}


def _is_ours(name: str, ours: frozenset[str]) -> bool:
    """A file of dynlearn's: one of ``ours``, or the temporary file of one (a hidden
    ``.<name>.<random>.tmp`` left by a killed process, see :mod:`dynlearn.files`)."""
    if name in ours:
        return True
    return name.startswith(".") and name.endswith(".tmp") and \
        any(name.startswith(f".{n}.") for n in ours)


def _prepare_out_dir(path, inputs: Sequence = (), force: bool = False) -> Path:
    """The output folder of a fit, made safe to write: never one where the fit would
    overwrite one of its ``inputs``, and, unless ``force``, never a non-empty folder that
    holds files dynlearn did not write."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {out}: exists and is not a folder")
    written = FIT_OUTPUTS | (_dynlearn_files(out) or frozenset()) if out.is_dir() \
        else FIT_OUTPUTS
    for p in inputs:
        if p is None:
            continue
        src = Path(p).resolve()
        if src.parent == out.resolve() and src.name in written:
            raise OptionError(f"--out {out}: the fit writes {src.name} there, which is its "
                              f"input {p}: it would be overwritten; choose another --out "
                              "(an input is never overwritten, not even with --force)")
    if out.is_dir() and not force:
        ours = _dynlearn_files(out) or frozenset()
        foreign = sorted(q.name for q in out.iterdir() if not _is_ours(q.name, ours))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more"
                                              if len(foreign) > 5 else "")
            raise OptionError(f"--out {out} is not empty and holds files dynlearn did not "
                              f"write ({shown}); choose a new or empty folder, or pass --force "
                              "to write beside them (files named like dynlearn's outputs are "
                              "replaced, nothing else is touched)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"--out {out}: cannot create the folder: {exc.strerror}") from None
    return out


def _recorded_outputs(out: Path) -> list[str]:
    """The files ``out/run.json`` lists as dynlearn's."""
    run = _read_json_file(out / "run.json")
    files = run.get("files", []) if isinstance(run, dict) else []
    return [f for f in files if isinstance(f, str)] if isinstance(files, list) else []


def _record_outputs(out: Path, names: Sequence[str]) -> None:
    """Add ``names`` to the files ``out/run.json`` lists as dynlearn's (what a later run
    into the same folder may replace; see :func:`_prepare_out_dir`)."""
    run = _read_json_file(out / "run.json")
    if not isinstance(run, dict):
        return
    run["files"] = sorted({*_recorded_outputs(out), *names})
    write_text_atomic(out / "run.json", json.dumps(run, indent=1) + "\n")


# --- argument parsing -----------------------------------------------------------------------
# Option types that reject what cannot be meant (``--maxiter -3``, ``--max-time nan``) when
# the command line is read, as a usage error (exit status 2) naming the option, instead of
# a fit that quietly runs with a nonsensical budget.
def _integer(minimum: int):
    """An argparse type: an integer of at least ``minimum``."""
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value

    return parse


def _real(positive: bool = True):
    """An argparse type: a finite number, ``> 0`` if ``positive`` else ``>= 0``."""
    what = "a positive number" if positive else "a number >= 0"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not np.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"must be {what} (finite), got {text}")
        return value

    return parse


def _common(parser: argparse.ArgumentParser) -> None:
    """Options every command accepts (before or after the command name)."""
    g = parser.add_argument_group("common options")
    g.add_argument("--seed", type=_integer(0), default=argparse.SUPPRESS,
                   help="random seed (network initialisation, multi-start, optimizer)")
    g.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="no progress bar and no notes; results and errors only")
    g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the full traceback on errors")
    g.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show the log lines of the libraries underneath (Dask's)")


def _scale_out(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("scale-out")
    g.add_argument("--workers", type=_integer(1), default=None, metavar="N",
                   help="parallel workers for experiments and multi-start (default: serial)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="address of a running Dask scheduler (default: a local cluster when "
                        "--workers is given)")


def _fit_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("fit settings (override the model file's [fit] table)")
    g.add_argument("--loss", choices=list(LOSS_NAMES), default=None,
                   help="least squares, Gaussian likelihood (noise estimated) or log-scale "
                        "residuals (positive counts)")
    g.add_argument("--transform", action="append", default=None, metavar="OBS=NAME",
                   help="residual scale of an observable: lin, log or log10 (repeat it: "
                        "--transform A=log --transform B=log10; one name alone, "
                        "--transform log, for every observable); replaces the model file's "
                        "[fit] transform; the residual is (g(model) - g(data)) / sigma, and "
                        "with --loss gaussian each noise level is estimated on its scale")
    g.add_argument("--maxiter", type=_integer(1), default=None, metavar="N",
                   help="iteration budget of the optimizer")
    g.add_argument("--method", default=None, metavar="METHOD",
                   help="solve_ivp method: RK45, RK23, DOP853, Radau, BDF, LSODA, or auto "
                        "(default: RK45 or LSODA as a stiffness probe decides)")
    g.add_argument("--max-time", type=_real(), default=None, metavar="SECONDS",
                   help="stop the whole fit (all its starts) after this long, keeping the "
                        "best point (and a checkpoint for --resume)")
    g.add_argument("--n-starts", type=_integer(1), default=None, metavar="N",
                   help="multi-start: N fits, the first from the model's values, the "
                        "others from random points within the bounds; the best is kept "
                        "(default: [fit] n_starts, else 1)")
    g.add_argument("--no-plots", action="store_true", help="skip the figures and the report")


#: the model-file reference as the package ships it (package data: a symbolic link to
#: docs/model-files.md, which a wheel build copies)
MODEL_FILES_DOC = "bundled/docs/model-files.md"


def model_files_reference() -> str:
    """Where the model-file reference is on this machine: the copy of docs/model-files.md
    installed with the package (a source checkout has docs/model-files.md too), found by
    :mod:`importlib.resources`, so that a wheel install can point to it."""
    return str(importlib.resources.files("dynlearn").joinpath(MODEL_FILES_DOC))


def _model_files_doc() -> str:
    """docs/model-files.md, and where the installed package keeps it, for help texts."""
    return f"docs/model-files.md (installed with dynlearn as {model_files_reference()})"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``dynlearn`` command."""
    p = _Parser(prog="dynlearn",
                description="Fit hybrid dynamical models (equations plus small neural "
                            "networks) to measured time series.",
                epilog="Start with 'dynlearn demo'. Model files are TOML, described key by "
                       f"key in {_model_files_doc()}; 'dynlearn example' writes working "
                       "ones.")
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
                                   "checkpoint.json/.npz in DIR, and params.csv and "
                                   "summary.txt of its best point so far; --resume "
                                   "continues it. A fit that did not converge keeps its "
                                   "checkpoint too; a converged fit removes it. DIR must be "
                                   "new, empty or dynlearn's (else --force).",
                       epilog="Exit status: 0 converged; 1 the fit failed; 2 a user error; "
                              "3 the fit did not converge (stalled, or out of iterations or "
                              "time; results are written); 130 interrupted. "
                              f"Model files: {_model_files_doc()} has every table and "
                              "key, with an example each; 'dynlearn example NAME' writes a "
                              "working model file and its CSV.")
    f.add_argument("model", metavar="MODEL.toml",
                   help="the model file (TOML; see docs/model-files.md and 'dynlearn "
                        "example'); it comes before DATA.csv. Or a PEtab problem "
                        "(problem.yaml, needs pip install 'dynlearn[petab]'): a multi-start "
                        "fit (default 10 starts, the first from the nominal values) that "
                        "writes parameters.csv (estimates, standard errors, bounds hit), "
                        "starts.csv, simulations.csv and summary.txt into DIR; see "
                        "docs/petab.md")
    f.add_argument("data", metavar="DATA.csv", nargs="?",
                   help="measurements (default: [data] file in the model file)")
    f.add_argument("--out", "-o", metavar="DIR", default=None,
                   help="output folder (default: ./<model name>-fit)")
    f.add_argument("--resume", action="store_true",
                   help="continue an interrupted fit from the checkpoint in DIR")
    f.add_argument("--force", action="store_true",
                   help="write into DIR although it holds files dynlearn did not write "
                        "(files named like dynlearn's outputs are replaced, nothing else is "
                        "touched; an input file is never overwritten)")
    _fit_options(f)
    g = f.add_argument_group("PEtab problem (problem.yaml)")
    g.add_argument("--optimizer", choices=["auto", *FIT_OPTIMIZERS], default=None,
                   help="the optimizer of each start: fisher (a trust region on the exact "
                        "gradient with the Fisher information as Hessian, Gauss-Newton for "
                        "normal noise), lbfgsb (scipy's L-BFGS-B on the exact gradient), or "
                        "auto (default: fisher when every observable has normal noise, else "
                        "lbfgsb; a PEtab SciML problem has lbfgsb only); see docs/petab.md")
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
    s.add_argument("--rtol", type=_real(), default=None)
    s.add_argument("--atol", type=_real(), default=None)
    s.add_argument("--out", "-o", default=None, metavar="FILE.csv")
    _common(s)

    r = sub.add_parser("recover", help="recover equations for the networks of a fitted "
                                       "hybrid model",
                       description="Sparse regression of the trained networks in DIR (written "
                                   "by 'dynlearn fit') onto a library of candidate terms, "
                                   "then the choice of terms through the ODE: every structure "
                                   "on the regression's sparsity path is refitted to the data "
                                   "and the best by an information criterion is kept (Python: "
                                   "dl.recover; see docs/discovery.md). Writes recovery.txt, "
                                   "recovery_coefficients.csv, recovered.toml and, with "
                                   "--select ode, candidates.csv and inclusion.csv into DIR.")
    r.add_argument("dir", metavar="DIR")
    r.add_argument("--library", default="poly2", metavar="LIB",
                   help="candidate terms: poly1..poly9 (polynomials of the network inputs' "
                        "symbols up to that degree), optionally '+trig' or '+exp' (default "
                        "poly2, as in Python)")
    r.add_argument("--threshold", type=_real(positive=False), default=None,
                   help="sparsity threshold (default: chosen automatically)")
    r.add_argument("--select", choices=list(SELECTIONS), default="ode",
                   help="how the refit chooses the terms: 'ode' (default) refits every "
                        "structure on the regression's sparsity path to the data and keeps "
                        "the best by --criterion; 'prune' refits the regression's own choice "
                        "and drops its insignificant terms")
    r.add_argument("--criterion", choices=list(CRITERIA), default=None,
                   help="information criterion of --select ode: bic (default) or aicc (more "
                        "permissive: keeps more terms)")
    r.add_argument("--region", choices=list(REGIONS), default="tube",
                   help="where to sample the network besides its trajectories: tube "
                        "(default: within --radius of them), hull, box, or trajectory "
                        "(nowhere else)")
    r.add_argument("--radius", type=_real(), default=0.02,
                   help="half-width of the tube, as a fraction of each variable's range "
                        "(default 0.02)")
    r.add_argument("--no-refit", action="store_true",
                   help="skip the refit to the data: the regression of the network alone")
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
    c.add_argument("--rtol", type=_real(), default=1e-9)
    c.add_argument("--atol", type=_real(), default=1e-11)
    c.add_argument("--tol", type=_real(positive=False), default=1e-3,
                   help="largest accepted relative difference (default 1e-3): relative to "
                        "the gradient or, near an optimum, to the gradient change of a 0.1%% "
                        "change of the parameter")
    c.add_argument("--fd-max", type=_integer(1), default=40, metavar="N",
                   help="finite differences on at most N parameters (default 40)")
    c.add_argument("--rows", type=_integer(1), default=20, metavar="N",
                   help="print at most N parameters (default 20)")
    _common(c)

    d = sub.add_parser("demo", help="fit the bundled lynx-hare data end to end",
                       description="Fit the Lotka-Volterra model to the Hudson's Bay lynx and "
                                   "hare pelt records (bundled) with a small budget and write "
                                   "the results, figures and report.")
    d.add_argument("--out", "-o", metavar="DIR", default="dynlearn-demo",
                   help="output folder (default: ./dynlearn-demo)")
    d.add_argument("--resume", action="store_true")
    d.add_argument("--force", action="store_true",
                   help="write into DIR although it holds files dynlearn did not write")
    d.add_argument("--maxiter", type=_integer(1), default=None, metavar="N")
    _scale_out(d)
    _common(d)

    e = sub.add_parser("example", help="write an example model file and its data",
                       description="Write the shipped example NAME (NAME.toml, NAME.csv) "
                                   "into DIR, ready for 'dynlearn fit NAME.toml NAME.csv'. "
                                   "Without NAME, list the examples.")
    e.add_argument("name", metavar="NAME", nargs="?", help="the example (see the list)")
    e.add_argument("--out", "-o", metavar="DIR", default=".",
                   help="folder to write into (default: the current folder)")
    e.add_argument("--force", action="store_true", help="replace files of the same names")
    _common(e)
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
    path = Path(path)
    if path.is_dir():
        path = path / "result.json"
    if not path.exists():
        raise OptionError(f"{path}: no such file (expected a result.json written by "
                          "'dynlearn fit')")
    return load_result(path)


def _model_from_file(args):
    _model_file_first(args)
    return load_model_file(args.model, default_seed=getattr(args, "seed", None))


def _model_file_first(args) -> None:
    """A :class:`UsageError` when the model-file argument is a CSV (the arguments swapped,
    or the model file forgotten)."""
    if not looks_like_csv(args.model):
        return
    if not hasattr(args, "data"):        # a command without a CSV argument
        raise UsageError(f"'{args.model}' looks like a CSV; dynlearn {args.command} needs the "
                         "model file (MODEL.toml)")
    data = args.data
    swap = (f": dynlearn {args.command} {data} {args.model}"
            if data is not None and not looks_like_csv(data) else
            f": dynlearn {args.command} MODEL.toml {args.model}")
    raise UsageError(f"'{args.model}' looks like a CSV; the model file comes first{swap}")


# --- commands -------------------------------------------------------------------------------
def cmd_simulate(args, console: Console) -> int:
    """``dynlearn simulate``."""
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
            inputs = read_csv(args.inputs)
        except DataError as exc:
            raise OptionError(f"--inputs {_one_line(exc)}") from None
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
        for src in (args.model, args.inputs, args.params):
            if src is not None and Path(src).exists() and out.exists() and \
                    Path(src).resolve() == out.resolve():
                raise OptionError(f"--out {out} is an input of this command ({src}); an input "
                                  "is never overwritten: choose another --out")
        write_csv(frame, out)
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
    # 4th-order central differences with a relative step of 1e-4: at solver tolerances
    # near 1e-9 it balances truncation (~h^4) against the solver's own noise (~tol / h);
    # the diagonal curvature comes from the same evaluations
    t0 = time.perf_counter()
    # on each parameter's own scale (log for positive ones), never across a bound
    typical, lower, upper, log = parameter_step_scales(model, model.n_theta)
    _, grads["finite-diff"], curv = FiniteDifference(step=1e-4, order=4).derivatives(
        obj.value, theta, idx, curvature=True, typical=typical, lower=lower, upper=upper,
        log=log)
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


def cmd_fit(args, console: Console) -> int:
    """``dynlearn fit``."""
    if looks_like_petab(args.model):
        return cmd_fit_petab(args, console)
    if getattr(args, "optimizer", None) is not None:
        raise OptionError("--optimizer: for a PEtab problem (problem.yaml) only; a model "
                          "file names its optimizer in its [fit] table (optimizer = ..., "
                          "see docs/model-files.md)")
    mf = _model_from_file(args)
    data = mf.read_data(args.data)
    csv = Path(args.data) if args.data is not None else mf.data["file"]
    # the model's name chooses the default folder: made a safe name, so that it cannot
    # point outside the working directory
    out = Path(args.out or f"{safe_file_name(mf.model.name)}-fit")
    fit_arguments(mf, args, out)      # a bad option fails before any folder is made
    out = _prepare_out_dir(out, inputs=[args.model, csv], force=args.force)
    return _run_fit(mf, data, out, args, console, csv)


def cmd_fit_petab(args, console: Console) -> int:
    """``dynlearn fit problem.yaml``: a multi-start fit of a PEtab problem
    (:meth:`dynlearn.petab.PetabProblem.fit`; the files: :mod:`dynlearn.petab.outputs`)."""
    import dynlearn.petab as dp

    given = [opt for opt, v in (("DATA.csv", args.data), ("--resume", args.resume),
                                ("--loss", args.loss), ("--transform", args.transform),
                                ("--workers", args.workers),
                                ("--scheduler", args.scheduler)) if v]
    if given:
        raise OptionError(f"{', '.join(given)}: not for a PEtab problem (its measurements, "
                          "noise model and likelihood are in its tables; its starts run "
                          "one after the other)")
    out = Path(args.out or f"{safe_file_name(Path(args.model).stem)}-fit")
    options = {"method": args.method} if args.method else {}
    if args.method:
        check_method(args.method)
    with warnings.catch_warnings():
        # the petab library's own pandas deprecations say nothing about the problem
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"petab\.")
        problem = dp.load(args.model, **options)
    choices = available_optimizers(problem)
    asked = getattr(args, "optimizer", None)
    if asked not in (None, "auto", *choices):
        raise OptionError(f"--optimizer {asked}: not for this problem ({problem!r} has no "
                          f"Fisher information); choose from auto, {', '.join(choices)}")
    optimizer = choose_optimizer(problem) if asked in (None, "auto") else asked
    # a problem with one optimizer (PEtab SciML) runs it without being told
    fit_options = {"optimizer": optimizer} if len(choices) > 1 else {}
    out = _prepare_out_dir(out, inputs=dp.outputs.problem_files(args.model), force=args.force)
    n_starts = args.n_starts or PETAB_N_STARTS
    console.note(f"fitting PEtab problem {args.model}: {problem!r}, {n_starts} starts, "
                 f"optimizer {optimizer}"
                 + (f"; objective with the priors of {', '.join(problem.priors.names)}"
                    if problem.priors is not None else ""))
    t0 = time.perf_counter()
    result = problem.fit(n_starts=n_starts, seed=getattr(args, "seed", None) or 0,
                         x0=problem.x_nominal, maxiter=args.maxiter or 2000,
                         max_time=args.max_time, **fit_options)
    seconds = time.perf_counter() - t0
    errors = dp.outputs.standard_errors(problem, result.x) if np.isfinite(result.fun) \
        else None
    summary = dp.outputs.fit_summary(problem, result, errors, seconds=seconds)
    if errors is None:
        errors = dp.outputs.StandardErrors(np.full(len(result.x), np.nan),
                                           [""] * len(result.x), "every start failed")
    written = dp.outputs.write_fit_outputs(problem, result, out, errors, summary,
                                           command=["dynlearn", *getattr(args, "argv", [])],
                                           problem_file=args.model)
    console.out(summary.rstrip())
    console.out(f"wrote {', '.join(p.name for p in written)} to {out}")
    if not np.isfinite(result.fun):
        print(f"error: the fit failed: {_one_line(result.runs[0]['message'])}",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK if result.success else EXIT_NOT_CONVERGED


#: starts of ``dynlearn fit problem.yaml`` without --n-starts
PETAB_N_STARTS = 10


def cmd_demo(args, console: Console) -> int:
    """``dynlearn demo``: the bundled lynx-hare fit."""
    src = example_files("lynx_hare")[0]      # the shipped example (`dynlearn example`)
    mf = load_model_file(src, default_seed=getattr(args, "seed", None))
    data = mf.read_data()
    if args.maxiter is None:
        args.maxiter = DEMO_MAXITER
    args.loss = args.method = None
    args.no_plots = False
    out = _prepare_out_dir(args.out, inputs=[src, mf.data["file"]], force=args.force)
    console.note(f"dynlearn demo: Lotka-Volterra fit to the Hudson's Bay lynx and hare pelts "
                 f"(1900-1920), {len(data.experiments[0])} years")
    code = _run_fit(mf, data, out, args, console, mf.data["file"])
    report = out.resolve() / "report.html"
    if report.exists():
        console.out(f"Results are in {out.resolve()}; open {report} in a browser.")
    else:       # no plots, no report: matplotlib is missing (the [plot] extra)
        console.out(f"Results are in {out.resolve()} (for plots and report.html: "
                    "pip install 'dynlearn[plot]')")
    return code


def cmd_example(args, console: Console) -> int:
    """``dynlearn example [NAME]``: list the shipped examples, or write one out."""
    if args.name is None:
        names = example_names()
        width = max(len(n) for n in names)
        console.out("examples (write one with 'dynlearn example NAME [--out DIR]'):")
        for n in names:
            console.out(f"  {n:<{width}}  {example_description(n)}")
        return EXIT_OK
    written = write_example(args.name, args.out, force=args.force)
    model, data = written[0], next((p for p in written if p.suffix == ".csv"), None)
    console.out(f"wrote {', '.join(p.name for p in written)} to {Path(args.out)}")
    fit_cmd = f"dynlearn fit {model}" + (f" {data}" if data is not None else "")
    console.out(f"fit it with: {fit_cmd}")
    return EXIT_OK


CHECKPOINT = "checkpoint"      # dl.fit writes checkpoint.json + checkpoint.npz


def parse_transform_option(values) -> str | dict:
    """The ``transform=`` of :func:`dynlearn.fit` from the values of ``--transform``: one
    transform name alone (every observable), or ``OBS=NAME`` entries (a dict). The names
    are checked where the Python API checks them (:func:`fit_arguments`).

    Raises
    ------
    OptionError
        For an entry that is neither, an observable given twice, or a name for every
        observable mixed with per-observable entries.
    """
    out: dict = {}
    alone = []
    for v in values:
        text = str(v).strip()
        if "=" not in text:
            alone.append(text)
            continue
        name, tr = (part.strip() for part in text.split("=", 1))
        if not name or not tr:
            raise OptionError(f"--transform {text!r}: give OBS=NAME (e.g. A=log) or one "
                              "transform name for every observable")
        if name in out and out[name] != tr:
            raise OptionError(f"--transform: {name!r} given twice ({out[name]!r} and {tr!r})")
        out[name] = tr
    if alone and (out or len(alone) > 1):
        raise OptionError(f"--transform {alone[0]!r}: a transform for every observable is "
                          "given alone; per observable, give OBS=NAME entries")
    return alone[0] if alone else out


def fit_arguments(mf, args, out: Path) -> dict:
    """Keyword arguments of :func:`dynlearn.fit` from a model file and the command line.

    Parameters
    ----------
    mf : ModelFile
        The loaded model file (its [fit], [noise] and [initial] tables).
    args : argparse.Namespace
        The parsed command line; it wins over the model file. Settings given in neither are
        left to ``dl.fit``'s defaults.
    out : Path
        The output folder (the checkpoint is written there).

    Returns
    -------
    dict
        Keyword arguments for ``dl.fit(model, data, **kwargs)``.
    """
    ft = mf.fit
    kw: dict = {}
    for key in ("loss", "transform", "method", "rtol", "atol", "seed", "n_starts", "l2",
                "max_time"):
        if key in ft:
            kw[key] = ft[key]
    sigma = mf.noise["sigma"]
    if sigma == "estimate":
        kw.setdefault("loss", "gaussian")
    elif sigma is not None:
        kw["sigma"] = sigma
    # named (shared) or per-experiment levels are estimated: the Gaussian likelihood
    if mf.noise.get("sigma_by") is not None:
        kw["sigma_by"] = mf.noise["sigma_by"]
    if mf.noise.get("noise_params") is not None:
        kw["noise_params"] = mf.noise["noise_params"]
    if kw.get("sigma_by") or isinstance(sigma, dict) and any(isinstance(v, str)
                                                            for v in sigma.values()):
        kw.setdefault("loss", "gaussian")
    if "sensitivity" in ft:
        kw["sensitivity"] = {"forward": ForwardSensitivity, "adjoint": Adjoint,
                             "finite-difference": FiniteDifference}[ft["sensitivity"]]()
    optimizer = mf.optimizer(maxiter=getattr(args, "maxiter", None))
    if optimizer is not None:
        kw["optimizer"] = optimizer
    kw["y0"] = mf.y0()
    if mf.y0_init() is not None:
        kw["y0_init"] = mf.y0_init()
    for key in ("loss", "method", "seed", "max_time", "n_starts"):
        v = getattr(args, key, None)
        if v is not None:
            kw[key] = v
    if "method" in kw:       # checked here so that a bad --method fails before any output
        check_method(kw["method"], auto=True)
    given = getattr(args, "transform", None)
    if given:                # the command line's replace the file's
        kw["transform"] = parse_transform_option(given)
    if "transform" in kw:    # --loss log against the transforms: before any output
        try:
            loss_from_name(kw.get("loss", "ls"), kw["transform"]).bind(
                mf.model.observable_names)
        except OptionError as exc:
            if not given:
                raise
            raise OptionError(f"--transform: {exc}") from None
    workers = getattr(args, "workers", None)
    if workers is not None and workers < 1:
        raise OptionError(f"--workers must be a positive integer, got {workers}")
    options = ft.get("options", {})
    if options:
        known = set(inspect.signature(fit).parameters) | SOLVER_OPTIONS
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
    with _quiet_libraries(getattr(args, "verbose", False)):
        with _connected(args, console, workers, address) as client:
            yield client


#: the loggers of the libraries under the Dask runtime
LIBRARY_LOGGERS = ("distributed", "tornado", "asyncio", "bokeh")


@contextlib.contextmanager
def _quiet_libraries(verbose: bool):
    """Without ``-v``, the log lines of Dask in this process (its client, and the scheduler
    and nannies of a local cluster) are silenced, so that the command's own ``error:`` line
    (or its results) is all that stderr shows; the worker processes of a local cluster are
    started silent (see :func:`_connected`)."""
    if verbose:
        yield
        return
    try:     # its import sets the levels of its loggers: first import, then override
        import distributed  # noqa: F401
    except ImportError:
        pass
    names = [n for n in logging.root.manager.loggerDict
             if n.split(".")[0] in LIBRARY_LOGGERS] + list(LIBRARY_LOGGERS)
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


@contextlib.contextmanager
def _connected(args, console: Console, workers, address):
    """The client of ``--workers`` (a new local cluster) or ``--scheduler``."""
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
        quiet = {} if getattr(args, "verbose", False) else {"silence_logs": logging.CRITICAL}
        client = local_client(workers, **quiet)
    info = client.scheduler_info()
    console.note(f"running on Dask: scheduler {info.get('address', address)}, "
                 f"{len(info.get('workers', {}))} workers")
    try:
        yield client
    finally:
        client.close()


def _run_fit(mf, data, out: Path, args, console: Console, csv: Path | None = None) -> int:
    kw = fit_arguments(mf, args, out)
    model = mf.model
    nrows = sum(len(e) for e in data.experiments)
    earlier = _recorded_outputs(out)     # the run.json the report replaces listed these
    with _dask_client(args, console) as client:
        if client is not None:
            kw["client"] = client
        # counted as the summary counts them (initial states and noise levels included)
        counts = count_fitted_values(model, data, kw.get("y0", "first"), kw.get("y0_init"),
                                     kw.get("loss", "ls"), kw.get("sigma"),
                                     sigma_by=kw.get("sigma_by"),
                                     noise_params=kw.get("noise_params"))
        console.note(f"fitting '{model.name}': {describe_counts(counts)} "
                     f"to {nrows} rows in {len(data.experiments)} experiment(s)"
                     + (f"; resuming from {out / CHECKPOINT}.json" if kw["resume"] else ""))
        try:
            result = fit(model, data, **kw)
        except FitInterrupted as exc:
            raise _interrupted_outputs(exc, out) from None
    written = result.report(out, data=data, model_file=mf.path, plots=not args.no_plots,
                            data_file=csv, command=["dynlearn", *getattr(args, "argv", [])])
    _record_outputs(out, [*earlier, *(p.name for p in written), f"{CHECKPOINT}.json",
                          f"{CHECKPOINT}.npz"])
    status = "converged" if result.success else "did not converge"
    console.note(f"fit {status} in {result.elapsed:.1f} s ({result.nfev} solves): "
                 f"{result.message}")
    if not args.quiet:
        console.out(result.summary().rstrip() + "\n")
        console.out(f"Data: {csv if csv is not None else 'the table given'}: "
                    f"{data.columns_summary()}\n")
    # a converged fit has nothing left to resume: its checkpoint goes; one that stopped
    # short keeps it, listed with the outputs, for --resume to continue
    checkpoint = [out / f"{CHECKPOINT}.json", out / f"{CHECKPOINT}.npz"]
    if result.success:
        for p in checkpoint:
            p.unlink(missing_ok=True)
    kept = [p for p in checkpoint if not result.success and p.exists()]
    console.out(f"wrote {', '.join(p.name for p in [*written, *kept])} to {out}"
                + (" (the checkpoint: --resume continues the fit)" if kept else ""))
    # a fit that did not converge still wrote its results; its exit status says so
    if result.status is Status.FAILED:
        print(f"error: the fit failed: {_one_line(result.message)} (results of the starting "
              f"point are in {out})", file=sys.stderr)
        return EXIT_FAILED
    if not result.success:           # stalled, or out of iterations or time
        return EXIT_NOT_CONVERGED
    return EXIT_OK


def _interrupted_outputs(exc: FitInterrupted, out: Path) -> FitInterrupted:
    """After Ctrl-C: ``params.csv`` and ``summary.txt`` of the best point so far (its
    status says "interrupted") beside the checkpoint; nothing when no point was evaluated.
    Returns the interrupt to raise, whose text is the command's last line."""
    ck = out / f"{CHECKPOINT}.json"
    result = exc.result
    if result is None and "every start had finished" in str(exc):
        return FitInterrupted(f"interrupted while the result was computed; --resume computes "
                              f"it again from {ck}", None, exc.checkpoint)
    if result is None or not np.isfinite(result.loss):
        return FitInterrupted(f"interrupted before any point was evaluated; --resume starts "
                              f"the fit from {ck}", None, exc.checkpoint)
    try:
        write_csv(result.params, out / "params.csv", index=True)
        summary = result.summary().rstrip() + "\n"
        write_text_atomic(out / "summary.txt", summary)
    except KeyboardInterrupt:
        pass   # a second Ctrl-C: the checkpoint holds the best point all the same
    return FitInterrupted(f"interrupted; the best point so far is in {out / 'params.csv'} and "
                          f"{out / 'summary.txt'} (marked interrupted); --resume continues "
                          f"from {ck}", result, exc.checkpoint)


def parse_library(spec: str):
    """A candidate library from a short text: ``poly3``, ``poly2+trig``, ``poly1+exp``.

    ``polyN``: all monomials up to degree N of the variables the networks see; ``trig``:
    sine and cosine of them; ``exp``: exponentials ``exp(x)``, ``exp(-x)``.
    """
    parts = [p.strip() for p in str(spec).split("+")]
    lib = None
    for p in parts:
        m = re.fullmatch(r"poly(\d)", p)
        if m:
            piece = polynomial_library(int(m.group(1)))
        elif p in ("trig", "trigonometric"):
            piece = trigonometric_library()
        elif p in ("exp", "exponential"):
            piece = exponential_library()
        else:
            raise OptionError(f"--library {spec!r}: unknown part {p!r}; use polyN (N = 0..9), "
                              "trig or exp, joined by '+', e.g. poly2+trig")
        lib = piece if lib is None else lib + piece
    return lib


def _recorded_data_file(out: Path) -> str | None:
    """The data file a fit in ``out`` used, from its run.json (None if unknown)."""
    try:
        rec = json.loads((out / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    f = rec.get("data_file") if isinstance(rec, dict) else None
    return f if isinstance(f, str) and Path(f).exists() else None


def cmd_recover(args, console: Console) -> int:
    """``dynlearn recover``: sparse regression of the trained networks in DIR."""
    out = Path(args.dir)
    if not out.is_dir():
        raise OptionError(f"{out}: not a folder; pass the --out folder of 'dynlearn fit'")
    result = _load_result(out)
    if not result.model.networks:
        raise OptionError(f"{out}: the fitted model has no networks, so there is nothing to "
                          "recover; recovery turns a trained network into equations")
    kw = _recover_kwargs(args)
    rec = recover(result, **kw)
    eqs = rec.equations(uncertainty=rec.stderr is not None)
    score = rec.score
    console.out("recovered terms (" + args.library + " library):")
    for line in eqs:
        console.out(f"  {line}")
    model = rec.to_model()
    if not args.quiet:
        console.out(score.to_string(float_format=lambda v: f"{v:.4g}"))
        if rec.candidates is not None:
            console.out(_candidates_text(rec.candidates))
        console.out("recovered model:")
        for line in model.equations():
            console.out(f"  {line}")
        values = ", ".join(f"{p.name} = {model.params[p].value:.4g}"
                           for p in model.param_symbols)
        console.out(("  values of the candidate's refit: " if rec.refitted else
                     "  not refitted (--no-refit): the hybrid fit's physical values and the "
                     "network's coefficients: ") + values)
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
            values = dict(orig.initial["values"])
            y0 = rec.y0 if rec.refitted else None
            if orig.initial["estimate"] and y0 is not None and len(y0) == 1:
                # estimated again from where the candidate's refit put them
                values = {s.name: float(v)
                          for s, v in zip(model.states, next(iter(y0.values())))}
            if orig.initial["estimate"] or values:
                tables["initial"] = {k: v for k, v in (("values", values),
                                                       ("estimate", orig.initial["estimate"]))
                                     if v}
            tables["fit"] = {k: v for k, v in orig.fit.items()
                             if k in ("loss", "transform", "method", "rtol", "atol", "seed")}
    text = model_to_toml(model, tables,
                         comment=f"Recovered by '{_command_text(args, out)}' from the "
                                 "fitted hybrid model.\n"
                                 + "\n".join(eqs) + "\n"
                                 + ("Values: the candidate's refit to the data (physical "
                                    "parameters re-estimated with the coefficients)."
                                    if rec.refitted else
                                    "Not refitted (--no-refit): the coefficients are the "
                                    "regression of the network, the physical parameters the "
                                    "hybrid fit's.")
                                 + "\nRefit it: dynlearn fit "
                                 f"{out / 'recovered.toml'} --out {out}-refit")
    earlier = set(_recorded_outputs(out))
    _record_outputs(out, sorted(RECOVER_OUTPUTS))
    write_text_atomic(out / "recovered.toml", text)
    write_csv(rec.coefficients, out / "recovery_coefficients.csv", index=True)
    report = "\n".join(eqs) + "\n\n" + score.to_string(float_format=lambda v: f"{v:.4g}") + "\n"
    written = ["recovery.txt", "recovery_coefficients.csv", "recovered.toml"]
    if rec.candidates is not None:
        report += "\n" + _candidates_text(rec.candidates) + "\n"
        write_csv(rec.candidates, out / "candidates.csv", index=True)
        write_csv(rec.inclusion, out / "inclusion.csv", index=False)
        written += ["candidates.csv", "inclusion.csv"]
    else:
        # no selection through the ODE in this run: the tables an earlier recover wrote
        # would describe another recovery
        for name in ("candidates.csv", "inclusion.csv"):
            if name in earlier:
                (out / name).unlink(missing_ok=True)
    write_text_atomic(out / "recovery.txt", report)
    console.out(f"wrote {', '.join(written)} to {out}; "
                f"refit with: dynlearn fit {out / 'recovered.toml'} --out {out}-refit")
    return EXIT_OK


def _command_text(args, out: Path) -> str:
    """The ``dynlearn recover`` command line that made a recovery (for its files)."""
    given = [str(a) for a in getattr(args, "argv", []) if a not in ("-q", "--quiet")]
    return "dynlearn " + " ".join(given) if given else f"dynlearn recover {out}"


def _recover_kwargs(args) -> dict:
    """Keyword arguments of :func:`dynlearn.recover` from the ``recover`` options."""
    kw = {"library": parse_library(args.library), "seed": getattr(args, "seed", None) or 0,
          "select": args.select, "region": args.region, "radius": args.radius,
          "refit": not args.no_refit}
    if args.criterion is not None:
        if args.select != "ode" or args.no_refit:
            raise OptionError("--criterion chooses among the structures refitted by --select "
                              "ode; it does nothing with "
                              + ("--no-refit" if args.no_refit else "--select prune"))
        kw["criterion"] = args.criterion
    if args.threshold is not None:       # >= 0 and --radius > 0: checked by their types
        kw["optimizer"] = STLSQ(threshold=args.threshold)
    return kw


#: candidates shown by ``dynlearn recover`` (every one is in candidates.csv)
SHOWN_CANDIDATES = 5


def _candidates_text(table) -> str:
    """The best candidates of a selection through the ODE, as text."""
    crit = str(table.attrs.get("criterion", "criterion")).upper()
    shown = table.head(SHOWN_CANDIDATES)[["terms", "n_coefficients", "loss", "criterion",
                                          "delta", "weight"]]
    chosen = ", ".join(str(i) for i in table.index[table["chosen"].astype(bool)])
    more = len(table) - len(shown)
    return (f"candidates refitted to the data, best first ({crit}; chosen: candidate {chosen}"
            + (f"; {more} more in candidates.csv" if more > 0 else "") + "):\n"
            + shown.to_string(float_format=lambda v: f"{v:.4g}"))


COMMANDS = {"fit": cmd_fit, "simulate": cmd_simulate, "recover": cmd_recover,
            "check-gradients": cmd_check_gradients, "demo": cmd_demo, "example": cmd_example}


# --- entry point ----------------------------------------------------------------------------
def _end_by_sigint() -> None:
    """End the process by SIGINT, as Python does on an uncaught ``KeyboardInterrupt``, once
    the outputs and the error line are written. A shell running the command in a loop
    stops the loop only when its child died of the signal: an exit status of 130 tells it
    the child dealt with Ctrl-C itself, and the loop goes on. The shell shows status 130
    either way. Where a process cannot signal itself (Windows) this returns."""
    if os.name == "nt" or not hasattr(signal, "SIGINT"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dynlearn`` command and return its exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (default ``sys.argv[1:]``). Without them (the
        ``dynlearn`` command, ``python -m dynlearn``), an interrupted run ends the process
        by SIGINT after writing its outputs, so that a shell loop over commands stops too
        (the shell shows status 130); given them, ``main`` returns 130.

    Returns
    -------
    int
        0 on success, 1 when a check fails, 2 on a user error, 3 when a fit did not
        converge, 130 when interrupted.
    """
    as_program = argv is None          # the command itself, not a call from Python
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
        args.verbose = getattr(args, "verbose", False)
        console = Console(args.quiet)
        with _warnings_as_lines(console):
            return COMMANDS[args.command](args, console)
    except KeyboardInterrupt as exc:
        if debug:
            raise
        if isinstance(exc, FitInterrupted) and str(exc):
            print(f"error: {_one_line(exc)}", file=sys.stderr)
        else:
            print("error: interrupted; a fit can be continued with --resume", file=sys.stderr)
        if as_program:
            _end_by_sigint()
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
