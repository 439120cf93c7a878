"""The result of a fit: parameters with uncertainties, predictions, residuals, save/load.

:class:`FitResult` keeps the model passed to :func:`dynlearn.fit` (never mutated), the
fitted model (``result.model``), the data, and everything needed to recompute residuals,
predictions and their confidence bands. The work is done beside it: the covariance and the
parameter table in :mod:`dynlearn.results.covariance`, what the data determine and how well
the model fits in :mod:`dynlearn.results.diagnostics`, predictions and bands in
:mod:`dynlearn.results.prediction`, ``save(path)`` / :func:`load_result` in
:mod:`dynlearn.results.persistence` (JSON + npz, nothing pickled), profile likelihoods in
:mod:`dynlearn.results.likelihood_profile`.

Refits (profiles) go through :attr:`FitResult.refitter`, a callable that
:func:`dynlearn.fit` injects: results never import the fitting code above them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from dynlearn.core.parameters import ParameterSpace
from dynlearn.errors import OptionError
from dynlearn.objective.losses import loss_from_config, loss_from_name
from dynlearn.objective.objective import FitObjective, Rejected
from dynlearn.optimizers import Status
from dynlearn.results.covariance import (
    add_noise_params,
    covariance_budget,
    covariance_frames,
    noise_param_notes,
    optimum_system,
    parameter_covariance,
    params_table,
    split_noise_covariance,
)
from dynlearn.results.diagnostics import (
    CORRELATION_THRESHOLD,
    Diagnostics,
    FitWarning,
    describe_counts,
    diagnose,
)
from dynlearn.results.likelihood_profile import Profile, profile
from dynlearn.results.persistence import read_result, write_result
from dynlearn.results.prediction import predict
from dynlearn.solve import MethodChoice

__all__ = ["FitResult", "load_result"]


@dataclass
class FitResult:
    """What :func:`dynlearn.fit` returns.

    Attributes
    ----------
    success : bool
        True only when the fit converged (``status.converged``).
    status : Status
        Why the fit stopped (:class:`dynlearn.optimizers.Status`): converged by a named
        criterion, ``STALLED``, ``MAX_ITER``, ``MAX_TIME``, ``CALLBACK``, ``INTERRUPTED`` or
        ``FAILED`` (the model cannot be solved at any tried point). A multi-start fit has
        the best start's status, a staged optimizer the last stage's.
    message : str
        The optimizer's own account of the stop (the criterion, what to try after a stall).
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
        The best loss so far each time it improved, against the number of evaluations
        (solves + Jacobians + gradients, as the summary counts them).
    stages : list of (int, str)
        Where each optimizer stage began (evaluations before it) and its name, e.g.
        ``[(0, "Adam"), (412, "LBFGSB")]``; with noise re-estimation, each round's stages.
    stage_history : list of (int, float, int)
        For stages that minimise something other than the loss (multiple shooting: the
        segments' misfit plus the continuity penalty): ``(evaluations, best value so far,
        index into stages)`` each time it improved.
    params : pandas.DataFrame
        Physical parameters (fixed ones included, marked) and estimated initial states:
        value, stderr, ci_lower, ci_upper (95%, clipped to the bounds), initial, min, max,
        fixed, transform, kind, at_bound (``"lower"``, ``"upper"`` or ``""``), unit (the
        label given to the model, ``""`` for none; an initial state has its state's). With
        noise formulas, then a row per noise parameter (``kind = "noise parameter"``; see
        :func:`~dynlearn.results.covariance.add_noise_params`).
    covariance, correlation : pandas.DataFrame or None
        Over the free entries of :attr:`params` but the noise parameters, in physical
        units.
    sigma : dict
        Noise level per observable (estimated for ``"gaussian"``: pooled over its noise
        groups when it has several), and each estimated noise group's level under its label
        where it is not an observable's name (a shared level ``sigma={"x": "s", "y": "s"}``,
        per experiment ``x@exp1``).
    aic, bic : float
    model : HybridModel
        The model at the fitted values.
    y0 : dict experiment -> ndarray
        Initial states used or estimated.
    weights : dict network -> ndarray
    starts : pandas.DataFrame
        One row per start of a multi-start fit: its ``loss`` (as :attr:`loss` is measured:
        for ``"gaussian"`` the negative log-likelihood with the start's own noise levels, by
        which the returned start was chosen), status, message, evaluations and parameters.
    refitter : callable or None
        ``refitter(model, data, fixed=None, **overrides) -> FitResult``: fits again with the
        settings of the fit that made this result (see :meth:`refit`); injected by
        :func:`dynlearn.fit`, ``None`` for a loaded result.
    diagnostics : Diagnostics or None
        What the data determine (the residual Jacobian's rank and the parameter combinations
        it cannot separate, named), parameters at a bound, goodness of fit (chi-square,
        reduced chi-square, residual standard deviation and R^2 per observable), why
        standard errors are n/a, and warnings (:mod:`dynlearn.results.diagnostics`).
        ``None`` for a result saved before diagnostics existed.
    """

    success: bool
    status: Status
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
    stages: list = field(repr=False, default_factory=list)
    stage_history: list = field(repr=False, default_factory=list)
    diagnostics: Diagnostics | None = field(repr=False, default=None)
    model0: object = field(repr=False, default=None)
    data: object = field(repr=False, default=None)
    optimizer: object = field(repr=False, default=None)
    refitter: Callable | None = field(repr=False, default=None)
    # the fit's objective, bound to the data (rebuilt after load); see objective()
    _obj: object = field(repr=False, default=None)

    @property
    def method(self) -> str:
        """The ``solve_ivp`` method the fit used (what ``method="auto"`` chose)."""
        return str(self.config.get("method"))

    @property
    def method_choice(self) -> MethodChoice | None:
        """With ``method="auto"``: the method chosen and why (kept when saved); else None."""
        rec = self.config.get("method_choice")
        return MethodChoice.from_dict(rec) if rec else None

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_fit(cls, model0, dataset, obj: FitObjective, best, outcomes, optimizer, elapsed,
                 config, level: float = 0.95, refitter: Callable | None = None) -> FitResult:
        """The result of a fit (called by :func:`dynlearn.fit`).

        Parameters
        ----------
        model0 : HybridModel
            The model passed to the fit.
        dataset : Dataset
        obj : FitObjective
            The fit's objective, with the best start's noise levels.
        best : StartOutcome
            The best start (``x``, ``cost``, counts, history, ``final``: residuals and a
            Jacobian factor at ``x`` when the optimizer left them).
        outcomes : list of StartOutcome
            Every start.
        optimizer : Optimizer
        elapsed : float
        config : dict
            The fit's settings as saved with the result.
        level : float
            Level of the parameter intervals.
        refitter : callable, optional
            See :attr:`refitter`.
        """
        space: ParameterSpace = obj.space
        x = np.asarray(best.x, dtype=float)
        theta, y0s = space.unpack(x)
        cov_x, r_data, dof, scaled = None, None, None, False
        # within a budget (the fit's max_time, else a multiple of its own cost per
        # evaluation): past it the result keeps the best point and its loss, without the
        # standard errors, rather than hang on a solve of unbounded length
        # (with noise formulas, A is the Fisher factor of the model's coordinates and the
        # noise parameters together; else A = J)
        r, J, A, not_computed = optimum_system(obj, x, best.final,
                                               covariance_budget(elapsed, outcomes))
        timed_out = bool(not_computed)
        cov_p = None
        if r is not None:
            r_data = r[:obj.n_data]
            cov_x, dof, scaled = parameter_covariance(obj, r, A)
            cov_x, cov_p = split_noise_covariance(obj, cov_x)
        loss = best.loss if timed_out else _final_loss(obj, x, r_data)
        table = add_noise_params(params_table(model0, space, x, cov_x, dof, scaled, level),
                                 obj, cov_p, level)
        table["unit"] = [model0.unit(n) for n in table.index]    # a label, for the tables
        diagnostics = diagnose(obj, x, r, J, cov_x, table,
                               effective_dof=config.get("effective_dof"),
                               unpenalised_cost=config.get("unpenalised_cost"))
        if not_computed:
            diagnostics.uncertainty = not_computed
        diagnostics.notes.update(noise_param_notes(obj, cov_p))
        if diagnostics.noise_warning:
            # stacklevel: from_fit <- dynlearn.fit <- the caller
            warnings.warn(diagnostics.noise_warning, FitWarning, stacklevel=3)
        cov_df, corr_df = covariance_frames(space, x, cov_x)
        fitted = model0.with_theta(theta)
        weights = {net.name: w.copy() for net, w in zip(model0.networks,
                                                        model0.split_theta(theta)[1])}
        n, p = obj.n_data, space.size + int(obj.estimated.sum())
        aic, bic = _information(obj, x, r_data, n, p)
        starts = _starts_frame(space, outcomes)
        # per observable its estimated level (pooled over its groups), then each estimated
        # group's own under its label (by default the groups are the observables)
        sigma = {o: float(s) for o, s in zip(obj.obs, obj.observable_noise())
                 if np.isfinite(s)}
        sigma.update({g: float(s) for g, s, e in zip(obj.noise_groups, obj.sigma_hat,
                                                      obj.estimated) if e})
        formula = getattr(obj, "formula_columns", np.zeros(len(obj.obs), dtype=bool))
        for o, f in zip(obj.obs, formula):
            if not f:     # (a formula's levels vary by value: its parameters are shown)
                sigma.setdefault(o, _known_sigma(obj, o))
        return cls(success=best.success, status=best.status, message=best.message,
                   nfev=best.nfev, njev=best.njev, ngev=best.ngev, nit=best.nit, loss=loss,
                   history=list(best.history), params=table, covariance=cov_df,
                   correlation=corr_df, sigma=sigma, aic=aic, bic=bic, model=fitted,
                   y0={e.name: y for e, y in zip(dataset, y0s)}, weights=weights,
                   starts=starts, elapsed=elapsed, x=x, cov_x=cov_x, n_data=n, n_params=p,
                   config=dict(config), rejected=best.rejected,
                   stages=_stage_labels(getattr(best, "stage_marks", []), optimizer),
                   stage_history=[(int(e), float(v), int(k))
                                  for e, v, k in getattr(best, "stage_history", [])],
                   diagnostics=diagnostics,
                   model0=model0, data=dataset,
                   optimizer=optimizer, refitter=refitter, _obj=obj)

    # --- reports ----------------------------------------------------------------------------
    def __repr__(self) -> str:
        return (f"FitResult(success={self.success}, loss={self.loss:.6g}, nfev={self.nfev}, "
                f"njev={self.njev}, ngev={self.ngev}, message={self.message!r})")

    def summary(self) -> str:
        """A readable report, in the spirit of lmfit's ``fit_report``.

        The status and the optimizer's message; the loss, the data and the fitted values
        (counted as the command line announces them); the evaluations; goodness of fit
        (chi-square and reduced chi-square where noise levels are known or can be
        estimated from the data, residual standard deviation and R^2 per observable);
        identifiability (the residual Jacobian's rank and the parameter combinations the
        data cannot determine, named); the parameter table (value, standard error, relative
        standard error, interval, initial value, and a note: at a bound, not determined,
        absorbed by the network); correlations above
        :data:`~dynlearn.results.diagnostics.CORRELATION_THRESHOLD`; why standard errors are
        n/a; warnings. See :mod:`dynlearn.results.diagnostics`.
        """
        d = self.diagnostics
        counts = d.counts if d is not None else None
        values = (describe_counts(counts) if counts is not None
                  else f"{self.n_params} fitted values")
        lines = [f"Fit of {self.model0.name}: {'success' if self.success else 'FAILED'} - "
                 f"{self.message}",
                 f"  status: {self.status.value} ({self.status.message})",
                 f"  loss ({self.config.get('loss')}) = {self.loss:.6g}; {self.n_data} data "
                 f"points, {values}; AIC = {self.aic:.4g}, BIC = {self.bic:.4g}",
                 f"  evaluations: {self.nfev + self.njev + self.ngev} ({self.nfev} solves, "
                 f"{self.njev} Jacobians, {self.ngev} gradients); {self.nit} iterations; "
                 f"{self.elapsed:.3g} s"
                 + (f"; {self.rejected} trial points rejected (solver failure)"
                    if self.rejected else "")]
        choice = self.method_choice
        if choice is not None:
            lines.append(f"  solver: {choice.describe()}")
        reg = self.config.get("regularisation")     # dynlearn.fitting.regularisation
        if reg:
            lines.append(f"  L2 penalty chosen from the data: l2 = {reg['l2']:.3g} "
                         f"({reg['rule']}: {reg['reason']})")
        m0 = self.model0
        labels = {n: m0.unit(n) for n in (m0.time.name, *[s.name for s in m0.states],
                                          *[u.name for u in m0.inputs], *m0.observable_names)}
        if any(labels.values()):     # the parameters' units are in their table
            lines.append("  units: " + ", ".join(f"{k} [{u}]" for k, u in labels.items() if u))
        scales = loss_from_config(self.config).bind(m0.observable_names).transforms
        logs = {k: v for k, v in scales.items() if v != "lin"}
        if logs and self.config.get("transform") is not None:
            lines.append("  residual scales: " + ", ".join(f"{k} {v}" for k, v in logs.items())
                         + ("" if len(logs) == len(scales) else "; the others linear"))
        groups = self.config.get("noise_groups")
        if groups:      # shared or per-experiment noise levels: each with what it covers
            lines.append("  noise sigma (estimated by the fit): " + ", ".join(
                f"{g}={self.sigma.get(g, math.nan):.4g} ({', '.join(m)})"
                for g, m in groups.items()))
        elif loss_from_name(self.config.get("loss", "ls")).estimates_noise:
            lines.append("  noise sigma (estimated by the fit): " + ", ".join(
                f"{k}={v:.4g}" + (f" ({logs[k]} scale)" if k in logs else
                                  f" {m0.unit(k)}" if m0.unit(k) else "")
                for k, v in self.sigma.items()))
        if d is not None:
            lines += d.lines()
        lines.append("")
        units = {n: str(row.get("unit", "") or "") for n, row in self.params.iterrows()}
        uw = max((len(u) for u in units.values()), default=0)
        uw = max(uw, 4) if uw else 0          # no unit column when nothing has a unit
        uhead = f" {'unit':<{uw}}" if uw else ""
        lines.append(f"  {'name':<22} {'value':>12}{uhead} {'stderr':>11} {'rel.':>7} "
                     f"{'95% interval':>27} {'initial':>11}  note")
        for name, row in self.params.iterrows():
            note = d.note(name) if d is not None else ""
            ucell = f" {units[name]:<{uw}}" if uw else ""
            if row["fixed"]:
                lines.append(f"  {name:<22} {row['value']:>12.6g}{ucell} {'(fixed)':>11}")
                continue
            se = row["stderr"]
            ses = f"{se:.3g}" if np.isfinite(se) else "n/a"
            rel = (f"{100 * abs(se / row['value']):.3g}%" if np.isfinite(se) and row["value"]
                   else "")
            ci = (f"[{row['ci_lower']:.5g}, {row['ci_upper']:.5g}]"
                  if np.isfinite(row["ci_lower"]) else "")
            lines.append(f"  {name:<22} {row['value']:>12.6g}{ucell} {ses:>11} {rel:>7} {ci:>27} "
                         f"{row['initial']:>11.6g}  {note}".rstrip())
        if self.weights:
            for k, w in self.weights.items():
                lines.append(f"  network {k}: {w.size} weights, |w| = {np.linalg.norm(w):.4g}")
        if self.correlation is not None:
            C = self.correlation.to_numpy()
            iu = np.triu_indices_from(C, 1)
            strong = [(self.correlation.index[i], self.correlation.columns[j], C[i, j])
                      for i, j in zip(*iu)
                      if np.isfinite(C[i, j]) and abs(C[i, j]) > CORRELATION_THRESHOLD]
            if strong:
                lines.append("")
                lines.append(f"  correlations above {CORRELATION_THRESHOLD:g} in magnitude "
                             "(smaller ones not shown): " + ", ".join(
                                 f"{a}~{b} ({c:+.3f})" for a, b, c in strong))
        if self.starts is not None and len(self.starts) > 1:
            ok = int(self.starts["success"].sum())
            lines.append(f"  {len(self.starts)} starts, {ok} converged; best loss "
                         f"{self.starts['loss'].min():.6g}")
            placed = scale_out_line(self.starts)
            if placed:
                lines.append(f"  {placed}")
        closing = d.closing_lines() if d is not None else []
        if closing:
            lines.append("")
            lines += closing
        return "\n".join(lines)

    # --- the objective (rebuilt after load) -----------------------------------------------
    def objective(self) -> FitObjective:
        """The fit's objective, bound to the data (residuals, Jacobians, noise levels).

        Raises
        ------
        OptionError
            The result has no data attached.
        """
        if self._obj is None:
            raise OptionError("this result has no data attached")
        return self._obj

    # --- residuals ----------------------------------------------------------------------------
    def plot(self, kind: str = "fit", **kwargs):
        """Draw one panel of this fit and return the matplotlib axes.

        ``kind`` is ``"fit"`` (data, prediction, its confidence band of the mean and its
        prediction band), ``"residuals"``, ``"loss"`` (every stage, against the evaluations
        the summary counts) or ``"learned"`` (a network output against its inputs);
        keyword arguments (``observable=``, ``experiment=``, ``output=``, ``ax=``,
        ``recovered=`` a :func:`dynlearn.recover` result to overlay on ``"learned"``) go to
        :func:`dynlearn.results.plots.plot_result`. Axes carry the model's units. Needs
        matplotlib (the ``plot`` extra).
        """
        from dynlearn.results.plots import plot_result
        return plot_result(self, kind, **kwargs)

    def report(self, out_dir, **kwargs) -> list:
        """Write this fit's files into ``out_dir``, as ``dynlearn fit`` does: params.csv,
        summary.txt, predictions.csv, result.json/.npz, run.json, the figures and
        report.html. Keyword arguments (``data=``, ``model_file=``, ``plots=``,
        ``recovered=`` a :func:`dynlearn.recover` result drawn over the learned terms) go
        to :func:`dynlearn.results.report.write_report`; returns the paths written."""
        from dynlearn.results.report import write_report
        return write_report(self, out_dir, **kwargs)

    def profile(self, name: str, **kwargs) -> Profile:
        """The likelihood profile and profile-likelihood interval of one parameter (refits
        with it held fixed); see :func:`dynlearn.profile`."""
        return profile(self, name, **kwargs)

    def refit(self, fixed: Mapping[str, float] | None = None, **overrides) -> FitResult:
        """Fit the model again to the same data with the same settings, warm-started from
        this fit's values.

        Parameters
        ----------
        fixed : dict, optional
            ``{parameter: value}``: parameters held fixed at these values in the refit.
        **overrides
            Keyword arguments of :func:`dynlearn.fit` that replace the fit's own
            (``optimizer=``, ``progress=``, ``loss=``, ...).

        Returns
        -------
        FitResult

        Raises
        ------
        OptionError
            The result was loaded from disk (it does not keep the fit's settings).
        """
        if self.refitter is None:
            raise OptionError("refit() needs a fit made in this session (a loaded result does "
                              "not keep the fit's settings); refit with dl.fit")
        return self.refitter(self.model, self.data, fixed=fixed, **overrides)

    def residuals(self):
        """A long DataFrame of residuals at the optimum.

        Columns: ``experiment``, the time column, ``observable``, ``data``, ``fitted``,
        ``residual`` (data - fitted) and ``scaled`` (the residual the optimizer sees:
        on the observable's transform scale, log or log10 where ``transform`` says so,
        divided by the noise level where known or estimated).
        """
        import pandas as pd
        obj = self.objective()
        rows = []
        tname = self.data.time_name
        for e, (b, sc) in enumerate(zip(obj.bound, obj.scales)):
            H = obj.experiment_prediction(e, self.x)
            D = np.where(b.mask, b.Y, 1.0)
            gd, gh = obj.loss.g(D, b.mask), obj.loss.g_or_nan(H, b.mask)
            S = (gd - gh) * sc
            for i, k in np.argwhere(b.mask):
                rows.append((b.name, b.t[i], obj.obs[k], b.Y[i, k], H[i, k], b.Y[i, k] - H[i, k],
                             S[i, k]))
        return pd.DataFrame(rows, columns=["experiment", tname, "observable", "data", "fitted",
                                           "residual", "scaled"])

    # --- predictions ----------------------------------------------------------------------------
    def predict(self, t, y0=None, inputs=None, experiment=None, level: float = 0.95,
                bands: bool = True):
        """Simulate the fitted model, with pointwise confidence and prediction bands where
        available.

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
            Add ``<observable>_lower``/``<observable>_upper`` columns, the confidence band of
            the mean (from the parameter covariance; on the log scale for an observable
            whose transform is log or log10), and ``<observable>_pred_lower``/``_pred_upper``,
            the prediction band (the same plus the noise: where new measurements fall; see
            :func:`dynlearn.results.prediction.noise_levels`). Skipped when the covariance
            is not available or not finite;
            :func:`dynlearn.results.prediction.band_reason` says why.

        Returns
        -------
        pandas.DataFrame
            Like ``simulate(...).to_frame()``, plus band columns.
        """
        return predict(self, self._obj, t, y0=y0, inputs=inputs, experiment=experiment,
                       level=level, bands=bands)

    # --- save / load ----------------------------------------------------------------------------
    def save(self, path) -> tuple[str, str]:
        """Write ``<path>.json`` and ``<path>.npz`` (given a folder: ``result.json`` and
        ``result.npz`` inside it); returns both paths.

        No code is pickled: the JSON holds the settings, the parameter table and the model's
        equations as text; the npz holds arrays only.
        """
        return write_result(self, self._obj, path)


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
    fields, obj = read_result(path, model)
    return FitResult(**fields, _obj=obj)


# --- helpers --------------------------------------------------------------------------------
def _final_loss(obj, x, r_data) -> float:
    try:
        r = obj.residuals(x) if r_data is None else None
    except Rejected:
        return math.inf
    if r is None:
        reg = obj.regularization(x)
        r = np.concatenate([r_data, reg])
    c = float(r @ r)
    return obj.loss.value(c, obj.penalty(), obj.n_data)


def _information(obj, x, r_data, n, p):
    """AIC and BIC from the Gaussian log-likelihood of the residuals."""
    if r_data is None:
        return math.inf, math.inf
    ssr = float(r_data @ r_data)
    if not obj.profiled_variance:
        m2ll = ssr + obj.penalty() + n * math.log(2 * math.pi)
        k = p
    else:  # one unknown common variance, profiled out
        m2ll = n * (math.log(2 * math.pi * max(ssr, 1e-300) / n) + 1.0)
        k = p + 1
    return m2ll + 2 * k, m2ll + k * math.log(max(n, 1))


def _stage_labels(marks, optimizer) -> list:
    """``[(evaluations before it, name)]`` per stage begun, from the tracker's marks."""
    try:
        names = [type(s).__name__ for s in optimizer.stages()]
    except AttributeError:
        names = []
    rounds = len({m[1] for m in marks}) > 1
    out = []
    for ev, rnd, stage in marks:
        name = names[stage] if 0 <= stage < len(names) else f"stage {stage + 1}"
        out.append((int(ev), f"round {rnd + 1}: {name}" if rounds else name))
    return out


def _starts_frame(space, outcomes):
    import pandas as pd
    rows = []
    for o in outcomes:
        v = space.physical(o.x)
        row = {"start": o.start, "loss": o.loss, "success": o.success,
               "status": o.status.value, "message": o.message,
               "nfev": o.nfev + o.njev + o.ngev}
        for k, name in enumerate(space.names):
            if space.kinds[k] != "weight":
                row[name] = v[k]
        if any(getattr(p, "worker", "") for p in outcomes):
            # starts sent elsewhere (Dask): where each ran, in which task, how long
            row.update(worker=getattr(o, "worker", ""), task=getattr(o, "task", -1),
                       seconds=float(o.elapsed),
                       task_seconds=float(getattr(o, "task_seconds", float("nan"))))
        rows.append(row)
    return pd.DataFrame(rows)   # "start" is a column, as the public contract says


def scale_out_line(starts) -> str:
    """One line on where the starts of a fit ran (``""`` when they all ran here): e.g.
    ``16 starts in 4 tasks on 2 workers (tcp://127.0.0.1:4001: 8, tcp://127.0.0.1:4002: 8)``,
    and how many ran on the client because the work was too small to pay for the cluster."""
    if starts is None or "worker" not in starts.columns:
        return ""
    remote = starts[(starts["worker"] != "") & (starts["worker"] != "client")]
    local = int((starts["worker"] == "client").sum())
    parts = []
    if len(remote):
        counts = remote["worker"].value_counts(sort=False)
        where = ", ".join(f"{w}: {int(c)}" for w, c in sorted(counts.items()))
        n_tasks = remote["task"].nunique()
        parts.append(f"{len(remote)} starts in {n_tasks} task{'s' * (n_tasks != 1)} on "
                     f"{len(counts)} worker{'s' * (len(counts) != 1)} ({where}; median task "
                     f"{remote.drop_duplicates('task')['task_seconds'].median():.3g} s)")
    if local:
        parts.append(f"{local} start{'s' * (local != 1)} run on the client: too little work "
                     "to pay for the cluster (dl.Parallel(client, over='starts') forces it)")
    return "; ".join(parts)


def _known_sigma(obj, o):
    k = obj.obs.index(o)
    vals = np.concatenate([S[:, k][b.mask[:, k]] for S, b in zip(obj.known, obj.bound)])
    vals = vals[np.isfinite(vals)]
    return float(np.median(vals)) if vals.size else 1.0
