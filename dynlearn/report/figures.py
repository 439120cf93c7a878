"""Figures for fits: data against model, residuals, loss history and learned terms.

matplotlib is an optional dependency (the ``plot`` extra) imported only when a figure is
drawn. Every ``plot_*`` function draws into an ``ax`` it is given (or a new one) and returns
it, so figures can be composed; the ``*_figure`` functions build the complete multi-panel
figures that ``dynlearn fit`` writes, as :class:`matplotlib.figure.Figure` objects that need
no GUI backend.

The defaults aim at print: 9-point type, thin spines on two sides, the Okabe-Ito colour
cycle (distinguishable with common colour-vision deficiencies), data as open markers (small
dots from :data:`LONG_RECORD` points on) and the model as a line with two bands told apart:
the confidence band of the mean (darker; where the curve lies) and the prediction band
(lighter; where new measurements fall, noise included). Whole-number axes get whole-number
ticks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import numpy as np

from dynlearn.errors import MissingDependencyError

__all__ = [
    "COLORS", "CONFIDENCE_LABEL", "EVALUATIONS_LABEL", "LONG_RECORD", "MissingDependencyError",
    "PREDICTION_LABEL", "fit_figure", "learned_terms_figure", "loss_figure", "recovered_on_samples",
    "network_output_samples", "plot_learned_term", "plot_loss", "plot_observable",
    "plot_residuals", "residuals_figure", "save_figure", "style",
]

#: Okabe & Ito (2008) colour-blind-safe palette, without black.
COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442")

_RC = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.8,
    "lines.linewidth": 1.5,
    "lines.markersize": 4.5,
    "xtick.major.width": 0.8,
    "ytick.major.width": 0.8,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "figure.dpi": 100,
    "pdf.fonttype": 42,     # editable text in vector output
    "svg.fonttype": "none",
}


def _mpl():
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError(
            "plotting needs matplotlib, which is not installed; install the plot extra: "
            "pip install 'dynlearn[plot]'") from None
    return matplotlib


@contextlib.contextmanager
def style():
    """A context in which matplotlib uses dynlearn's publication defaults."""
    mpl = _mpl()
    from cycler import cycler
    with mpl.rc_context({**_RC, "axes.prop_cycle": cycler(color=COLORS)}):
        yield


def _new_ax(ax):
    if ax is not None:
        return ax
    _mpl()
    import matplotlib.pyplot as plt
    with style():
        _, ax = plt.subplots(figsize=(4.5, 3.0), layout="constrained")
    return ax


