"""The result of a fit: parameters with uncertainties, predictions, residuals, save/load.

:class:`FitResult` keeps the model passed to :func:`dynlearn.fit` (never mutated), the
fitted model (``result.model``), the data, and everything needed to recompute residuals,
predictions and their confidence bands. ``save(path)`` writes ``path.json`` (readable:
settings, parameter table, the model's equations as text) and ``path.npz`` (arrays: the
optimum, covariance, network weights, data); :func:`load_result` reads them back without
unpickling anything. The equations are re-parsed with dynlearn's restricted parser
(:func:`dynlearn.expressions.parse_expression`), so a tampered file cannot run code.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from dynlearn.core.parameters import Parameter, ParameterSpace
from dynlearn.errors import DataError, ModelError, OptionError
from dynlearn.objective.objective import FitObjective, Rejected, bind_data
from dynlearn.results.covariance import (
    correlation_from_covariance,
    fisher_covariance,
    interval,
    quantile,
)

__all__ = ["FitResult", "load_result"]

FORMAT_VERSION = 1


@dataclass
class FitResult:
    """What :func:`dynlearn.fit` returns.

    Attributes
    ----------
    success : bool
    status : int
        0 converged, 1 failed (the model cannot be solved at any tried point), 2 stopped
        (time limit or callback), 3 interrupted (Ctrl-C).
    message : str
    nfev, njev, ngev : int
        Residual evaluations (forward solves), Jacobian evaluations, loss+gradient
        evaluations.
    nit : int
        Optimizer iterations.
    rejected : int
        Trial points rejected because the model could not be solved there.
    loss : float
        Final loss: the sum of squared (scaled) residuals for ``"ls"``/``"log"`` (plus
        the L2 penalty), the negative log-likelihood for ``"gaussian"``.
    history : list of (int, float)
        The best loss so far each time it improved, against the number of evaluations.
    params : pandas.DataFrame
        Physical parameters (fixed ones included, marked) and estimated initial states:
        value, stderr, ci_lower, ci_upper (95%), initial, min, max, fixed, transform.
    covariance, correlation : pandas.DataFrame or None
        Over the free entries of :attr:`params`, in physical units.
    sigma : dict
        Noise level per observable (estimated for ``"gaussian"``).
    aic, bic : float
    model : HybridModel
        The model at the fitted values.
    y0 : dict experiment -> ndarray
        Initial states used or estimated.
    weights : dict network -> ndarray
    starts : pandas.DataFrame
        One row per start of a multi-start fit.
    """

    success: bool
    status: int
    message: str
    nfev: int
    njev: int
    ngev: int
    nit: int
    loss: float
    history: list
    params: object
    covariance: object
    correlation: object
    sigma: dict
    aic: float
    bic: float
    model: object
    y0: dict
    weights: dict
    starts: object
    elapsed: float
    x: np.ndarray
    cov_x: np.ndarray | None
    n_data: int
    n_params: int
    config: dict
    rejected: int = 0
    model0: object = field(repr=False, default=None)
    data: object = field(repr=False, default=None)
    optimizer: object = field(repr=False, default=None)
    _obj: object = field(repr=False, default=None)
    # the keyword arguments of the dl.fit call that made this result (refits such as
    # profiles reuse them; not saved with the result)
    _refit: dict | None = field(repr=False, default=None)

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_fit(cls, model0, dataset, obj: FitObjective, best, outcomes, optimizer, elapsed,
                 config, level: float = 0.95) -> FitResult:
        space: ParameterSpace = obj.space
        x = np.asarray(best.x, dtype=float)
        theta, y0s = space.unpack(x)
        cov_x, r_data, dof, scaled = None, None, None, False
        try:
            r, J = best.final if best.final is not None else obj.jacobian(x)
            r_data = r[:obj.n_data]
            cov_x, dof, scaled = _covariance(obj, r, J)
        except Rejected:
            pass
        loss = _final_loss(obj, x, r_data)
        table = _params_table(model0, space, x, cov_x, dof, scaled, level)
        cov_df, corr_df = _covariance_frames(space, x, cov_x)
        fitted = model0.with_theta(theta)
        weights = {net.name: w.copy() for net, w in zip(model0.networks,
                                                        model0.split_theta(theta)[1])}
        n, p = obj.n_data, space.size + int(obj.estimated.sum())
        aic, bic = _information(obj, x, r_data, n, p)
        starts = _starts_frame(space, outcomes)
        sigma = {o: float(s) for o, s in zip(obj.obs, obj.sigma_hat) if obj.estimated[
            obj.obs.index(o)]} if obj.loss == "gaussian" else {}
        for o in obj.obs:
            sigma.setdefault(o, _known_sigma(obj, o))
        return cls(success=best.success, status=best.status, message=best.message,
                   nfev=best.nfev, njev=best.njev, ngev=best.ngev, nit=best.nit, loss=loss,
                   history=list(best.history), params=table, covariance=cov_df,
                   correlation=corr_df, sigma=sigma, aic=aic, bic=bic, model=fitted,
                   y0={e.name: y for e, y in zip(dataset, y0s)}, weights=weights,
                   starts=starts, elapsed=elapsed, x=x, cov_x=cov_x, n_data=n, n_params=p,
                   config=dict(config), rejected=best.rejected, model0=model0, data=dataset,
                   optimizer=optimizer,
                   _obj=obj)

    # --- reports ----------------------------------------------------------------------------
    def __repr__(self) -> str:
        return (f"FitResult(success={self.success}, loss={self.loss:.6g}, nfev={self.nfev}, "
                f"njev={self.njev}, ngev={self.ngev}, message={self.message!r})")

    def summary(self) -> str:
        """A readable report: status, goodness of fit and the parameter table."""
        lines = [f"Fit of {self.model0.name}: {'success' if self.success else 'FAILED'} - "
                 f"{self.message}",
                 f"  loss ({self.config.get('loss')}) = {self.loss:.6g}; {self.n_data} data "
                 f"points, {self.n_params} fitted values; AIC = {self.aic:.4g}, "
                 f"BIC = {self.bic:.4g}",
                 f"  evaluations: {self.nfev} solves, {self.njev} Jacobians, {self.ngev} "
                 f"gradients; {self.nit} iterations; {self.elapsed:.3g} s"
                 + (f"; {self.rejected} trial points rejected (solver failure)"
                    if self.rejected else "")]
        if self.config.get("loss") == "gaussian":
            lines.append("  noise sigma: " + ", ".join(f"{k}={v:.4g}"
                                                       for k, v in self.sigma.items()))
        lines.append("")
        lines.append(f"  {'name':<22} {'value':>12} {'stderr':>11} {'95% interval':>27}")
        for name, row in self.params.iterrows():
            if row["fixed"]:
                lines.append(f"  {name:<22} {row['value']:>12.6g} {'(fixed)':>11}")
                continue
            se = f"{row['stderr']:.3g}" if np.isfinite(row["stderr"]) else "n/a"
            ci = (f"[{row['ci_lower']:.5g}, {row['ci_upper']:.5g}]"
                  if np.isfinite(row["ci_lower"]) else "")
            lines.append(f"  {name:<22} {row['value']:>12.6g} {se:>11} {ci:>27}")
        if self.weights:
            for k, w in self.weights.items():
                lines.append(f"  network {k}: {w.size} weights, |w| = {np.linalg.norm(w):.4g}")
        if self.correlation is not None:
            C = self.correlation.to_numpy()
            iu = np.triu_indices_from(C, 1)
            strong = [(self.correlation.index[i], self.correlation.columns[j], C[i, j])
                      for i, j in zip(*iu) if np.isfinite(C[i, j]) and abs(C[i, j]) > 0.9]
            if strong:
                lines.append("")
                lines.append("  strongly correlated (|r| > 0.9): " + ", ".join(
                    f"{a}~{b} ({c:+.3f})" for a, b, c in strong))
        if self.starts is not None and len(self.starts) > 1:
            ok = int(self.starts["success"].sum())
            lines.append(f"  {len(self.starts)} starts, {ok} converged; best loss "
                         f"{self.starts['loss'].min():.6g}")
        return "\n".join(lines)

    # --- the objective (rebuilt after load) -----------------------------------------------
    def objective(self) -> FitObjective:
        if self._obj is None:
            raise OptionError("this result has no data attached")
        return self._obj

    # --- residuals ----------------------------------------------------------------------------
    def plot(self, kind: str = "fit", **kwargs):
        """Draw one panel of this fit and return the matplotlib axes.

        ``kind`` is ``"fit"`` (data, prediction and band), ``"residuals"``, ``"loss"`` or
        ``"learned"`` (a network output against its inputs); keyword arguments
        (``observable=``, ``experiment=``, ``output=``, ``ax=``) go to
        :func:`dynlearn.plotting.plot_result`. Needs matplotlib (the ``plot`` extra).
        """
        from dynlearn.report.figures import plot_result
        return plot_result(self, kind, **kwargs)

    def profile(self, name: str, **kwargs):
        """The likelihood profile and profile-likelihood interval of one parameter (refits
        with it held fixed); see :func:`dynlearn.profile`."""
        from dynlearn.analysis.likelihood_profile import profile
        return profile(self, name, **kwargs)

    def residuals(self):
        """A long DataFrame of residuals at the optimum.

        Columns: ``experiment``, the time column, ``observable``, ``data``, ``fitted``,
        ``residual`` (data - fitted) and ``scaled`` (the residual the optimizer sees:
        on the log scale for ``loss="log"``, divided by the noise level where known or
        estimated).
        """
        import pandas as pd
        obj = self.objective()
        theta, y0s = obj.space.unpack(self.x)
        rows = []
        tname = self.data.time_name
        for b, sc, y0 in zip(obj.bound, obj.scales, y0s):
            H = obj._observe(theta, b, y0)
            D = np.where(b.mask, b.Y, 1.0)
            gd, gh = (np.log(D), np.log(np.where(b.mask, H, 1.0))) if obj.loss == "log" \
                else (D, H)
            S = (gd - gh) * sc
            for i, k in np.argwhere(b.mask):
                rows.append((b.name, b.t[i], obj.obs[k], b.Y[i, k], H[i, k], b.Y[i, k] - H[i, k],
                             S[i, k]))
        return pd.DataFrame(rows, columns=["experiment", tname, "observable", "data", "fitted",
                                           "residual", "scaled"])

    # --- predictions ----------------------------------------------------------------------------
    def predict(self, t, y0=None, inputs=None, experiment=None, level: float = 0.95,
                bands: bool = True):
        """Simulate the fitted model, with pointwise confidence bands where available.

        Parameters
        ----------
        t : array_like
            Output times, increasing.
        y0 : array_like, optional
            Initial state at ``t[0]``. Default: the fitted initial state of ``experiment``
            (the first one by default), starting at that experiment's first time.
        inputs : DataFrame or InputSignal, optional
            For models with inputs: a DataFrame whose first column is time, then one column
            per input. Default: the inputs of ``experiment``.
        experiment : str, optional
        level : float
            Confidence level of the bands.
        bands : bool
            Add ``<observable>_lower``/``<observable>_upper`` columns (from the parameter
            covariance; on the log scale for ``loss="log"``). Skipped when the covariance is
            not available (e.g. more parameters than data).

        Returns
        -------
        pandas.DataFrame
            Like ``simulate(...).to_frame()``, plus band columns.
        """
        from dynlearn.core.vectorfield import VectorField
        from dynlearn.data.dataset import as_input_signal
        from dynlearn.sensitivity import Problem
        from dynlearn.solve import check_times, check_y0, simulate
        t = check_times(t)
        names = [e.name for e in self.data] if self.data is not None else list(self.y0)
        exp = names[0] if experiment is None else experiment
        if exp not in names:
            raise DataError(f"no experiment named {exp!r}; experiments: {names}")
        k = names.index(exp)
        obj = self._obj
        own_y0 = y0 is None
        if own_y0:
            y0v = self.y0[exp]
            t0 = obj.bound[k].t0 if obj is not None else float(t[0])
            t0 = min(t0, float(t[0]))
        else:
            y0v = check_y0(y0, self.model.n_states, [s.name for s in self.model.states])
            t0 = float(t[0])
        signal = None
        if self.model.inputs:
            if inputs is None:
                if obj is None:
                    raise DataError("pass inputs= (a DataFrame: time column, then the inputs)")
                signal = obj.bound[k].inputs
            else:
                signal = as_input_signal(inputs, self.model)
        cfg = self.config
        sol = simulate(self.model, t, y0v, method=cfg["method"], rtol=cfg["rtol"],
                       atol=cfg["atol"], inputs=signal, t0=t0, **cfg.get("options", {}))
        frame = sol.to_frame()
        if not bands or self.cov_x is None or obj is None:
            return frame
        space = obj.space
        C = self.cov_x
        if not np.all(np.isfinite(C)):
            return frame
        theta = space.unpack(self.x)[0]
        vf = VectorField(self.model0, theta, signal)
        prob = Problem(vf, t0, t, y0v, None, cfg["method"], cfg["rtol"], cfg["atol"],
                       cfg.get("options", {}), exp)
        try:
            H, dH = _obs_jacobian(prob, cfg["method"])
        except Exception:  # noqa: BLE001 - bands are optional; the prediction stands
            return frame
        P = space.n_theta
        G = np.zeros(dH.shape[:2] + (space.size,))
        G[:, :, :P] = dH[:, :, :P]
        if own_y0:
            for i, kk in space.y0_index[k]:
                G[:, :, kk] = dH[:, :, P + i]
        G = G * space.dphysical(self.x)
        var = np.einsum("moq,qr,mor->mo", G, C, G)
        sd = np.sqrt(np.maximum(var, 0.0))
        q = quantile(level, None)
        for j, o in enumerate(self.model.observable_names):
            h = H[:, j]
            if cfg.get("loss") == "log" and np.all(h > 0):
                s = sd[:, j] / h
                frame[f"{o}_lower"], frame[f"{o}_upper"] = h * np.exp(-q * s), h * np.exp(q * s)
            else:
                frame[f"{o}_lower"], frame[f"{o}_upper"] = h - q * sd[:, j], h + q * sd[:, j]
        return frame

    # --- save / load ----------------------------------------------------------------------------
    def save(self, path) -> tuple[str, str]:
        """Write ``<path>.json`` and ``<path>.npz``; returns both paths.

        No code is pickled: the JSON holds the settings, the parameter table and the model's
        equations as text; the npz holds arrays only.
        """
        from dynlearn.fitting.fitter import _jsonable, _paths
        jpath, npath = _paths(path)
        arrays = {"x": self.x}
        if self.cov_x is not None:
            arrays["cov_x"] = self.cov_x
        for name, w in self.weights.items():
            arrays[f"weights__{name}"] = w
        exps = []
        for i, e in enumerate(self.data):
            cols = list(e.columns)
            arrays[f"data__{i}__t"] = e.t
            for j, c in enumerate(cols):
                arrays[f"data__{i}__{j}"] = e.columns[c]
            exps.append({"name": e.name, "columns": cols, "meta": e.meta})
        arrays["history"] = np.array(self.history, dtype=float).reshape(-1, 2)
        obj = self._obj
        meta = {
            "format": "dynlearn.FitResult", "version": FORMAT_VERSION,
            "success": self.success, "status": self.status, "message": self.message,
            "nfev": self.nfev, "njev": self.njev, "ngev": self.ngev, "nit": self.nit,
            "loss": self.loss, "aic": self.aic, "bic": self.bic, "elapsed": self.elapsed,
            "n_data": self.n_data, "n_params": self.n_params, "sigma": self.sigma,
            "config": self.config, "names": obj.space.names if obj is not None else [],
            "sigma_hat": obj.sigma_hat if obj is not None else None,
            "fit_sigma": _sigma_spec(obj), "weights_spec": _weights_spec(obj),
            "y0_params": [[_param_dict(p) for p in row] for row in obj.space.y0]
            if obj is not None else None,
            "params": {"index": list(self.params.index), "columns": list(self.params.columns),
                       "data": self.params.to_numpy(dtype=object).tolist()},
            "model": model_to_dict(self.model0),
            "data": {"time_name": self.data.time_name, "experiments": exps},
            "optimizer": self.optimizer.to_dict() if self.optimizer is not None else None,
        }
        os.makedirs(os.path.dirname(os.path.abspath(jpath)), exist_ok=True)
        np.savez(npath, **arrays)
        with open(jpath, "w") as f:
            json.dump(_jsonable(meta), f, indent=1)
        return jpath, npath


def load_result(path, model=None) -> FitResult:
    """Read a result written by :meth:`FitResult.save`.

    Parameters
    ----------
    path : str or path
        ``<path>``, ``<path>.json`` or ``<path>.npz``.
    model : HybridModel, optional
        The model that was fitted. Needed when it holds a custom :class:`~dynlearn.Network`;
        otherwise it is rebuilt from the equations stored in the JSON file (parsed with the
        restricted equation parser, never ``eval``).
    """
    import pandas as pd

    from dynlearn.data.dataset import Dataset, Experiment
    from dynlearn.fitting.fitter import _paths
    jpath, npath = _paths(path)
    try:
        with open(jpath) as f:
            meta = json.load(f)
        with np.load(npath, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
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
                       cfg["atol"], cfg.get("options", {}))
    if meta.get("sigma_hat") is not None:
        obj.set_sigma(np.asarray(meta["sigma_hat"], dtype=float))
    x = arrays["x"]
    theta, y0s = space.unpack(x)
    params = pd.DataFrame([[_unjson(v) for v in row] for row in meta["params"]["data"]],
                          index=meta["params"]["index"], columns=meta["params"]["columns"])
    cov_x = arrays.get("cov_x")
    cov_df, corr_df = _covariance_frames(space, x, cov_x)
    hist = [(int(a), float(b)) for a, b in arrays.get("history", np.zeros((0, 2)))]
    weights = {n.name: w for n, w in zip(model.networks, model.split_theta(theta)[1])}

    def num(v):
        return float(_unjson(v))
    return FitResult(success=meta["success"], status=meta["status"], message=meta["message"],
                     nfev=meta["nfev"], njev=meta["njev"], ngev=meta["ngev"], nit=meta["nit"],
                     loss=num(meta["loss"]), history=hist, params=params, covariance=cov_df,
                     correlation=corr_df, sigma=meta["sigma"], aic=num(meta["aic"]),
                     bic=num(meta["bic"]), model=model.with_theta(theta),
                     y0={e.name: y for e, y in zip(dataset, y0s)}, weights=weights,
                     starts=None, elapsed=meta["elapsed"], x=x, cov_x=cov_x,
                     n_data=meta["n_data"], n_params=meta["n_params"], config=cfg,
                     model0=model, data=dataset, optimizer=None, _obj=obj)


# --- helpers --------------------------------------------------------------------------------
def _unjson(v):
    """Undo the JSON encoding of non-finite floats ("inf", "-inf", "nan")."""
    if isinstance(v, str) and v in ("inf", "-inf", "nan"):
        return float(v)
    return v


def _obs_jacobian(prob, method):
    from dynlearn.objective.objective import discrete_observable_jacobian
    from dynlearn.sensitivity import ForwardSensitivity
    from dynlearn.sensitivity.discrete import DISCRETE_METHODS
    if method in DISCRETE_METHODS:
        return discrete_observable_jacobian(prob, wrt_y0=True)
    return ForwardSensitivity().observable_jacobian(prob, wrt_y0=True)


def _covariance(obj: FitObjective, r, J):
    """Covariance in x-space, degrees of freedom, and whether it was scaled by s^2."""
    n, p = obj.n_data, obj.space.size
    scaled = obj.loss != "gaussian" and not obj.has_known_sigma
    dof = n - p
    s2 = 1.0
    if scaled:
        if dof <= 0:
            return None, dof, scaled
        rd = r[:n]
        s2 = float(rd @ rd) / dof
    cov, _ = fisher_covariance(J, s2)
    return cov, (dof if scaled else None), scaled


def _final_loss(obj, x, r_data) -> float:
    try:
        r = obj.residuals(x) if r_data is None else None
    except Rejected:
        return math.inf
    if r is None:
        reg = obj._reg(x)
        r = np.concatenate([r_data, reg])
    c = float(r @ r)
    if obj.loss == "gaussian":
        return 0.5 * c + 0.5 * obj.penalty() + 0.5 * obj.n_data * math.log(2 * math.pi)
    return c


def _information(obj, x, r_data, n, p):
    """AIC and BIC from the Gaussian log-likelihood of the residuals."""
    if r_data is None:
        return math.inf, math.inf
    ssr = float(r_data @ r_data)
    if obj.loss == "gaussian" or obj.has_known_sigma:
        m2ll = ssr + obj.penalty() + n * math.log(2 * math.pi)
        k = p
    else:  # one unknown common variance, profiled out
        m2ll = n * (math.log(2 * math.pi * max(ssr, 1e-300) / n) + 1.0)
        k = p + 1
    return m2ll + 2 * k, m2ll + k * math.log(max(n, 1))


def _params_table(model, space: ParameterSpace, x, cov_x, dof, scaled, level):
    import pandas as pd
    vals = space.physical(x)
    se_x = np.full(space.size, np.nan)
    if cov_x is not None:
        se_x = np.sqrt(np.abs(np.diag(cov_x)))
        se_x[~np.isfinite(np.diag(cov_x))] = np.nan
    q = quantile(level, dof if scaled else None)
    lo, hi = interval(x, se_x, space.is_log, q)
    se_phys = se_x * space.dphysical(x)
    rows = {}
    pos = {name: k for k, name in enumerate(space.names)}
    for s in model.param_symbols:
        p = model.params[s]
        if s.name in pos:
            k = pos[s.name]
            rows[s.name] = dict(value=vals[k], stderr=se_phys[k], ci_lower=lo[k], ci_upper=hi[k],
                                initial=p.value, min=p.min, max=p.max, fixed=False,
                                transform=p.transform, kind="parameter")
        else:
            rows[s.name] = dict(value=p.value, stderr=np.nan, ci_lower=np.nan, ci_upper=np.nan,
                                initial=p.value, min=p.min, max=p.max, fixed=True,
                                transform=p.transform, kind="parameter")
    for k in range(space.size):
        if space.kinds[k] == "y0":
            p = space.params[k]
            rows[space.names[k]] = dict(value=vals[k], stderr=se_phys[k], ci_lower=lo[k],
                                        ci_upper=hi[k], initial=p.value, min=p.min, max=p.max,
                                        fixed=False, transform=p.transform, kind="initial state")
    return pd.DataFrame.from_dict(rows, orient="index")


def _covariance_frames(space, x, cov_x):
    """Covariance and correlation of the non-network parameters in physical units
    (the optimizer's covariance mapped through the transforms), or ``(None, None)``."""
    import pandas as pd
    keep = [k for k in range(space.size) if space.kinds[k] != "weight"]
    if cov_x is None or not keep:
        return None, None
    D = space.dphysical(x)[keep]
    C = cov_x[np.ix_(keep, keep)] * np.outer(D, D)
    names = [space.names[k] for k in keep]
    return (pd.DataFrame(C, index=names, columns=names),
            pd.DataFrame(correlation_from_covariance(C), index=names, columns=names))


def _starts_frame(space, outcomes):
    import pandas as pd
    rows = []
    for o in outcomes:
        v = space.physical(o.x)
        row = {"start": o.start, "loss": o.cost, "success": o.success, "message": o.message,
               "nfev": o.nfev + o.njev + o.ngev}
        for k, name in enumerate(space.names):
            if space.kinds[k] != "weight":
                row[name] = v[k]
        rows.append(row)
    return pd.DataFrame(rows)   # "start" is a column, as the public contract says


def _known_sigma(obj, o):
    k = obj.obs.index(o)
    vals = np.concatenate([S[:, k][b.mask[:, k]] for S, b in zip(obj.known, obj.bound)])
    vals = vals[np.isfinite(vals)]
    return float(np.median(vals)) if vals.size else 1.0


def _sigma_spec(obj):
    if obj is None:
        return None
    out = {}
    for S, b in zip(obj.known, obj.bound):
        for k, o in enumerate(obj.obs):
            col = S[:, k][np.isfinite(S[:, k])]
            if col.size and np.all(col == col[0]) and b.sigma is not None and \
                    not np.isfinite(b.sigma[:, k]).any():
                out[o] = float(col[0])
    return out or None


def _weights_spec(obj):
    if obj is None or np.all(obj.weights == 1.0):
        return None
    return {o: float(w) for o, w in zip(obj.obs, obj.weights)}


def _param_dict(p: Parameter) -> dict:
    return {"value": p.value, "min": p.min, "max": p.max, "fixed": p.fixed,
            "transform": p.transform}


# --- the model as text (no code is pickled) ----------------------------------------------
def model_to_dict(model) -> dict:
    """The model's description as JSON-able text: symbols, parameters, equations, MLPs."""
    from dynlearn.core.neural import MLP
    nets = []
    for n in model.networks:
        if isinstance(n, MLP):
            nets.append({"type": "MLP", "name": n.name, "inputs": [str(v) for v in n.inputs],
                         "outputs": n.n_outputs, "hidden": list(n.hidden),
                         "activation": n.activation})
        else:
            nets.append({"type": type(n).__name__, "name": n.name})
    return {
        "name": model.name,
        "states": [s.name for s in model.states],
        "time": model.time.name,
        "inputs": [u.name for u in model.inputs],
        "params": {s.name: _param_dict(p) for s, p in model.params.items()},
        "rhs": {s.name: str(e) for s, e in zip(model.states, model.rhs)},
        "observables": {k: str(e) for k, e in model.observables.items()},
        "networks": nets,
    }


def model_from_dict(d: dict):
    """Rebuild a model from :func:`model_to_dict`, parsing equations with the restricted
    parser (declared names, whitelisted functions and network outputs only)."""
    import sympy as sp

    from dynlearn.core.expressions import parse_expression
    from dynlearn.core.model import HybridModel
    from dynlearn.core.neural import MLP
    names: dict = {}
    for group in ("states", "inputs"):
        for n in d[group]:
            names[n] = sp.Symbol(n)
    for n in d["params"]:
        names[n] = sp.Symbol(n)
    names[d["time"]] = sp.Symbol(d["time"])
    for spec in d["networks"]:
        if spec.get("type") != "MLP":
            raise ModelError(f"network '{spec['name']}' is a custom {spec.get('type')}; pass "
                             "model= to load_result")
        inputs = [parse_expression(v, names, where=f"network '{spec['name']}' input")
                  for v in spec["inputs"]]
        names[spec["name"]] = MLP(spec["name"], inputs=inputs, outputs=spec["outputs"],
                                  hidden=spec["hidden"], activation=spec["activation"], seed=0)
    rhs = {names[s]: parse_expression(e, names, where=f"equation of '{s}'")
           for s, e in d["rhs"].items()}
    obs = {k: parse_expression(e, names, where=f"observable '{k}'")
           for k, e in d["observables"].items()}
    params = {names[k]: Parameter(**v) for k, v in d["params"].items()}
    return HybridModel(states=[names[s] for s in d["states"]], rhs=rhs, params=params,
                       inputs=[names[u] for u in d["inputs"]], observables=obs,
                       time=names[d["time"]], name=d.get("name"))
