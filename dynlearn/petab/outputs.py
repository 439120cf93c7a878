"""What ``dynlearn fit problem.yaml --out DIR`` writes: the fitted parameters with standard
errors, every start, the simulated values beside the measurements, and a summary.

Files (CSV, written atomically):

* ``parameters.csv``: one row per estimated parameter: ``parameterId``, ``scale``,
  ``estimate`` (on its PEtab scale), ``value`` (linear), ``lowerBound``/``upperBound``
  (linear, as in the parameter table), ``std_error`` (on the scale; empty when it cannot be
  had), ``at_bound`` (``lower``/``upper`` when the estimate sits on a bound) and
  ``nominalValue``.
* ``starts.csv``: one row per start, in the order the starts were made: ``start``,
  ``nllh`` (final negative log-likelihood), ``objective`` (with the priors, when the table
  has them), ``status``, ``iterations``, ``optimizer`` (``fisher`` or ``lbfgsb``),
  ``message``.
* ``simulations.csv``: the measurement table (its order) with a ``simulation`` column at
  the best point.
* ``summary.txt``: the text printed to stdout; ``run.json``: provenance.

Standard errors come from the inverse Hessian of the fitted objective on the PEtab scales,
the Hessian taken by central differences of the exact gradient (:class:`~dynlearn.
FiniteDifference`'s stencil, ``2 n + 1`` gradients). Parameters on a bound are left out of
the Hessian (their standard error is empty); directions the data do not determine (an
eigenvalue below ``HESSIAN_RCOND = 1e-7`` of the largest) leave the parameters that move
along them empty too, with a note.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dynlearn.errors import DynlearnError
from dynlearn.files import read_head, write_text_atomic
from dynlearn.report.tables import write_csv
from dynlearn.sensitivity import FiniteDifference
from dynlearn.version import __version__

__all__ = ["PETAB_FIT_OUTPUTS", "StandardErrors", "fit_summary", "looks_like_petab",
           "problem_files", "standard_errors", "write_fit_outputs"]

#: the files ``dynlearn fit problem.yaml`` writes into its output folder
PETAB_FIT_OUTPUTS = frozenset({"parameters.csv", "starts.csv", "simulations.csv",
                               "summary.txt", "run.json"})

#: relative step of the Hessian's central differences of the gradient: the gradient's
#: noise at the solver's tolerances (~1e-9) divided by it stays ~1e-5, and the truncation
#: error (~step^2) below that
HESSIAN_STEP = 1e-4
#: eigenvalues of the Hessian below this fraction of the largest are taken as zero: the
#: differences of gradients computed at solver tolerances are not more accurate than that
HESSIAN_RCOND = 1e-7


def looks_like_petab(path) -> bool:
    """Whether ``path`` is a PEtab problem file: YAML (``.yaml``/``.yml``) whose text
    names ``format_version`` (read from its first 4 kB; the petab extra is not needed)."""
    if Path(path).suffix.lower() not in (".yaml", ".yml"):
        return False
    head = read_head(path, 4096)
    return head is not None and "format_version" in head


def problem_files(path) -> list[Path]:
    """The files a PEtab problem file names (its tables and models), and itself: the
    inputs an output folder must never overwrite. Entries that are not file names (a
    malformed file) are skipped; reading it properly is :func:`dynlearn.petab.load`'s."""
    import yaml

    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return [path]
    names = []

    def collect(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, str) and (str(k).endswith(("_file", "_files"))
                                           or k == "location"):
                    names.append(v)
                else:
                    collect(v)
        elif isinstance(node, list):
            for v in node:
                if isinstance(v, str):
                    names.append(v)
                else:
                    collect(v)

    collect(spec if isinstance(spec, dict) else {})
    base = path.parent
    return [path, *(base / n for n in names if "://" not in n)]


@dataclass
class StandardErrors:
    """Standard errors of the estimates on their PEtab scales.

    Attributes
    ----------
    se : ndarray
        One per estimated parameter; NaN where there is none (on a bound, undetermined,
        or not computed).
    at_bound : list of str
        ``"lower"``, ``"upper"`` or ``""`` per parameter.
    note : str
        Why some or all are missing (empty when all are there).
    seconds : float
        Time spent on the Hessian.
    """

    se: np.ndarray
    at_bound: list
    note: str = ""
    seconds: float = 0.0


