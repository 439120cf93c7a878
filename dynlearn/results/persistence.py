"""Fit results on disk: ``<path>.json`` + ``<path>.npz``, no pickles.

:func:`write_result` writes the JSON (readable: settings, the parameter table, the model's
equations as text, the data's layout) and the npz (arrays only: the optimum, covariance,
network weights, the data, the loss history), atomically through
:func:`dynlearn.files.write_json_npz`. :func:`read_result` reads them back without
unpickling anything: the equations are re-parsed with dynlearn's restricted parser
(:func:`dynlearn.core.serialise.model_from_dict`), so a tampered file cannot run code, and
the fit's objective is rebuilt from the stored data and settings.
"""

from __future__ import annotations

import zipfile
from typing import TYPE_CHECKING

import numpy as np

from dynlearn.core.parameters import Parameter, ParameterSpace
from dynlearn.core.serialise import model_from_dict, model_to_dict, parameter_to_dict
from dynlearn.data.dataset import Dataset, Experiment
from dynlearn.errors import DataError, DynlearnError, ModelError
from dynlearn.files import json_npz_paths, read_json_npz, write_json_npz
from dynlearn.objective.objective import FitObjective, bind_data
from dynlearn.optimizers import Status
from dynlearn.results.covariance import covariance_frames
from dynlearn.results.diagnostics import Diagnostics

if TYPE_CHECKING:
    from dynlearn.core.model import HybridModel
    from dynlearn.results.result import FitResult

__all__ = ["FORMAT_VERSION", "read_result", "write_result"]

FORMAT_VERSION = 1


def write_result(result: FitResult, objective: FitObjective | None, path) -> tuple[str, str]:
    """Write ``result`` to ``<path>.json`` and ``<path>.npz`` (see the module notes).

    Parameters
    ----------
    result : FitResult
    objective : FitObjective or None
        The fit's objective (its parameter layout, noise levels and weights are saved).
    path : str or path
        With or without suffix; the folder is created when missing.

    Returns
    -------
    tuple of str
        The paths of the JSON and npz files.
    """
    arrays = {"x": result.x}
    if result.cov_x is not None:
        arrays["cov_x"] = result.cov_x
    for name, w in result.weights.items():
        arrays[f"weights__{name}"] = w
    exps = []
    for i, e in enumerate(result.data):
        cols = list(e.columns)
        arrays[f"data__{i}__t"] = e.t
        for j, c in enumerate(cols):
            arrays[f"data__{i}__{j}"] = e.columns[c]
        exps.append({"name": e.name, "columns": cols, "meta": e.meta})
    arrays["history"] = np.array(result.history, dtype=float).reshape(-1, 2)
    obj = objective
    meta = {
        "format": "dynlearn.FitResult", "version": FORMAT_VERSION,
        "success": result.success, "status": result.status.value, "message": result.message,
        "nfev": result.nfev, "njev": result.njev, "ngev": result.ngev, "nit": result.nit,
        "loss": result.loss, "aic": result.aic, "bic": result.bic, "elapsed": result.elapsed,
        "n_data": result.n_data, "n_params": result.n_params, "sigma": result.sigma,
        "config": result.config, "names": obj.space.names if obj is not None else [],
        "sigma_hat": obj.sigma_hat if obj is not None else None,
        "fit_sigma": obj.sigma_spec() if obj is not None else None,
        "weights_spec": _weights_spec(obj),
        "y0_params": [[parameter_to_dict(p) for p in row] for row in obj.space.y0]
        if obj is not None else None,
        "params": {"index": list(result.params.index), "columns": list(result.params.columns),
                   "data": result.params.to_numpy(dtype=object).tolist()},
        "model": model_to_dict(result.model0),
        "data": {"time_name": result.data.time_name, "experiments": exps},
        "optimizer": result.optimizer.to_dict() if result.optimizer is not None else None,
        "diagnostics": (result.diagnostics.to_dict() if result.diagnostics is not None
                        else None),
        "stages": [[int(e), str(label)] for e, label in result.stages],
        "stage_history": [[int(e), float(v), int(k)]
                          for e, v, k in result.stage_history],
    }
    return write_json_npz(path, meta, arrays)


def read_result(path, model: HybridModel | None = None) -> tuple[dict, FitObjective]:
    """Read a result written by :func:`write_result`.

    Parameters
    ----------
    path : str or path
        ``<path>``, ``<path>.json`` or ``<path>.npz``.
    model : HybridModel, optional
        The model that was fitted (needed when it holds a custom network); default: rebuilt
        from the stored equations.

    Returns
    -------
    fields : dict
        The keyword arguments of :class:`~dynlearn.results.result.FitResult`.
    objective : FitObjective
        The fit's objective, rebuilt from the stored data and settings.

    Raises
    ------
    DataError
        A file is missing or damaged (unreadable JSON or npz, missing entries or arrays,
        entries of the wrong kind), or the JSON is not a saved fit result.
    ModelError
        ``model`` does not match the saved result (or the stored equations do not parse).
    """
    jpath, npath = json_npz_paths(path)
    try:
        return _read_result(path, model)
    except DynlearnError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, OSError, EOFError,
            zipfile.BadZipFile) as exc:
        if isinstance(exc, FileNotFoundError):
            raise DataError(f"cannot load a fit result from {path!r}: {exc}") from None
        raise DataError(f"the result {jpath} (with {npath}) is damaged: "
                        f"{type(exc).__name__}: {exc}") from None


