"""A fit result as a folder of files: tables, the saved result, figures and an HTML report.

:func:`write_report` (also ``result.report(out_dir)``) writes what ``dynlearn fit`` leaves
in its output folder, each file atomically (a temporary file renamed, so a folder never
holds a half-written file):

* ``params.csv``: the parameter table; ``summary.txt``: ``result.summary()``;
* ``predictions.csv``: the fitted model on a fine grid per experiment, with the 95%
  confidence band of the mean (``<obs>_lower``/``_upper``) and the 95% prediction band
  that adds the noise (``<obs>_pred_lower``/``_pred_upper``) where the covariance is
  available;
* units (``HybridModel(units=...)``, ``Parameter(unit=...)``) label the axes, the ``unit``
  column of ``params.csv``, the summary and the report;
* ``result.json`` + ``result.npz``: the result itself (:func:`dynlearn.load_result`);
* ``model.toml``: a copy of the model file, when one is given;
* ``run.json``: provenance (dynlearn version, time, model and data file, command);
* ``fit.png``, ``residuals.png``, ``loss.png``, ``learned_terms.png`` (hybrid models) and
  ``report.html``, a self-contained report embedding them (needs matplotlib; without it a
  warning is issued and the rest is written).

The figures are drawn by :mod:`dynlearn.report.figures` and the page built by
:class:`dynlearn.report.html.Report`; this module picks the arrays out of the result.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from dynlearn.errors import OptionError
from dynlearn.files import write_text_atomic
from dynlearn.objective.losses import loss_from_config, transformed
from dynlearn.report import figures
from dynlearn.report.html import Report
from dynlearn.report.tables import write_csv
from dynlearn.results.prediction import band_reason, noise_levels
from dynlearn.version import __version__

__all__ = ["write_report"]

#: points of the prediction grid per experiment (the data times are added)
PREDICTION_POINTS = 300


def write_report(result, out_dir, data=None, model_file=None, plots: bool = True, *,
                 data_file=None, command: list[str] | None = None,
                 recovered=None) -> list[Path]:
    """Write a fit's tables, saved result, figures and HTML report into a folder.

    Parameters
    ----------
    result : FitResult
    out_dir : str or path
        The folder; created if missing. Files of the same names are replaced.
    data : Dataset, optional
        The data the result was fitted to. Default: ``result.data``.
    model_file : str or path, optional
        The model file (TOML) the fit came from: copied as ``model.toml``, named in the
        report and in ``run.json``.
    plots : bool
        Draw the figures and write ``report.html``.
    data_file : str or path, optional
        The CSV the data came from, recorded in ``run.json`` (``dynlearn recover`` reads it
        to write a model file for the refit).
    command : list of str, optional
        The command line that ran the fit, recorded in ``run.json``.
    recovered : Recovery or dict, optional
        Equations recovered from the network outputs (``dl.recover(...)``, or a dict
        ``{"nn[0]": expression}``): drawn over the learned terms they replace.

    Returns
    -------
    list of pathlib.Path
        The files written, in the order written.

    Warns
    -----
    UserWarning
        When matplotlib is not installed: no figures and no ``report.html``, everything
        else is written.

    Examples
    --------
    >>> paths = write_report(result, "lynx-fit")                 # doctest: +SKIP
    >>> [p.name for p in paths][:3]                               # doctest: +SKIP
    ['params.csv', 'summary.txt', 'predictions.csv']
    """
    data = result.data if data is None else data
    if data is None:
        raise OptionError("this result has no data attached; pass data=")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = result.model0 if result.model0 is not None else result.model
    written = []

    write_csv(_params_with_units(result.params, model), out / "params.csv", index=True)
    written.append(out / "params.csv")
    summary = result.summary()
    write_text_atomic(out / "summary.txt", summary if summary.endswith("\n") else summary + "\n")
    written.append(out / "summary.txt")
    pred = _prediction_frames(result, data)
    if model.time.name in pred.columns and model.time.name != data.time_name:
        pred = pred.rename(columns={model.time.name: data.time_name})
    write_csv(pred, out / "predictions.csv")
    written.append(out / "predictions.csv")
    _save_result(result, out)
    written += [out / "result.json", out / "result.npz"]
    if model_file is not None:
        write_text_atomic(out / "model.toml", Path(model_file).read_text(encoding="utf-8"))
        written.append(out / "model.toml")
    write_text_atomic(out / "run.json", _run_record(result, model_file, data_file, command))
    written.append(out / "run.json")
    if not plots:
        return written
    rec = getattr(recovered, "expressions", recovered)
    try:
        images = _write_figures(result, model, data, pred, out, rec)
    except ImportError as exc:     # matplotlib missing: everything else is written
        warnings.warn(f"no figures or report: {exc}", stacklevel=2)
        return written
    written += images
    obs = list(model.observable_names)
    no_band = "" if _bands(pred, obs) else (band_reason(result) or "the sensitivities of "
                                            "the prediction could not be computed")
    _write_html(result, model, data, out, images, model_file, no_band=no_band,
                has_pred=bool(_bands(pred, obs, prediction=True)), recovered=bool(rec))
    written.append(out / "report.html")
    return written


# --- tables ---------------------------------------------------------------------------------
def _prediction_frames(result, data, n: int = PREDICTION_POINTS):
    """Model predictions on a fine grid per experiment (plus the data times)."""
    frames = []
    for exp in data.experiments:
        t = np.union1d(np.linspace(exp.start, exp.t[-1], n), exp.t)
        df = result.predict(t, experiment=exp.name)
        if len(data.experiments) > 1:
            df.insert(0, "experiment", exp.name)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _bands(frame, observables, prediction: bool = False) -> dict:
    """Columns of a prediction frame that hold a band per observable, if any: the
    confidence band of the mean, or (``prediction=True``) the prediction band."""
    out = {}
    for o in observables:
        pairs = (((f"{o}_pred_lower", f"{o}_pred_upper"),) if prediction else
                 ((f"{o}_lower", f"{o}_upper"), (f"{o}_lo", f"{o}_hi"),
                  (f"{o}_low", f"{o}_high")))
        for lo, hi in pairs:
            if lo in frame.columns and hi in frame.columns:
                out[o] = (lo, hi)
                break
    return out


def _residual_frame(result, data):
    """Residuals in wide form (time, one column per observable[, experiment]): on each
    observable's scale (its log or log10 where its transform says so), in data units
    otherwise."""
    r = result.residuals()
    if not len(r):
        return None
    tname = data.time_name
    loss = loss_from_config(result.config).bind(result.model.observable_names)
    r["value"] = r["residual"]
    for o, how in loss.transforms.items():
        if how != "lin":
            rows = r["observable"] == o
            r.loc[rows, "value"] = (transformed(r.loc[rows, "data"], how)
                                    - transformed(r.loc[rows, "fitted"], how))
    wide = r.pivot_table(index=["experiment", tname], columns="observable", values="value",
                         sort=False).reset_index()
    wide.columns = [str(c) for c in wide.columns]
    return wide


def _params_with_units(params, model):
    """The parameter table with its ``unit`` column (added for results saved before units
    existed, from the model's labels)."""
    if "unit" in params.columns:
        return params
    out = params.copy()
    out["unit"] = [model.unit(str(n)) for n in out.index]
    return out


def _params_display(params, diagnostics=None, model=None):
    """The parameter table as shown in the report: value, unit, stderr, relative standard
    error, interval, start, and the diagnostics' note (at a bound, not determined, absorbed
    by the network)."""
    if model is not None:
        params = _params_with_units(params, model)
    has_unit = "unit" in params.columns and params["unit"].astype(str).str.len().gt(0).any()
    rows = {}
    for name, r in params.iterrows():
        fixed = bool(r.get("fixed", False))
        lo, hi = r.get("ci_lower", np.nan), r.get("ci_upper", np.nan)
        se, v = r.get("stderr", np.nan), r["value"]
        row = {"value": f"{v:.6g}"}
        if has_unit:
            row["unit"] = str(r.get("unit", "") or "")
        row.update({
            "stderr": "fixed" if fixed else (f"{se:.3g}" if np.isfinite(se) else "n/a"),
            "rel. stderr": (f"{100 * abs(se / v):.3g}%" if not fixed and np.isfinite(se) and v
                            else ""),
            "95% interval": (f"[{lo:.5g}, {hi:.5g}]" if np.isfinite(lo) and np.isfinite(hi)
                             else ""),
            "start": f"{r['initial']:.6g}" if "initial" in r and not fixed else "",
            "kind": str(r.get("kind", "")) + (" (fixed)" if fixed else ""),
        })
        if diagnostics is not None:
            row["note"] = "" if fixed else diagnostics.note(name)
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")


# --- the result and its provenance ------------------------------------------------------------
def _save_result(result, out: Path) -> None:
    """``result.save`` into ``out/result.json`` + ``out/result.npz``: written atomically
    (:func:`dynlearn.files.write_json_npz`), the arrays first, the JSON last, so whoever
    finds ``result.json`` finds a complete result."""
    result.save(out / "result")


def _run_record(result, model_file, data_file, command) -> str:
    """``run.json``: where the model file and the data came from (absolute paths), the
    dynlearn version and the time, for ``dynlearn recover`` and later readers."""
    rec = {"dynlearn": __version__,
           "finished": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
           "model_file": str(Path(model_file).resolve()) if model_file is not None else None,
           "data_file": str(Path(data_file).resolve()) if data_file is not None else None,
           "command": command,
           "success": bool(result.success), "message": result.message}
    return json.dumps(rec, indent=1) + "\n"


# --- figures and the HTML page ------------------------------------------------------------------
def _axis_labels(model, data) -> dict:
    """Axis labels with units: the data's time column and every observable, state and
    input (``"x [V]"``; the bare name without a unit)."""
    names = [*model.observable_names, *[x.name for x in model.states],
             *[u.name for u in model.inputs]]
    names += [f"{net.name}[{k}]" for net in model.networks for k in range(net.n_outputs)]
    labels = {n: model.label(n) for n in names}
    # the model's label, else the unit the data's dates were converted to (time_unit=)
    tu = model.unit(model.time.name) or getattr(data, "time_unit", None) or ""
    labels[data.time_name] = (f"{data.time_name} [{tu}]" if tu and tu != data.time_name
                              else data.time_name)
    labels[model.time.name] = labels[data.time_name]
    return labels


def _write_figures(result, model, data, pred, out: Path, recovered=None) -> list[Path]:
    """fit.png, residuals.png, loss.png and (hybrid models) learned_terms.png."""
    tname = data.time_name
    obs = list(model.observable_names)
    labels = _axis_labels(model, data)
    dframe = data.to_frame()
    exp_col = "experiment" if len(data.experiments) > 1 else None
    images = []
    fig = figures.fit_figure(dframe, pred, obs, tname, bands=_bands(pred, obs),
                             experiment_col=exp_col, labels=labels,
                             pred_bands=_bands(pred, obs, prediction=True))
    figures.save_figure(fig, out / "fit.png")
    images.append(out / "fit.png")
    loss = result.config.get("loss", "ls")
    res = _residual_frame(result, data)
    if res is not None:
        label = _residual_label(result)
        figures.save_figure(figures.residuals_figure(res, obs, tname, exp_col, ylabel=label,
                                                     labels=labels),
                            out / "residuals.png")
        images.append(out / "residuals.png")
    if len(result.history):
        figures.save_figure(figures.loss_figure(np.asarray(result.history, dtype=float),
                                                stages=result.stages, ylabel=f"loss ({loss})",
                                                total=result.nfev + result.njev + result.ngev,
                                                stage_history=result.stage_history),
                            out / "loss.png")
        images.append(out / "loss.png")
    if model.networks:
        e0 = data.experiments[0]
        traj = result.predict(np.linspace(e0.t[0], e0.t[-1], 400), bands=False)
        fig = figures.learned_terms_figure(result.model, result.model.theta0, traj,
                                           recovered=recovered, labels=labels)
        if fig is not None:
            figures.save_figure(fig, out / "learned_terms.png")
            images.append(out / "learned_terms.png")
    return images


def _scale_words(scales: dict) -> str:
    """``"log"``, ``"log10"`` or ``"log and log10"`` for the transforms in ``scales``."""
    return " and ".join(sorted({how for how in scales.values() if how != "lin"}))


def _residual_label(result) -> str:
    """The y label of the residual figure: the residuals' scale."""
    scales = loss_from_config(result.config).bind(result.model.observable_names).transforms
    names = set(scales.values())
    if names == {"lin"}:
        return "residual"
    return f"{names.pop()} residual" if len(names) == 1 else "residual (own scale)"


def _residual_caption(result) -> str:
    """What the residual figure shows: data minus model, on which scale per observable."""
    scales = loss_from_config(result.config).bind(result.model.observable_names).transforms
    logs = {o: how for o, how in scales.items() if how != "lin"}
    if not logs:
        return "Residuals (data minus model)"
    if len(logs) == len(scales) and len(set(logs.values())) == 1:
        return f"Residuals on the {next(iter(logs.values()))} scale"
    on = "; ".join(f"{o} on the {how} scale" for o, how in logs.items())
    return f"Residuals (data minus model; {on})"


def _fit_caption(result, model, no_band: str, has_pred: bool) -> str:
    """What fit.png shows, the two bands told apart, or why there is no band."""
    text = "Data (markers) and the fitted model (line)."
    if no_band:
        return text + f" No uncertainty band is drawn, because {no_band.rstrip('.')}."
    text += (" Dark shading: 95% confidence band of the mean, where the model's curve lies "
             "given the uncertainty of the fitted values (from their covariance; it narrows "
             "as data are added).")
    if has_pred:
        noise = noise_levels(result)
        src = {"estimated": "estimated by the fit", "given": "as given",
               "residual sd": "the residual standard deviation"}
        scales = loss_from_config(result.config).bind(model.observable_names).transforms
        log = all(how != "lin" for how in scales.values())

        def unit(o: str) -> str:
            # a noise level on a log scale has no unit; say which scale where they differ
            if scales.get(o, "lin") != "lin":
                return "" if log else f" on the {scales[o]} scale"
            return f" {model.unit(o)}" if model.unit(o) else ""
        groups = []
        for how in dict.fromkeys(how for _, how in noise.values()):
            vals = ", ".join(f"{o} {s:.3g}{unit(o)}"
                             for o, (s, h) in noise.items() if h == how)
            groups.append(f"{vals} ({src.get(how, how)})")
        text += (" Light shading: 95% prediction band, where a new measurement is expected: "
                 "the band of the mean widened by the noise"
                 + (f" on the {_scale_words(scales)} scale" if log else "")
                 + ", whose standard deviation is "
                 + "; ".join(groups) + ". About 95% of the data should fall inside it; it "
                 "does not narrow below the noise.")
    return text


def _loss_caption(result) -> str:
    total = result.nfev + result.njev + result.ngev
    text = (f"Best loss so far against the evaluations the summary counts (solves + "
            f"Jacobians + gradients: {total} in all), from the first evaluation.")
    if len(result.stages) > 1:
        text += (" Each optimizer stage in its own colour, its start dotted: "
                 + ", ".join(f"{label} from evaluation {e}" for e, label in result.stages)
                 + ".")
    if result.stage_history:
        text += (" Dashed: the stage's own objective where it is not the loss (multiple "
                 "shooting: the segments' misfit plus the continuity penalty, one staircase "
                 "per continuity weight); the solid line is then the loss of the joined "
                 "trajectory, measured after each continuity step.")
    if result.config.get("loss") == "gaussian":
        text += (" The noise levels are re-estimated between rounds, which changes the "
                 "loss's scale.")
    return text


def _learned_caption(model, recovered: bool) -> str:
    two = any(net.n_inputs == 2 for net in model.networks)
    text = ("What each network output learned, over the region of its inputs the fit "
            "visited, with the fitted trajectory")
    if two:
        text += (" (line; its start marked by a dot). Colour: the output's value (colour "
                 "bar); dashed contour: where the output is zero.")
    else:
        text += " (markers: the values along the fit)."
    if recovered:
        text += (" Recovered equation: thin black contour lines at the colour levels of the "
                 "fill (they follow the colour boundaries where the equation and the network "
                 "agree)" if two else " Recovered equation: dashed line")
        text += "."
    return text


def _write_html(result, model, data, out: Path, images, model_file, no_band: str = "",
                has_pred: bool = False, recovered: bool = False) -> None:
    """report.html: status, model, parameters, figures, summary and the folder's files."""
    ok = result.success
    cfg = result.config
    source = f"model file {model_file}; " if model_file is not None else ""
    rep = Report(f"dynlearn fit: {model.name}",
                 subtitle=f"{source}{sum(len(e) for e in data.experiments)} data rows in "
                          f"{len(data.experiments)} experiment(s); fitted in "
                          f"{result.elapsed:.1f} s")
    rep.paragraph(("Fit converged: " if ok else "Fit did not converge: ")
                  + result.message.removeprefix("converged: "),
                  "ok" if ok else "bad")
    rep.heading("Model")
    rep.items(model.equations(), code=True)
    if list(model.observable_names) != [s.name for s in model.states]:
        rep.paragraph("Observables:")
        rep.items([f"{k} = {v}" for k, v in model.observables.items()], code=True)
    names = [model.time.name, *[x.name for x in model.states], *[u.name for u in model.inputs],
             *model.observable_names]
    units = [f"{n} [{model.unit(n)}]" for n in dict.fromkeys(names) if model.unit(n)]
    if units:
        rep.paragraph("Units: " + ", ".join(units) + " (the parameters' are in their table).")
    for net in model.networks:
        rep.paragraph(f"Network {net.name}: inputs {', '.join(map(str, net.inputs))}; "
                      f"{net.n_outputs} outputs; {net.n_weights} weights"
                      + (f"; hidden layers {list(net.hidden)}, {net.activation}"
                         if hasattr(net, "hidden") else ""))
    rep.heading("Parameters")
    diag = getattr(result, "diagnostics", None)
    rep.table(_params_display(result.params, diag, model))
    if diag is not None:
        rep.heading("Diagnostics")
        rep.preformatted("\n".join(ln[2:] for ln in diag.lines()))
        for line in diag.closing_lines():
            text = line.strip()
            if text and text != "warnings:":
                rep.paragraph(text.removeprefix("- "), "bad" if line.startswith("    - ")
                              else None)
    opt = result.optimizer.to_dict() if result.optimizer is not None else {}
    names = list(dict.fromkeys(label.split(": ")[-1] for _, label in result.stages))
    rep.paragraph(f"Loss: {cfg.get('loss')}; optimizer: "
                  f"{' then '.join(names) if names else opt.get('type', 'default')}; "
                  f"solver: {cfg.get('method')} ("
                  + (f"auto: {cfg['method_choice']['reason']}; "
                     if cfg.get("method_choice") else "") +
                  f"rtol={cfg.get('rtol'):g}, "
                  f"atol={cfg.get('atol'):g}); {result.nfev + result.njev + result.ngev} "
                  f"evaluations ({result.nfev} solves, {result.njev} Jacobians, {result.ngev} "
                  f"gradients), {result.nit} iterations; AIC {result.aic:.4g}, "
                  f"BIC {result.bic:.4g}.")
    captions = {"fit": _fit_caption(result, model, no_band, has_pred),
                "residuals": _residual_caption(result)
                             + " against time; grey: plus or minus two standard deviations.",
                "loss": _loss_caption(result),
                "learned_terms": _learned_caption(model, recovered)}
    rep.heading("Figures")
    for p in images:
        rep.image(p, captions.get(p.stem, ""))
    rep.heading("Summary")
    rep.preformatted(result.summary())
    rep.heading("Files")
    rep.items(sorted(p.name for p in out.iterdir() if not p.name.startswith(".")
                     and p.name != "report.html") + ["report.html"], code=True)
    rep.write(out / "report.html")