def _at_bound(problem, x) -> list[str]:
    """``lower``/``upper`` where ``x`` is within 1e-6 of the bounds' distance (of the
    bound's size when the other one is infinite) of a finite bound."""
    out = []
    for xi, lo, hi in zip(x, problem.lower, problem.upper):
        width = hi - lo if np.isfinite(hi - lo) else max(1.0, abs(lo) if np.isfinite(lo)
                                                          else abs(hi))
        tol = 1e-6 * max(width, 1e-12)
        out.append("lower" if np.isfinite(lo) and xi - lo <= tol else
                   "upper" if np.isfinite(hi) and hi - xi <= tol else "")
    return out


def standard_errors(problem, x, prior: bool = True, budget: float | None = 300.0
                    ) -> StandardErrors:
    """Standard errors at ``x`` from the Hessian of :meth:`PetabProblem.objective
    <dynlearn.petab.PetabProblem.objective>` (central differences of its exact gradient).

    Parameters
    ----------
    problem : PetabProblem
    x : array-like
        The estimate, on the PEtab scales.
    prior : bool
        Differentiate the negative log-posterior (when the problem has priors).
    budget : float or None
        Skip the Hessian (with a note) when one gradient times the ``2 n`` more it needs
        would exceed this many seconds.
    """
    x = np.asarray(x, dtype=float)
    n = x.size
    bound = _at_bound(problem, x)
    se = np.full(n, np.nan)
    free = np.array([b == "" for b in bound])
    t0 = time.perf_counter()
    cache: dict[bytes, np.ndarray] = {}

    def grad(z):
        key = np.asarray(z, dtype=float).tobytes()
        if key not in cache:
            cache[key] = problem.objective(z, prior=prior)[1][free]
        return cache[key]

    try:
        g0 = grad(x)
    except DynlearnError as exc:     # a failed solve: no standard errors
        return StandardErrors(se, bound, f"no standard errors: the gradient failed at the "
                              f"estimate ({exc})", time.perf_counter() - t0)
    del g0
    need = 2 * int(free.sum()) * (time.perf_counter() - t0)
    if budget is not None and need > budget:
        return StandardErrors(se, bound, f"standard errors skipped: the Hessian needs "
                              f"{2 * int(free.sum())} more gradients (~{need:.0f} s)",
                              time.perf_counter() - t0)
    if not free.any():
        return StandardErrors(se, bound, "every parameter is on a bound",
                              time.perf_counter() - t0)
    idx = np.flatnonzero(free)
    fd = FiniteDifference(step=HESSIAN_STEP, order=2)
    # row j of the Hessian: the central differences of the gradient's entry j; the
    # gradients at x +- h e_i are computed once (cached) for all rows
    H = np.empty((idx.size, idx.size))
    try:
        for j in range(idx.size):
            H[j] = fd.derivatives(lambda z, j=j: grad(z)[j], x, idx)[1]
    except DynlearnError as exc:
        return StandardErrors(se, bound, f"no standard errors: a gradient failed near the "
                              f"estimate ({exc})", time.perf_counter() - t0)
    H = 0.5 * (H + H.T)
    w, V = np.linalg.eigh(H)
    note = ""
    if w[-1] <= 0:
        return StandardErrors(se, bound, "no standard errors: the Hessian at the estimate "
                              "is not positive (not a minimum)", time.perf_counter() - t0)
    small = w <= HESSIAN_RCOND * w[-1]
    cov = (V[:, ~small] / w[~small]) @ V[:, ~small].T
    s = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    undetermined = np.any(np.abs(V[:, small]) > 1e-3, axis=1) if small.any() else \
        np.zeros(idx.size, dtype=bool)
    s[undetermined] = np.nan
    if undetermined.any():
        names = [problem.x_names[i] for i in idx[undetermined]]
        note = ("not determined by the data (a flat or negative direction of the Hessian): "
                + ", ".join(names[:10])
                + (f" and {len(names) - 10} more" if len(names) > 10 else ""))
    se[idx] = s
    return StandardErrors(se, bound, note, time.perf_counter() - t0)


def _parameter_table(problem, fit, errors: StandardErrors) -> pd.DataFrame:
    P, _ = problem.from_scale(fit.x)
    lin_lo, _ = problem.from_scale(problem.lower)
    lin_hi, _ = problem.from_scale(problem.upper)
    nominal, _ = problem.from_scale(problem.x_nominal)
    return pd.DataFrame({"parameterId": problem.x_names, "scale": problem.x_scales,
                         "estimate": fit.x, "value": P, "lowerBound": lin_lo,
                         "upperBound": lin_hi, "std_error": errors.se,
                         "at_bound": errors.at_bound, "nominalValue": nominal})


