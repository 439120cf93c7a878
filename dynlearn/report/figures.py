"""Figures for fits: data against model, residuals, loss history and learned terms.

matplotlib is an optional dependency (the ``plot`` extra) imported only when a figure is
drawn. Every ``plot_*`` function draws into an ``ax`` it is given (or a new one) and returns
it, so figures can be composed; the ``*_figure`` functions build the complete multi-panel
figures that ``dynlearn fit`` writes, as :class:`matplotlib.figure.Figure` objects that need
no GUI backend.

The defaults aim at print: 9-point type, thin spines on two sides, the Okabe-Ito colour
cycle (distinguishable with common colour-vision deficiencies), data as open markers and
the model as a line with its band.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import numpy as np

from dynlearn.errors import MissingDependencyError

__all__ = [
    "COLORS", "MissingDependencyError", "fit_figure", "learned_terms_figure", "loss_figure",
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


def _integer_ticks(ax, t) -> None:
    """Whole-number ticks when times are whole numbers (years, days): no '1902.5'."""
    t = np.asarray(t, dtype=float)
    t = t[np.isfinite(t)]
    if t.size and np.all(t == np.round(t)):
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


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
                    band_label: str = "95% band"):
    """One observable: data as markers, the model as a line with an optional band.

    Parameters
    ----------
    t_data, y_data : array_like, shape (m,)
        Measurements (NaN = not measured, skipped).
    t_model, y_model : array_like, shape (k,), optional
        The model's prediction on a fine grid.
    lower, upper : array_like, shape (k,), optional
        A band around the prediction (confidence or prediction interval).
    name : str
        The observable, used as y label.
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _new_ax(ax)
    with style():
        color = color or COLORS[0]
        if t_model is not None and y_model is not None:
            if lower is not None and upper is not None:
                ax.fill_between(t_model, lower, upper, color=color, alpha=0.2, lw=0,
                                label=band_label)
            ax.plot(t_model, y_model, color=color, label=label_model, zorder=3)
        if t_data is not None and y_data is not None:
            y = np.asarray(y_data, dtype=float)
            ok = np.isfinite(y)
            ax.plot(np.asarray(t_data)[ok], y[ok], "o", mfc="white", mec="0.15", mew=1.0,
                    label=label_data, zorder=4)
            _integer_ticks(ax, t_data)
        ax.set_ylabel(name)
        ax.set_xlabel(time_name)
        ax.margins(x=0.01)
    return ax


def plot_residuals(t, r, name: str = "", time_name: str = "t", ax=None, color=None,
                   ylabel: str | None = None):
    """Residuals against time with a zero line and a +-2 standard deviation guide.

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
        ax.vlines(t[ok], 0.0, r[ok], color=color, lw=1.0, alpha=0.6, zorder=2)
        ax.plot(t[ok], r[ok], "o", color=color, zorder=3)
        _integer_ticks(ax, t)
        ax.set_ylabel(ylabel if ylabel is not None else f"residual {name}".strip())
        ax.set_xlabel(time_name)
        ax.margins(x=0.01)
    return ax


def plot_loss(history, ax=None, stages: Sequence[tuple[int, str]] | None = None,
              ylabel: str = "loss", xlabel: str | None = None):
    """Loss against iteration (or evaluation) on a log scale (symlog if it goes negative).

    Parameters
    ----------
    history : array_like, shape (n,) or (n, 2)
        Loss values per iteration, or ``(evaluation, best loss)`` pairs as in
        ``FitResult.history`` (drawn as a staircase: the best loss so far).
    stages : list of (start, label), optional
        Stage boundaries (e.g. Adam then L-BFGS) drawn as vertical lines.

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _new_ax(ax)
    with style():
        h = np.asarray(history, dtype=float)
        if h.ndim == 2 and h.shape[1] == 2:
            x, y = h[:, 0], h[:, 1]
            ok = np.isfinite(y)
            ax.step(x[ok], y[ok], where="post", color=COLORS[0], lw=1.4, label="best loss")
            ax.plot(x[ok], y[ok], "o", color=COLORS[0], ms=2.5)
            xlabel = xlabel or "loss evaluations"
        else:
            x, y = np.arange(h.size), h
            ok = np.isfinite(y)
            ax.plot(x[ok], y[ok], color=COLORS[0], lw=1.2, label="loss")
            if ok.any():
                best = np.minimum.accumulate(np.where(ok, y, np.inf))
                ax.plot(x, best, color=COLORS[1], lw=1.0, ls="--", label="best so far")
            xlabel = xlabel or "iteration"
        if ok.any():
            if np.all(y[ok] > 0):
                ax.set_yscale("log")
                if np.max(y[ok]) / np.min(y[ok]) < 1e3:
                    # few decades: label 1-2-5 steps in plain numbers, not 3x10^1
                    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
                    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                    ax.yaxis.set_minor_formatter(NullFormatter())
            else:
                ax.set_yscale("symlog", linthresh=max(1e-12, float(np.min(np.abs(y[ok])) or 1)))
        for start, label in stages or ():
            ax.axvline(start, color="0.5", lw=0.8, ls=":")
            ax.annotate(label, (start, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -3), textcoords="offset points", va="top", fontsize=7,
                        color="0.3")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(loc="upper right")
    return ax