def _figure(nrows: int, ncols: int = 1, width: float = 6.0, height: float = 2.2,
            sharex: bool = True):
    """A figure (no pyplot state, no GUI backend needed) and its axes as a flat list."""
    _mpl()
    from matplotlib.figure import Figure
    with style():   # rc settings are read when the figure and axes are created
        fig = Figure(figsize=(width, height * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, sharex=sharex, squeeze=False)
    return fig, list(axes.ravel())


#: records at least this long are drawn as small points: no stems, no open circles
LONG_RECORD = 200

#: what the two bands mean, for legends and captions
CONFIDENCE_LABEL = "95% confidence band (mean)"
PREDICTION_LABEL = "95% prediction band (new data)"


def _integer_ticks(ax, values, axis: str = "x") -> None:
    """Whole-number ticks when the values are whole numbers (years, days, counts): no
    '1902.5' and no '2.5 patients'."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size and np.all(v == np.round(v)):
        from matplotlib.ticker import MaxNLocator
        getattr(ax, f"{axis}axis").set_major_locator(MaxNLocator(integer=True))


def _marker_style(n: int, color=None) -> dict:
    """Data markers: open circles for short records, small filled dots for long ones (a
    thousand open circles merge into a solid band that hides the model line)."""
    if n >= LONG_RECORD:
        return dict(marker="o", ls="none", ms=1.8, mfc=color or "0.15", mec="none",
                    alpha=0.7)
    return dict(marker="o", ls="none", mfc="white", mec=color or "0.15", mew=1.0)


def save_figure(fig, path) -> None:
    """Save ``fig`` to ``path`` atomically (a temporary file in the same folder, renamed).

    The format follows the suffix (``.png``, ``.pdf``, ``.svg``).
    """
    from pathlib import Path

    from dynlearn.files import atomic_write
    path = Path(path)

    def write(fh):
        with style():
            fig.savefig(fh, format=path.suffix.lstrip(".") or "png")
    atomic_write(path, write)


# --- single panels -----------------------------------------------------------------------
def plot_observable(t_data, y_data, t_model=None, y_model=None, lower=None, upper=None,
                    name: str = "", time_name: str = "t", ax=None, color=None,
                    label_data: str = "data", label_model: str = "model",
                    band_label: str = CONFIDENCE_LABEL, pred_lower=None, pred_upper=None,
                    pred_label: str = PREDICTION_LABEL):
    """One observable: data as markers, the model as a line with optional bands.

    Parameters
    ----------
    t_data, y_data : array_like, shape (m,)
        Measurements (NaN = not measured, skipped). From :data:`LONG_RECORD` points on,
        drawn as small dots.
    t_model, y_model : array_like, shape (k,), optional
        The model's prediction on a fine grid.
    lower, upper : array_like, shape (k,), optional
        The confidence band of the mean (where the model's curve lies), drawn darker.
    name : str
        The y label (e.g. ``"x [V]"``).
    time_name : str
        The x label (e.g. ``"t [s]"``).
    ax : matplotlib.axes.Axes, optional
    band_label : str
        The legend entry of ``lower``/``upper``.
    pred_lower, pred_upper : array_like, shape (k,), optional
        The prediction band (where new measurements fall: the band of the mean widened by
        the noise), drawn lighter and wider.
    pred_label : str
        The legend entry of the prediction band.

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _new_ax(ax)
    with style():
        color = color or COLORS[0]
        if t_model is not None and y_model is not None:
            if pred_lower is not None and pred_upper is not None:
                ax.fill_between(t_model, pred_lower, pred_upper, color=color, alpha=0.12,
                                lw=0, label=pred_label)
            if lower is not None and upper is not None:
                ax.fill_between(t_model, lower, upper, color=color, alpha=0.35, lw=0,
                                label=band_label)
            ax.plot(t_model, y_model, color=color, label=label_model, zorder=3)
        if t_data is not None and y_data is not None:
            y = np.asarray(y_data, dtype=float)
            ok = np.isfinite(y)
            ax.plot(np.asarray(t_data)[ok], y[ok], label=label_data, zorder=4,
                    **_marker_style(int(ok.sum())))
            _integer_ticks(ax, t_data)
            if y[ok].size and np.ptp(y[ok]) <= 10:     # a few counts: no 0.5 steps
                _integer_ticks(ax, y[ok], "y")
        ax.set_ylabel(name)
        ax.set_xlabel(time_name)
        ax.margins(x=0.01)
    return ax


def plot_residuals(t, r, name: str = "", time_name: str = "t", ax=None, color=None,
                   ylabel: str | None = None):
    """Residuals against time with a zero line and a +-2 standard deviation guide.

    Short records are drawn as stems; from :data:`LONG_RECORD` points on, as small dots
    (stems of a long record merge into a solid blob).

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _new_ax(ax)
    with style():
        color = color or COLORS[0]
        t = np.asarray(t, dtype=float)
        r = np.asarray(r, dtype=float)
        ok = np.isfinite(r)
        ax.axhline(0.0, color="0.4", lw=0.8, zorder=1)
        if ok.sum() > 1:
            s = float(np.std(r[ok], ddof=1))
            ax.axhspan(-2 * s, 2 * s, color="0.92", zorder=0, lw=0, label=r"$\pm 2\,$sd")
        if ok.sum() >= LONG_RECORD:
            ax.plot(t[ok], r[ok], zorder=3, **_marker_style(int(ok.sum()), color))
        else:
            ax.vlines(t[ok], 0.0, r[ok], color=color, lw=1.0, alpha=0.6, zorder=2)
            ax.plot(t[ok], r[ok], "o", color=color, zorder=3)
        _integer_ticks(ax, t)
        ax.set_ylabel(ylabel if ylabel is not None else f"residual {name}".strip())
        ax.set_xlabel(time_name)
        ax.margins(x=0.01)
    return ax


EVALUATIONS_LABEL = "evaluations (solves + Jacobians + gradients)"


def plot_loss(history, ax=None, stages: Sequence[tuple[int, str]] | None = None,
              ylabel: str = "loss", xlabel: str | None = None, total: int | None = None,
              stage_history=None):
    """Loss against evaluations (or iterations) on a log scale (symlog if it goes negative).

    Parameters
    ----------
    history : array_like, shape (n,) or (n, 2)
        Loss values per iteration, or ``(evaluation, best loss)`` pairs as in
        ``FitResult.history`` (drawn as a staircase: the best loss so far).
    stages : list of (start, label), optional
        Where each optimizer stage began (``FitResult.stages``): the staircase is coloured
        by stage, each stage named in the legend, its start marked by a dotted line.
    xlabel : str, optional
        Default: :data:`EVALUATIONS_LABEL` for pairs, ``"iteration"`` otherwise.
    total : int, optional
        The fit's total evaluations: the staircase is carried on to it (the last
        evaluations did not improve the loss, but they were made).
    stage_history : list of (evaluation, value, stage index), optional
        The own objective of stages that minimise something other than the loss
        (``FitResult.stage_history``: multiple shooting's segment misfit plus continuity
        penalty), drawn dashed in the stage's colour.

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _new_ax(ax)
    stages = sorted(stages or (), key=lambda st: st[0])
    with style():
        h = np.asarray(history, dtype=float)
        if h.ndim == 2 and h.shape[1] == 2:
            x, y = h[:, 0], h[:, 1]
            ok = np.isfinite(y)
            x, y = x[ok], y[ok]
            end = max(float(total), x[-1] if x.size else 0.0) if total is not None else None
            if len(stages) > 1:
                bounds = [float(st[0]) for st in stages] + [np.inf]
                for k, (_, label) in enumerate(stages):
                    sel = (x >= bounds[k]) & (x < bounds[k + 1])
                    xs, ys = list(x[sel]), list(y[sel])
                    before = x < bounds[k]
                    if before.any():      # continue from the best so far (also a stage
                        xs.insert(0, float(bounds[k]))      # that improved nothing)
                        ys.insert(0, float(y[before][-1]))
                    stop = min(bounds[k + 1], end if end is not None else np.inf)
                    if xs and np.isfinite(stop):
                        xs.append(stop)
                        ys.append(ys[-1])
                    c = COLORS[k % len(COLORS)]
                    ax.step(xs, ys, where="post", color=c, lw=1.4, label=label)
                    ax.plot(x[sel], y[sel], "o", color=c, ms=2.5)
                    if k:
                        ax.axvline(bounds[k], color="0.5", lw=0.8, ls=":")
            else:
                xs, ys = list(x), list(y)
                if end is not None and xs:
                    xs.append(end)
                    ys.append(ys[-1])
                label = "best loss" if not stages else f"best loss ({stages[0][1]})"
                ax.step(xs, ys, where="post", color=COLORS[0], lw=1.4, label=label)
                ax.plot(x, y, "o", color=COLORS[0], ms=2.5)
            own = np.asarray(stage_history if stage_history is not None else [],
                              dtype=float).reshape(-1, 3)
            for k in dict.fromkeys(int(i) for i in own[:, 2]):
                sel = own[:, 2] == k
                label = stages[k][1] if k < len(stages) else f"stage {k + 1}"
                ax.step(own[sel, 0], own[sel, 1], where="post", lw=1.0, ls="--",
                        color=COLORS[k % len(COLORS)],
                        label=f"{label}: its own objective")
            if own.size:
                y = np.concatenate([y, own[:, 1][np.isfinite(own[:, 1])]])
            if stages:
                ax.set_xlim(left=min(float(stages[0][0]), *(x[:1] if x.size else ())))
            xlabel = xlabel or EVALUATIONS_LABEL
            from matplotlib.ticker import MaxNLocator
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            x, y = np.arange(h.size), h
            ok = np.isfinite(y)
            ax.plot(x[ok], y[ok], color=COLORS[0], lw=1.2, label="loss")
            if ok.any():
                best = np.minimum.accumulate(np.where(ok, y, np.inf))
                ax.plot(x, best, color=COLORS[1], lw=1.0, ls="--", label="best so far")
            xlabel = xlabel or "iteration"
            y = y[ok]
            for start, label in stages:
                ax.axvline(start, color="0.5", lw=0.8, ls=":")
                ax.annotate(label, (start, 1.0), xycoords=("data", "axes fraction"),
                            xytext=(3, -3), textcoords="offset points", va="top",
                            fontsize=7, color="0.3")
        if y.size:
            if np.all(y > 0):
                ax.set_yscale("log")
                if np.max(y) / np.min(y) < 1e3:
                    # few decades: label 1-2-5 steps in plain numbers, not 3x10^1
                    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
                    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                    ax.yaxis.set_minor_formatter(NullFormatter())
            else:
                ax.set_yscale("symlog", linthresh=max(1e-12, float(np.min(np.abs(y)) or 1)))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(loc="upper right")
    return ax


def plot_learned_term(inputs, output, input_names: Sequence[str], output_name: str,
                      grid=None, ax=None, time=None, color=None, recovered=None,
                      recovered_label: str = "recovered equation", time_name: str = "t"):
    """A network output against its inputs, with the recovered equation when there is one.

    One input: the output as a curve (``grid``) with the points visited by the fit. Two
    inputs: a filled contour of the output over the input box (``grid``), its colour bar
    labelled with the output's name, the fitted trajectory on top, and (when the output
    changes sign) a dashed line where it is zero. More inputs: the output along the
    trajectory, against ``time``.

    Parameters
    ----------
    inputs : array_like, shape (m, n_inputs)
        Network inputs along the fitted trajectory.
    output : array_like, shape (m,)
        The output at those inputs.
    grid : tuple, optional
        One input: ``(x, z)`` arrays; two inputs: ``(X, Y, Z)`` meshes.
    time : array_like, shape (m,), optional
    recovered : array_like, optional
        The recovered equation evaluated where the output is drawn: on ``grid[0]`` (one
        input), on the ``(X, Y)`` meshes (two inputs: drawn as contour lines at the colour
        levels of the filled contour, so the two agree where the lines follow the colour
        boundaries), or along the trajectory (more inputs).
    recovered_label : str
        Its legend entry (e.g. the equation).

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _new_ax(ax)
    with style():
        color = color or COLORS[0]
        v = np.asarray(inputs, dtype=float)
        z = np.asarray(output, dtype=float)
        n_in = v.shape[1] if v.ndim == 2 else 1
        if n_in == 1:
            if grid is not None:
                ax.plot(grid[0], grid[1], color=color, label="network")
                if recovered is not None:
                    ax.plot(grid[0], np.asarray(recovered, dtype=float), color="0.1", lw=1.0,
                            ls="--", label=recovered_label, zorder=4)
            ax.plot(v.ravel(), z, label="along the fit", **_marker_style(z.size, color))
            ax.set_xlabel(input_names[0])
            ax.set_ylabel(output_name)
            ax.legend(loc="best")
        elif n_in == 2 and grid is not None:
            from matplotlib.lines import Line2D
            X, Y, Z = grid
            lo, hi = float(np.nanmin(Z)), float(np.nanmax(Z))
            handles = [Line2D([], [], color="0.1", lw=1.0, label="fitted trajectory")]
            if lo < 0.0 < hi:
                # changes sign: a diverging map centred on zero with the same scale on both
                # sides (a small positive bump stays pale), and the zero contour
                lim = max(-lo, hi)
                cs = ax.contourf(X, Y, Z, levels=15, cmap="RdBu_r", vmin=-lim, vmax=lim)
                ax.contour(X, Y, Z, levels=[0.0], colors="0.2", linewidths=0.8,
                           linestyles="--")
                handles.append(Line2D([], [], color="0.2", lw=0.8, ls="--",
                                      label=f"{output_name.split(' [')[0]} = 0"))
            else:
                cs = ax.contourf(X, Y, Z, levels=15, cmap="viridis")
            cb = ax.figure.colorbar(cs, ax=ax, shrink=0.9)
            cb.set_label(f"network {output_name}")
            if recovered is not None:
                R = np.asarray(recovered, dtype=float)
                if np.isfinite(R).any():
                    ax.contour(X, Y, R, levels=cs.levels[1:-1:2], colors="0.05",
                               linewidths=0.7, linestyles="-", alpha=0.8)
                    handles.append(Line2D([], [], color="0.05", lw=0.7,
                                          label=f"{recovered_label} (contours)"))
            ax.plot(v[:, 0], v[:, 1], color="white", lw=2.2)      # halo for contrast
            ax.plot(v[:, 0], v[:, 1], color="0.1", lw=1.0)
            ax.plot(v[0, 0], v[0, 1], "o", color="0.1", mec="white", ms=5)
            ax.set_xlabel(input_names[0])
            ax.set_ylabel(input_names[1])
            ax.set_title(output_name)
            ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2),
                      ncols=1, fontsize=7)
        else:
            tt = np.arange(z.size) if time is None else np.asarray(time)
            ax.plot(tt, z, color=color, label="network")
            if recovered is not None:
                ax.plot(tt, np.asarray(recovered, dtype=float), color="0.1", lw=1.0,
                        ls="--", label=recovered_label)
                ax.legend(loc="best")
            ax.set_xlabel(time_name if time is not None else "sample")
            ax.set_ylabel(output_name)
    return ax


# --- complete figures ----------------------------------------------------------------------
def fit_figure(data, prediction, observables: Sequence[str], time_name: str = "t",
               bands: Mapping[str, tuple] | None = None, experiment_col: str | None = None,
               title: str | None = None, pred_bands: Mapping[str, tuple] | None = None,
               labels: Mapping[str, str] | None = None):
    """Data against model, one panel per observable (and experiment, when several).

    Parameters
    ----------
    data : pandas.DataFrame
        Measurements: ``time_name``, one column per observable, optionally ``experiment_col``.
    prediction : pandas.DataFrame
        The model on a fine grid, same column names.
    bands : dict observable -> (lower column, upper column), optional
        Columns of ``prediction`` holding the confidence band of the mean.
    pred_bands : dict observable -> (lower column, upper column), optional
        Columns of ``prediction`` holding the prediction band (with the noise).
    labels : dict column -> str, optional
        Axis labels, e.g. with units (``{"t": "t [s]", "x": "x [V]"}``); default: the
        column names.

    Returns
    -------
    matplotlib.figure.Figure
    """
    exps = [None]
    if experiment_col and experiment_col in data.columns:
        exps = list(dict.fromkeys(data[experiment_col]))
    obs = [o for o in observables if o in data.columns or o in prediction.columns]
    fig, axes = _figure(len(obs), len(exps), width=6.0 if len(exps) == 1 else 3.4 * len(exps),
                        height=3.2 if len(obs) == 1 else 2.2, sharex="col")
    with style():
        for j, e in enumerate(exps):
            d = data if e is None else data[data[experiment_col] == e]
            p = prediction if e is None or experiment_col not in prediction.columns \
                else prediction[prediction[experiment_col] == e]
            for i, o in enumerate(obs):
                ax = axes[i * len(exps) + j]
                lo = hi = plo = phi = None
                if bands and o in bands:
                    lo, hi = p[bands[o][0]].to_numpy(), p[bands[o][1]].to_numpy()
                if pred_bands and o in pred_bands:
                    plo, phi = (p[pred_bands[o][0]].to_numpy(),
                                p[pred_bands[o][1]].to_numpy())
                plot_observable(d[time_name] if o in d else None, d.get(o),
                                p[time_name] if o in p else None, p.get(o),
                                lo, hi, name=(labels or {}).get(o, o),
                                time_name=(labels or {}).get(time_name, time_name), ax=ax,
                                color=COLORS[i % len(COLORS)], pred_lower=plo, pred_upper=phi)
                if i < len(obs) - 1:
                    ax.set_xlabel("")
                if i == 0 and e is not None:
                    ax.set_title(str(e))
        small = any(0 < ln.get_markersize() < 2.5 for ln in axes[0].get_lines())
        scale = 2.5 if small else 1.0          # a visible dot for the small markers
        if len(exps) == 1:
            # above the panels in one row: inside, it hides data or bands somewhere
            # (two columns when the bands are named: one row would be wider than the panel)
            n = len(axes[0].get_legend_handles_labels()[0])
            axes[0].legend(loc="lower center", bbox_to_anchor=(0.5, 1.0),
                           ncols=max(n if n <= 2 else 2, 1), markerscale=scale,
                           borderaxespad=0.3, handlelength=1.6)
        else:
            axes[0].legend(loc="best", markerscale=scale)
        if title:
            fig.suptitle(title)
    return fig


def residuals_figure(residuals, observables: Sequence[str], time_name: str = "t",
                     experiment_col: str | None = None, ylabel: str = "residual",
                     labels: Mapping[str, str] | None = None):
    """Residuals per observable, one panel each (experiments in colour when several).

    Parameters
    ----------
    residuals : pandas.DataFrame
        ``time_name``, one column per observable, optionally ``experiment_col``.
    labels : dict column -> str, optional
        Axis labels, e.g. with units (``{"t": "t [s]", "x": "x [V]"}``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    obs = [o for o in observables if o in residuals.columns]
    fig, axes = _figure(max(len(obs), 1), 1, width=6.0, height=2.6 if len(obs) == 1 else 1.8)
    labels = labels or {}
    xlabel = labels.get(time_name, time_name)
    groups = [(None, residuals)]
    if experiment_col and experiment_col in residuals.columns:
        groups = list(residuals.groupby(experiment_col, sort=False))
    with style():
        for i, o in enumerate(obs):
            ax = axes[i]
            if len(groups) == 1:
                plot_residuals(residuals[time_name], residuals[o], o, xlabel, ax=ax,
                               color=COLORS[i % len(COLORS)],
                               ylabel=f"{ylabel}\n{labels.get(o, o)}")
            else:
                # several experiments: one colour each, a shared +-2 sd band, no stems
                r = residuals[o].to_numpy(dtype=float)
                ok = np.isfinite(r)
                ax.axhline(0.0, color="0.4", lw=0.8, zorder=1)
                if ok.sum() > 1:
                    sd = float(np.std(r[ok], ddof=1))
                    ax.axhspan(-2 * sd, 2 * sd, color="0.92", zorder=0, lw=0)
                for k, (e, g) in enumerate(groups):
                    c = COLORS[k % len(COLORS)]
                    ax.plot(g[time_name], g[o], label=str(e), zorder=3,
                            **(_marker_style(len(g), c) if len(g) >= LONG_RECORD
                               else {"marker": "o", "ls": "none", "color": c}))
                _integer_ticks(ax, residuals[time_name])
                ax.set_ylabel(f"{ylabel}\n{labels.get(o, o)}")
                ax.set_xlabel(xlabel)
                if i == 0:
                    ax.legend(loc="upper right", ncols=min(len(groups), 4))
            if i < len(obs) - 1:
                ax.set_xlabel("")
    return fig


def loss_figure(history, stages=None, ylabel: str = "loss", total: int | None = None,
                stage_history=None):
    """The loss history as a complete figure (see :func:`plot_loss`)."""
    fig, axes = _figure(1, 1, width=5.0, height=3.0)
    plot_loss(history, ax=axes[0], stages=stages, ylabel=ylabel, total=total,
              stage_history=stage_history)
    return fig


def network_output_samples(model, theta, net, k: int, trajectory, grid_points: int = 60):
    """Inputs and output ``k`` of a network along a trajectory, and a grid over the visited
    region (what :func:`plot_learned_term` draws).

    Parameters
    ----------
    model : HybridModel
        The model holding ``net``.
    theta : array_like, shape (n_theta,)
        Parameters and network weights at which to evaluate.
    net : Network
        One of ``model.networks``.
    k : int
        The output of ``net``.
    trajectory : pandas.DataFrame
        The time column and one column per state (and input), e.g.
        ``simulate(...).to_frame()``.
    grid_points : int
        Grid resolution per input for two-input networks.

    Returns
    -------
    V : ndarray, shape (m, n_inputs)
        The network inputs along the trajectory.
    Z : ndarray, shape (m,)
        Output ``k`` at those inputs.
    grid : tuple or None
        One input: ``(x, z)`` for a curve; two inputs: ``(X, Y, Z)`` meshes over the
        visited box (padded 10%); more inputs: None.
    """
    import sympy as sp
    p, ws = model.split_theta(np.asarray(theta, dtype=float))
    w = ws[list(model.networks).index(net)]
    syms = [model.time, *model.states, *model.param_symbols, *model.inputs]
    tname = model.time.name
    tt = trajectory[tname].to_numpy(float)
    m = tt.size
    args = [tt, *[trajectory[s.name].to_numpy(float) for s in model.states], *p,
            *[trajectory[u.name].to_numpy(float) for u in model.inputs]]
    V = np.column_stack([np.broadcast_to(np.asarray(sp.lambdify(syms, e, modules="numpy")(*args),
                                                    dtype=float), (m,))
                         for e in net.inputs])
    Z = net.forward(w, V)[:, k]
    grid = None
    if net.n_inputs == 1:
        x = np.linspace(V[:, 0].min(), V[:, 0].max(), 200)
        grid = (x, net.forward(w, x[:, None])[:, k])
    elif net.n_inputs == 2:
        lo, hi = V.min(axis=0), V.max(axis=0)
        pad = 0.1 * np.where(hi > lo, hi - lo, 1.0)
        X, Y = np.meshgrid(np.linspace(lo[0] - pad[0], hi[0] + pad[0], grid_points),
                           np.linspace(lo[1] - pad[1], hi[1] + pad[1], grid_points))
        grid = (X, Y, net.forward(w, np.stack([X, Y], axis=-1))[..., k])
    return V, Z, grid


def recovered_on_samples(model, theta, net, expr, V, grid, trajectory):
    """A recovered expression evaluated where :func:`plot_learned_term` draws the network.

    Parameters
    ----------
    model : HybridModel
    theta : array_like
        Parameters and weights (the parameters' values are substituted into ``expr``).
    net : Network
        The network whose output ``expr`` replaces.
    expr : sympy.Expr or str
        The recovered equation, in the model's symbols (e.g. ``rec.expressions["nn[0]"]``).
    V, grid, trajectory
        As returned by / given to :func:`network_output_samples`.

    Returns
    -------
    ndarray or None
        On the grid (one or two inputs whose inputs are plain symbols) or along the
        trajectory (more inputs); ``None`` when ``expr`` uses a symbol that cannot be
        evaluated there (the grid spans the inputs only).
    """
    import sympy as sp
    e = sp.sympify(expr) if isinstance(expr, str) else expr
    p, _ = model.split_theta(np.asarray(theta, dtype=float))
    values = {s.name: float(v) for s, v in zip(model.param_symbols, p)}
    e = e.subs({sym: values[sym.name] for sym in e.free_symbols if sym.name in values})
    free = sorted(e.free_symbols, key=lambda sym: sym.name)
    names = [sym.name for sym in free]
    n = V.shape[0]
    if grid is not None and net.n_inputs <= 2 and all(isinstance(u, sp.Symbol)
                                                      for u in net.inputs):
        inputs = [u.name for u in net.inputs]
        if set(names) <= set(inputs):
            f = sp.lambdify(free, e, modules="numpy")
            axes = [grid[0]] if net.n_inputs == 1 else [grid[0], grid[1]]
            args = [axes[inputs.index(nm)] for nm in names]
            shape = np.shape(axes[0])
            return np.broadcast_to(np.asarray(f(*args), dtype=float), shape).copy()
        return None
    if grid is None and all(nm in trajectory.columns for nm in names):
        f = sp.lambdify(free, e, modules="numpy")
        args = [trajectory[nm].to_numpy(float) for nm in names]
        return np.broadcast_to(np.asarray(f(*args), dtype=float), (n,)).copy()
    return None


def learned_terms_figure(model, theta, trajectory, grid_points: int = 60,
                         recovered: Mapping | None = None, labels: Mapping[str, str] | None = None):
    """Every network output of a hybrid model against its inputs.

    Parameters
    ----------
    model : HybridModel
    theta : array_like, shape (n_theta,)
        Fitted parameters and weights.
    trajectory : pandas.DataFrame
        The fitted trajectory: the time column and one column per state (and input), e.g.
        ``simulate(...).to_frame()``.
    grid_points : int
        Grid resolution per input for the contour of two-input networks.
    recovered : dict output name -> sympy.Expr, optional
        Recovered equations (e.g. ``rec.expressions``: ``{"nn[0]": -0.9*x*y}``), drawn over
        the network outputs they replace (see :func:`plot_learned_term`).
    labels : dict name -> str, optional
        Axis labels for the inputs (e.g. with units).

    Returns
    -------
    matplotlib.figure.Figure or None
        ``None`` for a model without networks.
    """
    if not model.networks:
        return None
    recovered = dict(recovered or {})
    labels = labels or {}
    panels = [(net, k) for net in model.networks for k in range(net.n_outputs)]
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    two = any(net.n_inputs == 2 for net in model.networks)
    fig, axes = _figure(nrows, ncols, width=3.3 * ncols, height=3.5 if two else 2.9,
                        sharex=False)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    tt = trajectory[model.time.name].to_numpy(float)
    for i, (net, k) in enumerate(panels):
        V, Z, grid = network_output_samples(model, theta, net, k, trajectory,
                                             grid_points)
        name = f"{net.name}[{k}]"
        rec = None
        if name in recovered:
            rec = recovered_on_samples(model, theta, net, recovered[name], V, grid, trajectory)
        plot_learned_term(V, Z, [labels.get(str(e), str(e)) for e in net.inputs],
                          labels.get(name, name),
                          grid=grid, ax=axes[i], time=tt, color=COLORS[i % len(COLORS)],
                          recovered=rec,
                          time_name=labels.get(model.time.name, model.time.name))
    return fig
