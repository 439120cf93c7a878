"""Does a recovered model extrapolate? Several models simulated past the data against a truth.

:func:`compare_extrapolation` simulates models (the recovered one, the hybrid one, the
physics alone from :func:`physics_only`, a SINDy model) beyond the training range and
compares each with a reference: a trusted model or held-out measurements.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import sympy as sp

from dynlearn.core.model import HybridModel
from dynlearn.data import Dataset, Experiment
from dynlearn.errors import DataError, OptionError
from dynlearn.solve import Solution, simulate

__all__ = ["physics_only", "compare_extrapolation"]


def physics_only(model: HybridModel, name: str | None = None) -> HybridModel:
    """The model with every network output set to zero: the known physics alone (without
    the parameters that appeared only beside a network output)."""
    subs = {o: sp.Integer(0) for net in model.networks for o in net.outputs}
    rhs = {s: e.xreplace(subs) for s, e in zip(model.states, model.rhs)}
    used = set().union(*(e.free_symbols for e in (*rhs.values(), *model.observables.values())))
    return HybridModel(states=model.states, rhs=rhs,
                       params={s: p for s, p in model.params.items() if s in used},
                       inputs=model.inputs, observables=model.observables,
                       time=model.time, name=name or f"{model.name}-physics")


def _reference_frame(reference, t, y0, method, rtol, atol) -> pd.DataFrame:
    """The reference as a frame whose first column is time."""
    if isinstance(reference, HybridModel):
        if t is None:
            raise DataError("t is required when the reference is a model")
        return simulate(reference, t, y0, method="DOP853", rtol=min(rtol, 1e-10),
                        atol=min(atol, 1e-12)).to_frame()
    if isinstance(reference, Solution):
        return reference.to_frame()
    if isinstance(reference, Dataset):
        return reference[0].to_frame(reference.time_name)
    if isinstance(reference, Experiment):
        return reference.to_frame()
    if isinstance(reference, pd.DataFrame):
        return reference
    raise DataError("reference must be a HybridModel (the truth), a Solution, a Dataset or a "
                    f"DataFrame whose first column is time; got {type(reference).__name__}")


def compare_extrapolation(models: Mapping[str, HybridModel], t, y0, reference, *,
                          t_split: float | None = None, method: str = "RK45",
                          rtol: float = 1e-8, atol: float = 1e-10, inputs=None) -> pd.DataFrame:
    """Simulate several models past the data and compare each with a reference.

    Parameters
    ----------
    models : mapping name -> HybridModel
        E.g. ``{"recovered": refit.model, "hybrid": result.model, "physics only":
        dl.physics_only(result.model)}``; each simulated at its ``theta0``.
    t : array_like
        Output times (default: the reference's times, for a data reference).
    y0 : array_like, shape (n_states,)
    reference : HybridModel, Solution, Dataset or DataFrame
        The truth: a model (simulated at tight tolerance) or held-out measurements (time
        column first, then columns named like states or observables).
    t_split : float, optional
        End of the training range: errors are reported separately for ``t <= t_split``
        (``rmse_within``) and ``t > t_split`` (``rmse_beyond``). Default: every time counts
        as beyond.
    method, rtol, atol, inputs
        Passed to :func:`dynlearn.simulate`.

    Returns
    -------
    pandas.DataFrame
        One row per model: ``rmse_within``, ``rmse_beyond``, ``max_error_beyond``,
        ``relative_beyond`` (RMSE over the RMS of the reference beyond ``t_split``),
        ``t_reached`` (the last output time reached: earlier than ``t[-1]`` when the model
        blows up) and ``success``. Times not reached count as infinite errors. RMSEs are over every
        compared column (states and observables present in the reference). The simulated
        trajectories are in ``df.attrs["trajectories"]``.
    """
    if not isinstance(models, Mapping) or not models:
        raise OptionError("models must be a non-empty dict {name: HybridModel}")
    ref = _reference_frame(reference, t, y0, method, rtol, atol)
    tcol = ref.columns[0]
    t = ref[tcol].to_numpy(float) if t is None else np.asarray(t, float)
    tref = ref[tcol].to_numpy(float)
    rows, trajs = {}, {}
    for name, model in models.items():
        if not isinstance(model, HybridModel):
            raise OptionError(f"models['{name}'] is a {type(model).__name__}, not a HybridModel")
        sol = simulate(model, t, y0, method=method, rtol=rtol, atol=atol, inputs=inputs,
                       throw=False)
        frame = sol.to_frame()
        trajs[name] = frame
        cols = [c for c in frame.columns[1:] if c in ref.columns]
        if not cols:
            raise DataError(f"model '{name}' has no state or observable named like a reference "
                            f"column {list(ref.columns[1:])}")
        # reference values at the model's times (interpolated for a data reference)
        R = np.column_stack([np.interp(t, tref, ref[c].to_numpy(float)) for c in cols])
        Yfull = np.full((t.size, len(cols)), np.nan)
        Yfull[:sol.t.size] = frame[cols].to_numpy(float)
        within = t <= t_split if t_split is not None else np.zeros(t.size, bool)
        beyond = ~within
        with np.errstate(all="ignore"):
            err = Yfull - R
            failed = ~np.all(np.isfinite(err), axis=1)
            err = np.where(np.isfinite(err), err, np.inf)
            rmse_in = float(np.sqrt(np.mean(err[within] ** 2))) if within.any() else np.nan
            rmse_out = float(np.sqrt(np.mean(err[beyond] ** 2))) if beyond.any() else np.nan
            max_out = float(np.max(np.abs(err[beyond]))) if beyond.any() else np.nan
            ref_rms = float(np.sqrt(np.mean(R[beyond] ** 2))) if beyond.any() else np.nan
        rows[name] = dict(rmse_within=rmse_in, rmse_beyond=rmse_out, max_error_beyond=max_out,
                          relative_beyond=rmse_out / ref_rms if ref_rms else np.nan,
                          t_reached=float(sol.t[-1]) if sol.t.size else float(t[0]),
                          success=bool(sol.success and not failed.any()))
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "model"
    out.attrs["trajectories"] = trajs
    return out
