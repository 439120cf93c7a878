"""Profile-likelihood intervals: refit with one parameter held at each of a range of values.

How it works
------------
The Wald intervals of :attr:`FitResult.params <dynlearn.results.FitResult.params>` assume
the model is linear in its parameters near the optimum. A profile does not: parameter
``name`` is fixed at values around its estimate and every other free quantity (parameters,
estimated initial states, network weights) is refitted, warm-started from the fit. The
deviance of each refit,

* ``2 (L_p - L)`` for a Gaussian likelihood (``loss="gaussian"``),
* ``(S_p - S) `` for sums of squares scaled by known noise levels,
* ``n log(S_p / S)`` for plain sums of squares (the noise variance profiled out),

is compared with the chi-square quantile with one degree of freedom (with the variance
profiled out, with its small-sample form ``n log(1 + t^2 / (n - p))``, which makes the
profile interval of a linear model its Wald interval); the interval is where
the deviance stays below it, the crossings found by linear interpolation between the
profiled values [1]_. An interval that does not close within the profiled range is
reported as unbounded on that side (``-inf`` / ``inf``), with a warning.

The refits are independent: with a Dask client (or inside :func:`dynlearn.parallel`) each
is a task. They go through the result's refit seam (:attr:`FitResult.refitter
<dynlearn.results.result.FitResult.refitter>`, which :func:`dynlearn.fit` injects), so a
result loaded from disk, which has none, cannot be profiled.

References
----------
.. [1] D. J. Venzon, S. H. Moolgavkar, "A method for computing profile-likelihood-based
       confidence intervals", Applied Statistics 37 (1988).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dynlearn.distributed.executor import resolve_executor
from dynlearn.errors import OptionError
from dynlearn.objective.losses import loss_from_name
from dynlearn.optimizers import LevenbergMarquardt
from dynlearn.results.covariance import quantile

if TYPE_CHECKING:
    from dynlearn.optimizers import Optimizer
    from dynlearn.results.result import FitResult

__all__ = ["Profile", "deviance", "profile"]


@dataclass
class Profile:
    """A parameter's likelihood profile.

    Attributes
    ----------
    name : str
    estimate : float
    frame : pandas.DataFrame
        One row per profiled value: value, loss, deviance, success.
    threshold : float
        The chi-square(1) quantile the deviance is compared with.
    interval : tuple of float
        ``(lower, upper)``; ``-inf`` / ``inf`` where the profile does not cross the threshold
        within the profiled range.
    level : float
    wald : tuple of float
        The fit's Wald interval, for comparison.
    """

    name: str
    estimate: float
    frame: object
    threshold: float
    interval: tuple
    level: float
    wald: tuple

    def summary(self) -> str:
        lo, hi = self.interval
        return (f"{self.name} = {self.estimate:.6g}: {self.level:.0%} profile-likelihood "
                f"interval [{lo:.6g}, {hi:.6g}] (Wald [{self.wald[0]:.6g}, "
                f"{self.wald[1]:.6g}]); {len(self.frame) - 1} refits, "
                f"{int((~self.frame['success']).sum())} failed")

    def __repr__(self) -> str:
        return f"Profile({self.summary()})"


def profile(result: FitResult, name: str, n: int = 10, span: float = 3.0,
            level: float = 0.95, values=None, optimizer: Optimizer | None = None, client=None,
            progress: bool = False) -> Profile:
    """The likelihood profile of one physical parameter of a fit.

    Parameters
    ----------
    result : FitResult
        A fit made in this session (its settings are reused for the refits).
    name : str
        A free physical parameter of the model.
    n : int
        Profiled values besides the estimate, half on each side (default 10).
    span : float
        The range profiled, in Wald half-widths of the fit's ``level`` interval on each side
        (in the parameter's own coordinate: a log-transformed parameter is profiled on a
        multiplicative grid).
    level : float
    values : array, optional
        Profile exactly these values instead.
    optimizer : Optimizer, optional
        For the refits (default :class:`~dynlearn.LevenbergMarquardt`, warm-started from the
        fit).
    client : dask.distributed.Client, optional
        One task per refit (default: the enclosing :func:`dynlearn.parallel` context, else
        serial).
    progress : bool

    Returns
    -------
    Profile

    Examples
    --------
    >>> prof = dl.profile(result, "beta")                    # doctest: +SKIP
    >>> prof.interval, prof.wald                             # doctest: +SKIP
    """
    import pandas as pd
    refitter = result.refitter
    if refitter is None:
        raise OptionError("profile() needs a fit made in this session (a loaded result does "
                          "not keep the fit's settings); refit with dl.fit first")
    if not 0 < level < 1:
        raise OptionError(f"level must be in (0, 1), got {level!r}")
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise OptionError(f"n must be an integer >= 2, got {n!r}")
    model = result.model
    sym = {s.name: s for s in model.param_symbols}.get(name)
    if sym is None:
        raise OptionError(f"'{name}' is not a parameter of the model; parameters are "
                          f"{[s.name for s in model.param_symbols]}")
    par = model.params[sym]
    if par.fixed:
        raise OptionError(f"'{name}' is fixed in the fit: there is nothing to profile")
    row = result.params.loc[name]
    est = float(row["value"])
    log = par.transform == "log"
    if values is None:
        q = quantile(level, None)
        z = math.log(est) if log else est
        se_z = float(row["stderr"]) / est if log else float(row["stderr"])
        if not np.isfinite(se_z) or se_z <= 0:
            raise OptionError(f"'{name}' has no finite standard error to set the profiled "
                              "range; pass values=[...]")
        half = n // 2
        grid = z + span * q * se_z * np.r_[-np.arange(half, 0, -1), np.arange(1, n - half + 1)] \
            / max(half, n - half)
        values = np.exp(grid) if log else grid
    values = np.asarray(values, dtype=float)
    lo_b, hi_b = par.min if par.min is not None else -np.inf, \
        par.max if par.max is not None else np.inf
    values = np.unique(np.clip(values, lo_b, hi_b))
    values = values[values != est]
    overrides = dict(optimizer=optimizer or LevenbergMarquardt(), progress=False)
    outcomes = resolve_executor(client).map(
        _refit_at, list(values), [f"profile of {name} at {v:.6g}" for v in values],
        {"refitter": refitter, "model": model, "data": result.data, "name": name,
         "overrides": overrides}, progress=progress, desc="profile")
    frame = pd.DataFrame({"value": np.r_[values, est],
                          "loss": np.r_[[o[0] for o in outcomes], result.loss],
                          "success": np.r_[[o[1] for o in outcomes], True]})
    frame = frame.sort_values("value", ignore_index=True)
    frame["deviance"] = deviance(result, frame["loss"].to_numpy())
    threshold = _threshold(result, level)
    interval = (_crossing(frame, est, threshold, -1, name),
                _crossing(frame, est, threshold, +1, name))
    return Profile(name, est, frame, threshold, interval, level,
                   (float(row["ci_lower"]), float(row["ci_upper"])))


def _refit_at(value, refitter, model, data, name, overrides):
    """One refit of a profile (a task): ``name`` fixed at ``value``; (loss, success)."""
    r = refitter(model, data, fixed={name: float(value)}, **overrides)
    return float(r.loss), bool(r.success and np.isfinite(r.loss))


def deviance(result: FitResult, losses) -> np.ndarray:
    """Twice the log-likelihood drop from ``result``'s optimum of refits with the losses
    ``losses`` (see the module notes): what a profile compares with its threshold.

    Parameters
    ----------
    result : FitResult
    losses : array_like
        ``FitResult.loss`` of refits of the same model to the same data.

    Returns
    -------
    ndarray
    """
    loss, known = _loss_and_known_sigma(result)
    return loss.deviance(losses, result.loss, result.n_data, known)


def _threshold(result, level: float) -> float:
    """The deviance an interval allows: the chi-square(1) quantile, or, with the noise
    variance profiled out, its small-sample form ``n log(1 + t^2 / (n - p))`` (Student's t
    with ``n - p`` degrees of freedom), which gives the Wald interval back exactly for a
    model linear in its parameters."""
    from scipy import special
    if _profiled_variance(result):
        dof = result.n_data - result.n_params
        if dof > 0:
            t = quantile(level, dof)
            return float(result.n_data * math.log1p(t * t / dof))
    return float(special.chdtri(1, 1.0 - level))


def _loss_and_known_sigma(result):
    """The fit's loss and whether some noise level was known."""
    try:
        known = result.objective().has_known_sigma
    except OptionError:   # no data attached
        known = False
    return loss_from_name(result.config.get("loss", "ls")), known


def _profiled_variance(result) -> bool:
    loss, known = _loss_and_known_sigma(result)
    return loss.profiles_variance(known)


def _crossing(frame, est: float, threshold: float, side: int, name: str) -> float:
    """Where the deviance first reaches the threshold moving from the estimate."""
    v = frame["value"].to_numpy()
    d = np.where(frame["success"].to_numpy(), frame["deviance"].to_numpy(), np.nan)
    order = np.flatnonzero(v >= est) if side > 0 else np.flatnonzero(v <= est)[::-1]
    prev = None
    for k in order:
        if not np.isfinite(d[k]):
            break
        if prev is not None and d[k] >= threshold:
            a, b = prev, k
            return float(v[a] + (threshold - d[a]) * (v[b] - v[a]) / (d[b] - d[a]))
        prev = k
    warnings.warn(f"the profile of {name} does not reach the {threshold:.3g} threshold on the "
                  f"{'upper' if side > 0 else 'lower'} side within the profiled values; "
                  "widen span or pass values", stacklevel=3)
    return math.inf * side