def plot_learned_term(inputs, output, input_names: Sequence[str], output_name: str,
                      grid=None, ax=None, time=None, color=None):
    """A network output against its inputs.

    One input: the output as a curve (``grid``) with the points visited by the fit.
    Two inputs: a filled contour of the output over the input box (``grid``) with the fitted
    trajectory on top. More inputs: the output along the trajectory, against ``time``.

    Parameters
    ----------
    inputs : array_like, shape (m, n_inputs)
        Network inputs along the fitted trajectory.
    output : array_like, shape (m,)
        The output at those inputs.
    grid : tuple, optional
        One input: ``(x, z)`` arrays; two inputs: ``(X, Y, Z)`` meshes.
    time : array_like, shape (m,), optional

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
            ax.plot(v.ravel(), z, "o", mfc="white", mec=color, label="along the fit")
            ax.set_xlabel(input_names[0])
            ax.set_ylabel(output_name)
        elif n_in == 2 and grid is not None:
            X, Y, Z = grid
            lo, hi = float(np.nanmin(Z)), float(np.nanmax(Z))
            if lo < 0.0 < hi:
                # changes sign: a diverging map centred on zero with the same scale on both
                # sides (a small positive bump stays pale), and the zero contour
                lim = max(-lo, hi)
                cs = ax.contourf(X, Y, Z, levels=15, cmap="RdBu_r", vmin=-lim, vmax=lim)
                ax.contour(X, Y, Z, levels=[0.0], colors="0.2", linewidths=0.8,
                           linestyles="--")
            else:
                cs = ax.contourf(X, Y, Z, levels=15, cmap="viridis")
            ax.figure.colorbar(cs, ax=ax, shrink=0.9)
            ax.plot(v[:, 0], v[:, 1], color="white", lw=2.2)      # halo for contrast
            ax.plot(v[:, 0], v[:, 1], color="0.1", lw=1.0, label="fitted trajectory")
            ax.plot(v[0, 0], v[0, 1], "o", color="0.1", mec="white", ms=5)
            ax.set_xlabel(input_names[0])
            ax.set_ylabel(input_names[1])
            ax.set_title(output_name)
        else:
            tt = np.arange(z.size) if time is None else np.asarray(time)
            ax.plot(tt, z, color=color)
            ax.set_xlabel("t" if time is not None else "sample")
            ax.set_ylabel(output_name)
    return ax


# --- complete figures ----------------------------------------------------------------------
def fit_figure(data, prediction, observables: Sequence[str], time_name: str = "t",
               bands: Mapping[str, tuple] | None = None, experiment_col: str | None = None,
               title: str | None = None):
    """Data against model, one panel per observable (and experiment, when several).

    Parameters
    ----------
    data : pandas.DataFrame
        Measurements: ``time_name``, one column per observable, optionally ``experiment_col``.
    prediction : pandas.DataFrame
        The model on a fine grid, same column names.
    bands : dict observable -> (lower column, upper column), optional
        Columns of ``prediction`` holding a band.

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
                lo = hi = None
                if bands and o in bands:
                    lo, hi = p[bands[o][0]].to_numpy(), p[bands[o][1]].to_numpy()
                plot_observable(d[time_name] if o in d else None, d.get(o),
                                p[time_name] if o in p else None, p.get(o),
                                lo, hi, name=o, time_name=time_name, ax=ax,
                                color=COLORS[i % len(COLORS)])
                if i < len(obs) - 1:
                    ax.set_xlabel("")
                if i == 0 and e is not None:
                    ax.set_title(str(e))
        axes[0].legend(loc="best")
        if title:
            fig.suptitle(title)
    return fig