def _starts_table(fit) -> pd.DataFrame:
    runs = sorted(fit.runs, key=lambda r: r.get("index", 0))
    cols = {"start": [r.get("index", i) + 1 for i, r in enumerate(runs)],
            "nllh": [r.get("nllh", r["fun"]) for r in runs]}
    if fit.posterior:
        cols["objective"] = [r["fun"] for r in runs]
    cols.update(status=[r.get("status", "") for r in runs],
                iterations=[r["nit"] for r in runs],
                optimizer=[r.get("optimizer", "") for r in runs],
                message=[" ".join(str(r["message"]).split()) for r in runs])
    return pd.DataFrame(cols)


def fit_summary(problem, fit, errors: StandardErrors | None = None, tol: float = 0.1,
                seconds: float | None = None) -> str:
    """The text ``dynlearn fit problem.yaml`` prints: the best negative log-likelihood,
    how many starts reached it (within ``tol``), how many converged, and the estimates.
    """
    runs = fit.runs
    finite = [r for r in runs if np.isfinite(r["fun"])]
    counts = {}
    for r in runs:
        counts[r.get("status", "")] = counts.get(r.get("status", ""), 0) + 1
    what = "negative log-posterior" if fit.posterior else "negative log-likelihood"
    methods = sorted({r["optimizer"] for r in runs if r.get("optimizer")})
    lines = [f"PEtab fit: {len(problem.x_names)} estimated parameters, {len(runs)} starts"
             + (f" (optimizer {', '.join(methods)})" if methods else "")
             + (f", {seconds:.1f} s" if seconds is not None else "")]
    if not finite:
        lines.append("every start failed: " + " ".join(str(runs[0]["message"]).split()))
        return "\n".join(lines) + "\n"
    best = runs[0]
    lines.append(f"best {what}: {best['fun']:.6f}"
                 + (f" (negative log-likelihood {best['nllh']:.6f}; the priors of "
                    f"{', '.join(problem.priors.names)} are included)" if fit.posterior
                    else ""))
    lines.append(f"starts within {tol:g} of the best: {fit.n_at_best(tol)} of {len(runs)}")
    lines.append("status of the starts: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    lines.append("best start: " + ("converged" if best.get("success") else
                                   f"did not converge ({best.get('status', '')}: "
                                   f"{' '.join(str(best['message']).split())})"))
    se = errors.se if errors is not None else np.full(len(fit.x), np.nan)
    bound = errors.at_bound if errors is not None else [""] * len(fit.x)
    P, _ = problem.from_scale(fit.x)
    w = max(9, *(len(k) for k in problem.x_names))
    lines.append(f"{'parameter':<{w}}  {'scale':<5}  {'estimate':>12}  {'std.err':>10}  "
                 f"{'value (lin)':>12}")
    for k, s, x, e, p, b in zip(problem.x_names, problem.x_scales, fit.x, se, P, bound):
        es = f"{e:>10.3g}" if np.isfinite(e) else f"{'-':>10}"
        lines.append(f"{k:<{w}}  {s:<5}  {x:>12.6g}  {es}  {p:>12.6g}"
                     + (f"  at {b} bound" if b else ""))
    if errors is not None and errors.note:
        lines.append(f"note: {errors.note}")
    return "\n".join(lines) + "\n"


def write_fit_outputs(problem, fit, out, errors: StandardErrors, summary: str,
                      command=None, problem_file=None) -> list[Path]:
    """Write ``parameters.csv``, ``starts.csv``, ``simulations.csv``, ``summary.txt`` and
    ``run.json`` into the folder ``out`` (it must exist). Returns the paths written.

    ``simulations.csv`` is written only when the best point has a finite objective.
    """
    out = Path(out)
    written = []
    write_csv(_parameter_table(problem, fit, errors), out / "parameters.csv")
    written.append(out / "parameters.csv")
    write_csv(_starts_table(fit), out / "starts.csv")
    written.append(out / "starts.csv")
    if np.isfinite(fit.fun):
        meas = problem.petab_problem.measurement_df.copy()
        meas["simulation"] = problem.simulate(fit.x)
        write_csv(meas, out / "simulations.csv")
        written.append(out / "simulations.csv")
    write_text_atomic(out / "summary.txt", summary)
    written.append(out / "summary.txt")
    rec = {"dynlearn": __version__,
           "finished": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
           "petab_problem": str(Path(problem_file).resolve()) if problem_file else None,
           "command": list(command) if command is not None else None,
           "success": fit.success, "best": float(fit.fun),
           "posterior": fit.posterior,
           "files": sorted(p.name for p in [*written, out / "run.json"])}
    write_text_atomic(out / "run.json", json.dumps(rec, indent=1) + "\n")
    written.append(out / "run.json")
    return written
