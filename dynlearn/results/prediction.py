"""Predictions of a fitted model, with pointwise confidence and prediction bands.

The confidence band (of the mean, the model's curve) comes from the parameter covariance
and the observables' sensitivities ``G`` to the fitted values at the output times:
``var = diag(G C G^T)`` (see :mod:`dynlearn.results.covariance`); multiplicative (on the log
scale) for an observable whose residual transform is log or log10 (``loss="log"``, or
``transform=``). It says where the true curve lies, and narrows as data are added.

The prediction band is where a new measurement is expected: the same variance plus the
noise variance, ``var + s^2``, with ``s`` from :func:`noise_levels` (the noise level given
or estimated by the likelihood, else the residual standard deviation). It does not narrow
below the noise, however many data there are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from dynlearn.core.vectorfield import VectorField
from dynlearn.data.checks import check_times, check_y0
from dynlearn.data.signals import as_input_signal
from dynlearn.errors import DataError, OptionError
from dynlearn.results.covariance import quantile
from dynlearn.sensitivity import Problem
from dynlearn.sensitivity.choice import observable_jacobian
from dynlearn.solve import simulate

if TYPE_CHECKING:
    import pandas as pd

    from dynlearn.objective.objective import FitObjective
    from dynlearn.results.result import FitResult

__all__ = ["band_reason", "noise_levels", "predict"]


def band_reason(result) -> str:
    """Why :func:`predict` can draw no confidence band for this result ("" when it can).

    Parameters
    ----------
    result : FitResult

    Returns
    -------
    str
        The reason in words, e.g. that the standard errors of named parameters are n/a
        because the data do not determine them.
    """
    diag = result.diagnostics
    if result.cov_x is None:
        why = diag.uncertainty if diag is not None and diag.uncertainty else (
            "the parameter covariance could not be computed")
        return f"the standard errors cannot be computed: {why}"
    if not np.all(np.isfinite(result.cov_x)):
        p = result.params
        bad = [str(n) for n, row in p.iterrows()
               if not row.get("fixed", False) and not np.isfinite(row.get("stderr", np.nan))]
        notes = {diag.notes.get(n, "") for n in bad} if diag is not None else set()
        why = notes.pop() if len(notes) == 1 and "" not in notes else (
            "see the summary's notes")
        if bad:
            names = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
            return (f"the standard errors of {names} are n/a ({why}), so the uncertainty of "
                    "the prediction cannot be computed")
        return ("the parameter covariance is not finite (network weights the data do not "
                "determine), so the uncertainty of the prediction cannot be computed")
    try:
        result.objective()
    except OptionError:
        return "the result has no data attached"
    return ""


def noise_levels(result) -> dict[str, tuple[float, str]]:
    """The noise level per observable that a prediction band adds, and where it came from.

    In order of preference: the noise level the likelihood estimated (``loss="gaussian"``),
    the one given (``sigma=`` or ``<observable>_sigma`` columns: their median), else the
    residual standard deviation ``sqrt(SSR / (n - p))`` of the fit (its residuals, with the
    fitted values' share of the degrees of freedom taken off). On each observable's
    residual scale (``transform``: that of its log or log10; every observable's log for
    ``loss="log"``).

    Parameters
    ----------
    result : FitResult

    Returns
    -------
    dict observable -> (noise standard deviation, source)
        ``source`` is ``"estimated"``, ``"given"`` or ``"residual sd"``. Observables without
        a usable level (no residuals, no degrees of freedom left) are left out.
    """
    out: dict[str, tuple[float, str]] = {}
    diag = result.diagnostics
    loss = result.config.get("loss", "ls")
    fits = {o.name: o for o in (diag.observables if diag is not None else [])}
    dof_share = (result.n_data - result.n_params) / result.n_data if result.n_data else 0.0
    for o in result.model.observable_names:
        f = fits.get(o)
        if loss == "gaussian" and np.isfinite(result.sigma.get(o, np.nan)):
            out[o] = (float(result.sigma[o]), "estimated")
        elif f is not None and f.sigma_source == "known" and np.isfinite(f.sigma):
            out[o] = (float(f.sigma), "given")
        elif f is not None and np.isfinite(f.rms) and dof_share > 0:
            out[o] = (float(f.rms / np.sqrt(dof_share)), "residual sd")
    return out


def predict(result: FitResult, objective: FitObjective | None, t, y0=None, inputs=None,
            experiment: str | None = None, level: float = 0.95,
            bands: bool = True) -> pd.DataFrame:
    """Simulate a fitted model, with pointwise confidence bands where available.

    Parameters
    ----------
    result : FitResult
    objective : FitObjective or None
        The fit's objective (its experiments' start times and inputs); ``None``: no bands,
        and ``inputs`` must be given for a model with inputs.
    t, y0, inputs, experiment, level, bands
        See :meth:`FitResult.predict <dynlearn.results.result.FitResult.predict>`.

    Returns
    -------
    pandas.DataFrame
        Like ``simulate(...).to_frame()``, plus the confidence band of the mean in
        ``<observable>_lower``/``_upper`` columns and the prediction band (with the noise,
        see :func:`noise_levels`) in ``<observable>_pred_lower``/``_pred_upper``.
    """
    t = check_times(t)
    names = [e.name for e in result.data] if result.data is not None else list(result.y0)
    exp = names[0] if experiment is None else experiment
    if exp not in names:
        raise DataError(f"no experiment named {exp!r}; experiments: {names}")
    k = names.index(exp)
    obj = objective
    own_y0 = y0 is None
    if own_y0:
        y0v = result.y0[exp]
        t0 = obj.bound[k].t0 if obj is not None else float(t[0])
        t0 = min(t0, float(t[0]))
    else:
        y0v = check_y0(y0, result.model.n_states, [s.name for s in result.model.states])
        t0 = float(t[0])
    signal = None
    if result.model.inputs:
        if inputs is None:
            if obj is None:
                raise DataError("pass inputs= (a DataFrame: time column, then the inputs)")
            signal = obj.bound[k].inputs
        else:
            signal = as_input_signal(inputs, result.model)
    cfg = result.config
    sol = simulate(result.model, t, y0v, method=cfg["method"], rtol=cfg["rtol"],
                   atol=cfg["atol"], inputs=signal, t0=t0, **cfg.get("options", {}))
    frame = sol.to_frame()
    if not bands or result.cov_x is None or obj is None:
        return frame
    space = obj.space
    C = result.cov_x
    if not np.all(np.isfinite(C)):
        return frame
    theta = space.unpack(result.x)[0]
    vf = VectorField(result.model0, theta, signal)
    prob = Problem(vf, t0, t, y0v, None, cfg["method"], cfg["rtol"], cfg["atol"],
                   cfg.get("options", {}), exp)
    try:
        H, dH = observable_jacobian(prob, obj.sensitivity, wrt_y0=True)
    except Exception:  # noqa: BLE001 - bands are optional; the prediction stands
        return frame
    P = space.n_theta
    G = np.zeros(dH.shape[:2] + (space.size,))
    G[:, :, :P] = dH[:, :, :P]
    if own_y0:
        for i, kk in space.y0_index[k]:
            G[:, :, kk] = dH[:, :, P + i]
    G = G * space.dphysical(result.x)
    var = np.einsum("moq,qr,mor->mo", G, C, G)
    sd = np.sqrt(np.maximum(var, 0.0))
    q = quantile(level, None)
    noise = noise_levels(result)
    for j, o in enumerate(result.model.observable_names):
        h = H[:, j]
        # an observable on a log scale gets its bands on the natural-log scale: its noise
        # level is on its own (log or log10) scale, c * ln
        c = obj.loss.log_factor(j)
        on_log = c > 0
        log = on_log and np.all(h > 0)
        s = sd[:, j] / h if log else sd[:, j]
        if log:
            frame[f"{o}_lower"], frame[f"{o}_upper"] = h * np.exp(-q * s), h * np.exp(q * s)
        else:
            frame[f"{o}_lower"], frame[f"{o}_upper"] = h - q * s, h + q * s
        if o in noise and (log or not on_log):
            sp = np.sqrt(s ** 2 + (noise[o][0] / (c if log else 1.0)) ** 2)
            frame[f"{o}_pred_lower"], frame[f"{o}_pred_upper"] = (
                (h * np.exp(-q * sp), h * np.exp(q * sp)) if log else (h - q * sp, h + q * sp))
    return frame