def residuals_figure(residuals, observables: Sequence[str], time_name: str = "t",
                     experiment_col: str | None = None, ylabel: str = "residual"):
    """Residuals per observable, one panel each (experiments in colour when several).

    Parameters
    ----------
    residuals : pandas.DataFrame
        ``time_name``, one column per observable, optionally ``experiment_col``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    obs = [o for o in observables if o in residuals.columns]
    fig, axes = _figure(max(len(obs), 1), 1, width=6.0, height=2.6 if len(obs) == 1 else 1.8)
    groups = [(None, residuals)]
    if experiment_col and experiment_col in residuals.columns:
        groups = list(residuals.groupby(experiment_col, sort=False))
    with style():
        for i, o in enumerate(obs):
            ax = axes[i]
            if len(groups) == 1:
                plot_residuals(residuals[time_name], residuals[o], o, time_name, ax=ax,
                               color=COLORS[i % len(COLORS)], ylabel=f"{ylabel}\n{o}")
            else:
                # several experiments: one colour each, a shared +-2 sd band, no stems
                r = residuals[o].to_numpy(dtype=float)
                ok = np.isfinite(r)
                ax.axhline(0.0, color="0.4", lw=0.8, zorder=1)
                if ok.sum() > 1:
                    sd = float(np.std(r[ok], ddof=1))
                    ax.axhspan(-2 * sd, 2 * sd, color="0.92", zorder=0, lw=0)
                for k, (e, g) in enumerate(groups):
                    ax.plot(g[time_name], g[o], "o", color=COLORS[k % len(COLORS)],
                            label=str(e), zorder=3)
                _integer_ticks(ax, residuals[time_name])
                ax.set_ylabel(f"{ylabel}\n{o}")
                ax.set_xlabel(time_name)
                if i == 0:
                    ax.legend(loc="upper right", ncols=min(len(groups), 4))
            if i < len(obs) - 1:
                ax.set_xlabel("")
    return fig


def loss_figure(history, stages=None, ylabel: str = "loss"):
    """The loss history as a complete figure (see :func:`plot_loss`)."""
    fig, axes = _figure(1, 1, width=5.0, height=3.0)
    plot_loss(history, ax=axes[0], stages=stages, ylabel=ylabel)
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


def learned_terms_figure(model, theta, trajectory, grid_points: int = 60):
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

    Returns
    -------
    matplotlib.figure.Figure or None
        ``None`` for a model without networks.
    """
    if not model.networks:
        return None
    panels = [(net, k) for net in model.networks for k in range(net.n_outputs)]
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = _figure(nrows, ncols, width=3.3 * ncols, height=2.9, sharex=False)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    tt = trajectory[model.time.name].to_numpy(float)
    for i, (net, k) in enumerate(panels):
        V, Z, grid = network_output_samples(model, theta, net, k, trajectory,
                                             grid_points)
        plot_learned_term(V, Z, [str(e) for e in net.inputs], f"{net.name}[{k}]", grid=grid,
                          ax=axes[i], time=tt, color=COLORS[i % len(COLORS)])
    return fig
