"""A fit result as a folder of files: tables, the saved result, figures and an HTML report.

:func:`write_report` (also ``result.report(out_dir)``) writes what ``dynlearn fit`` leaves
in its output folder, each file atomically (a temporary file renamed, so a folder never
holds a half-written file):

* ``params.csv``: the parameter table; ``summary.txt``: ``result.summary()``;
* ``predictions.csv``: the fitted model on a fine grid per experiment, with confidence
  bands where the covariance is available;
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
from dynlearn.objective.losses import loss_from_name
from dynlearn.report import figures
from dynlearn.report.html import Report
from dynlearn.report.tables import write_csv
from dynlearn.version import __version__

__all__ = ["write_report"]

#: points of the prediction grid per experiment (the data times are added)
PREDICTION_POINTS = 300


def write_report(result, out_dir, data=None, model_file=None, plots: bool = True, *,
                 data_file=None, command: list[str] | None = None) -> list[Path]:
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

    write_csv(result.params, out / "params.csv", index=True)
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
    try:
        images = _write_figures(result, model, data, pred, out)
    except ImportError as exc:     # matplotlib missing: everything else is written
        warnings.warn(f"no figures or report: {exc}", stacklevel=2)
        return written
    written += images
    _write_html(result, model, data, out, images, model_file,
                has_bands=bool(_bands(pred, list(model.observable_names))))
    written.append(out / "report.html")
    return written


# --- tables ---------------------------------------------------------------------------------
def _prediction_frames(result, data, n: int = PREDICTION_POINTS):
    """Model predictions on a fine grid per experiment (plus the data times)."""
    frames = []
    for exp in data.experiments:
        t = np.union1d(np.linspace(exp.t[0], exp.t[-1], n), exp.t)
        df = result.predict(t, experiment=exp.name)
        if len(data.experiments) > 1:
            df.insert(0, "experiment", exp.name)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _bands(prediction, observables) -> dict:
    """Columns of a prediction frame that hold a band per observable, if any."""
    out = {}
    for o in observables:
        for lo, hi in ((f"{o}_lower", f"{o}_upper"), (f"{o}_lo", f"{o}_hi"),
                       (f"{o}_low", f"{o}_high")):
            if lo in prediction.columns and hi in prediction.columns:
                out[o] = (lo, hi)
                break
    return out


def _residual_frame(result, data, loss: str):
    """Residuals in wide form (time, one column per observable[, experiment]): on the log
    scale for ``loss="log"``, in data units otherwise."""
    r = result.residuals()
    if not len(r):
        return None
    tname = data.time_name
    if loss_from_name(loss).transform == "log":
        with np.errstate(divide="ignore", invalid="ignore"):
            r["value"] = np.log(r["data"]) - np.log(r["fitted"])
    else:
        r["value"] = r["residual"]
    wide = r.pivot_table(index=["experiment", tname], columns="observable", values="value",
                         sort=False).reset_index()
    wide.columns = [str(c) for c in wide.columns]
    return wide


def _params_display(params, diagnostics=None):
    """The parameter table as shown in the report: value, stderr, interval, start, and the
    diagnostics' note (at a bound, not determined, absorbed by the network)."""
    rows = {}
    for name, r in params.iterrows():
        fixed = bool(r.get("fixed", False))
        lo, hi = r.get("ci_lower", np.nan), r.get("ci_upper", np.nan)
        rows[name] = {
            "value": f"{r['value']:.6g}",
            "stderr": "fixed" if fixed else (f"{r['stderr']:.3g}"
                                             if np.isfinite(r.get("stderr", np.nan)) else "n/a"),
            "95% interval": (f"[{lo:.5g}, {hi:.5g}]" if np.isfinite(lo) and np.isfinite(hi)
                             else ""),
            "start": f"{r['initial']:.6g}" if "initial" in r else "",
            "kind": str(r.get("kind", "")) + (" (fixed)" if fixed else ""),
        }
        if diagnostics is not None:
            rows[name]["note"] = "" if fixed else diagnostics.note(name)
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
def _write_figures(result, model, data, pred, out: Path) -> list[Path]:
    """fit.png, residuals.png, loss.png and (hybrid models) learned_terms.png."""
    tname = data.time_name
    obs = list(model.observable_names)
    dframe = data.to_frame()
    exp_col = "experiment" if len(data.experiments) > 1 else None
    images = []
    fig = figures.fit_figure(dframe, pred, obs, tname, bands=_bands(pred, obs),
                             experiment_col=exp_col)
    figures.save_figure(fig, out / "fit.png")
    images.append(out / "fit.png")
    loss = result.config.get("loss", "ls")
    res = _residual_frame(result, data, loss)
    if res is not None:
        label = "log residual" if loss_from_name(loss).transform == "log" else "residual"
        figures.save_figure(figures.residuals_figure(res, obs, tname, exp_col, ylabel=label),
                            out / "residuals.png")
        images.append(out / "residuals.png")
    if len(result.history):
        figures.save_figure(figures.loss_figure(np.asarray(result.history, dtype=float),
                                                ylabel=f"loss ({loss})"), out / "loss.png")
        images.append(out / "loss.png")
    if model.networks:
        e0 = data.experiments[0]
        traj = result.predict(np.linspace(e0.t[0], e0.t[-1], 400), bands=False)
        fig = figures.learned_terms_figure(result.model, result.model.theta0, traj)
        if fig is not None:
            figures.save_figure(fig, out / "learned_terms.png")
            images.append(out / "learned_terms.png")
    return images