def _read_result(path, model):
    """:func:`read_result` without the translation of a damaged file's errors."""
    jpath, _ = json_npz_paths(path)
    try:
        meta, arrays = read_json_npz(path)
    except FileNotFoundError as exc:
        raise DataError(f"cannot load a fit result from {path!r}: {exc}") from None
    if meta.get("format") != "dynlearn.FitResult":
        raise DataError(f"{jpath} is not a saved dynlearn fit result")
    if model is None:
        model = model_from_dict(meta["model"])
    exps = []
    for i, e in enumerate(meta["data"]["experiments"]):
        cols = {c: arrays[f"data__{i}__{j}"] for j, c in enumerate(e["columns"])}
        exps.append(Experiment(e["name"], arrays[f"data__{i}__t"], cols, meta=e.get("meta", {})))
    dataset = Dataset(exps, time_name=meta["data"]["time_name"])
    cfg = meta["config"]
    y0p = [[Parameter(**d) for d in row] for row in meta["y0_params"]]
    space = ParameterSpace(model, y0p, [e.name for e in dataset])
    if space.names != meta["names"]:
        raise ModelError("the model does not match the saved result (different free "
                         "parameters or network sizes)")
    bound = bind_data(model, dataset, [p.value for p in y0p[0]] if len(y0p) == 1 else
                      {e.name: [p.value for p in row] for e, row in zip(dataset, y0p)},
                      cfg.get("input_kind"))
    obj = FitObjective(model, bound, space, cfg["loss"], meta.get("fit_sigma"),
                       meta.get("weights_spec"), cfg.get("l2", 0.0), cfg["method"], cfg["rtol"],
                       cfg["atol"], cfg.get("options", {}), sigma_by=cfg.get("sigma_by"),
                       transform=cfg.get("transform"), noise_params=cfg.get("noise_params"))
    x = arrays["x"]
    if meta.get("sigma_hat") is not None:
        # (noise formulas: their levels at the saved point's predictions, one solve)
        obj.set_sigma(np.asarray(meta["sigma_hat"], dtype=float),
                      x if obj.noise_formulas is not None else None)
    theta, y0s = space.unpack(x)
    params = _params_frame(meta["params"])
    cov_x = arrays.get("cov_x")
    cov_df, corr_df = covariance_frames(space, x, cov_x)
    hist = [(int(a), float(b)) for a, b in arrays.get("history", np.zeros((0, 2)))]
    weights = {n.name: w for n, w in zip(model.networks, model.split_theta(theta)[1])}

    def num(v):
        return float(_unjson(v))
    # results saved before the status enumeration hold an integer status
    status = Status.coerce(meta["status"], meta["success"], meta["message"])
    fields = dict(success=meta["success"], status=status, message=meta["message"],
                  nfev=meta["nfev"], njev=meta["njev"], ngev=meta["ngev"], nit=meta["nit"],
                  loss=num(meta["loss"]), history=hist, params=params, covariance=cov_df,
                  correlation=corr_df, sigma=meta["sigma"], aic=num(meta["aic"]),
                  bic=num(meta["bic"]), model=model.with_theta(theta),
                  y0={e.name: y for e, y in zip(dataset, y0s)}, weights=weights,
                  starts=None, elapsed=meta["elapsed"], x=x, cov_x=cov_x,
                  n_data=meta["n_data"], n_params=meta["n_params"], config=cfg,
                  diagnostics=Diagnostics.from_dict(meta.get("diagnostics")),
                  stages=[(int(e), str(label)) for e, label in meta.get("stages", [])],
                  stage_history=[(int(e), num(v), int(k))
                                 for e, v, k in meta.get("stage_history", [])],
                  model0=model, data=dataset, optimizer=None)
    return fields, obj


# --- helpers --------------------------------------------------------------------------------
#: the columns of a saved parameter table that hold numbers (and must, in a whole file)
NUMERIC_COLUMNS = frozenset({"value", "stderr", "ci_lower", "ci_upper", "initial", "min", "max",
                             "rse"})


def _params_frame(spec):
    """The saved parameter table as a DataFrame, its layout and numbers checked (a
    ``ValueError`` naming what is wrong: :func:`read_result` reports a damaged file)."""
    import pandas as pd
    index, columns, data = spec["index"], spec["columns"], spec["data"]
    if not all(isinstance(v, list) for v in (index, columns, data)) or \
            not all(isinstance(c, str) for c in (*index, *columns)) or \
            len(set(columns)) != len(columns) or len(data) != len(index) or \
            not all(isinstance(row, list) and len(row) == len(columns) for row in data):
        raise ValueError("the parameter table's layout is broken")
    missing = sorted({"value", "stderr", "ci_lower", "ci_upper", "fixed"} - set(columns))
    if missing:
        raise ValueError(f"the parameter table has no column(s) {missing}")
    rows = [[_unjson(v) for v in row] for row in data]
    for row in rows:
        for c, v in zip(columns, row):
            if c in NUMERIC_COLUMNS and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ValueError(f"the parameter table's {c!r} holds {v!r}, not a number")
            if not isinstance(v, (int, float, str, bool, type(None))):
                raise ValueError(f"the parameter table's {c!r} holds {v!r}")
    return pd.DataFrame(rows, index=index, columns=columns)


def _unjson(v):
    """Undo the JSON encoding of non-finite floats ("inf", "-inf", "nan")."""
    if isinstance(v, str) and v in ("inf", "-inf", "nan"):
        return float(v)
    return v


def _weights_spec(obj):
    if obj is None or np.all(obj.weights == 1.0):
        return None
    return {o: float(w) for o, w in zip(obj.obs, obj.weights)}
