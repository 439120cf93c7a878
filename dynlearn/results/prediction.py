"""Predictions of a fitted model, with pointwise confidence bands.

The bands come from the parameter covariance and the observables' sensitivities ``G`` to
the fitted values at the output times: ``var = diag(G C G^T)`` (see
:mod:`dynlearn.results.covariance`); on the log scale for ``loss="log"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from dynlearn.core.vectorfield import VectorField
from dynlearn.data.checks import check_times, check_y0
from dynlearn.data.signals import as_input_signal
from dynlearn.errors import DataError
from dynlearn.results.covariance import quantile
from dynlearn.sensitivity import Problem
from dynlearn.sensitivity.choice import observable_jacobian
from dynlearn.solve import simulate

if TYPE_CHECKING:
    import pandas as pd

    from dynlearn.objective.objective import FitObjective
    from dynlearn.results.result import FitResult

__all__ = ["predict"]


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
        Like ``simulate(...).to_frame()``, plus ``<observable>_lower``/``_upper`` columns.
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
    for j, o in enumerate(result.model.observable_names):
        h = H[:, j]
        if obj.loss.transform == "log" and np.all(h > 0):
            s = sd[:, j] / h
            frame[f"{o}_lower"], frame[f"{o}_upper"] = h * np.exp(-q * s), h * np.exp(q * s)
        else:
            frame[f"{o}_lower"], frame[f"{o}_upper"] = h - q * sd[:, j], h + q * sd[:, j]
    return frame