_CAPTIONS = {
    "loss": "Best loss so far against the number of loss evaluations.",
    "learned_terms": "What each network output learned, over the region of its inputs the "
                     "fit visited, with the fitted trajectory.",
}


def _write_html(result, model, data, out: Path, images, model_file,
                has_bands: bool = True) -> None:
    """report.html: status, model, parameters, figures, summary and the folder's files."""
    ok = result.success
    cfg = result.config
    source = f"model file {model_file}; " if model_file is not None else ""
    rep = Report(f"dynlearn fit: {model.name}",
                 subtitle=f"{source}{sum(len(e) for e in data.experiments)} data rows in "
                          f"{len(data.experiments)} experiment(s); fitted in "
                          f"{result.elapsed:.1f} s")
    rep.paragraph(("Fit converged: " if ok else "Fit did not converge: ") + result.message,
                  "ok" if ok else "bad")
    rep.heading("Model")
    rep.items(model.equations(), code=True)
    if list(model.observable_names) != [s.name for s in model.states]:
        rep.paragraph("Observables:")
        rep.items([f"{k} = {v}" for k, v in model.observables.items()], code=True)
    for net in model.networks:
        rep.paragraph(f"Network {net.name}: inputs {', '.join(map(str, net.inputs))}; "
                      f"{net.n_outputs} outputs; {net.n_weights} weights"
                      + (f"; hidden layers {list(net.hidden)}, {net.activation}"
                         if hasattr(net, "hidden") else ""))
    rep.heading("Parameters")
    diag = getattr(result, "diagnostics", None)
    rep.table(_params_display(result.params, diag))
    if diag is not None:
        rep.heading("Diagnostics")
        rep.preformatted("\n".join(ln[2:] for ln in diag.lines()))
        for line in diag.closing_lines():
            text = line.strip()
            if text and text != "warnings:":
                rep.paragraph(text.removeprefix("- "), "bad" if line.startswith("    - ")
                              else None)
    opt = result.optimizer.to_dict() if result.optimizer is not None else {}
    rep.paragraph(f"Loss: {cfg.get('loss')}; optimizer: {opt.get('type', 'default')}; "
                  f"solver: {cfg.get('method')} (rtol={cfg.get('rtol'):g}, "
                  f"atol={cfg.get('atol'):g}); {result.nfev} solves, {result.nit} iterations; "
                  f"AIC {result.aic:.4g}, BIC {result.bic:.4g}.")
    captions = {"fit": "Data (circles) and the fitted model (line)"
                       + ("; shaded: pointwise 95% confidence band of the prediction from the "
                          "parameter covariance." if has_bands else
                          " (no confidence band: the parameter covariance is not available, "
                          "e.g. more parameters than data)."),
                "residuals": ("Residuals on the log scale"
                              if loss_from_name(cfg.get("loss", "ls")).transform == "log" else
                              "Residuals (data minus model)")
                             + " against time; grey: plus or minus two standard deviations.",
                **_CAPTIONS}
    rep.heading("Figures")
    for p in images:
        rep.image(p, captions.get(p.stem, ""))
    rep.heading("Summary")
    rep.preformatted(result.summary())
    rep.heading("Files")
    rep.items(sorted(p.name for p in out.iterdir() if not p.name.startswith(".")
                     and p.name != "report.html") + ["report.html"], code=True)
    rep.write(out / "report.html")
