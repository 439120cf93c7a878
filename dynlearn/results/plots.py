"""One panel of a fit result: what ``result.plot(...)`` draws.

The drawing itself is done by the array-level primitives of :mod:`dynlearn.report.figures`;
this module only picks the arrays out of a :class:`~dynlearn.results.result.FitResult`
(predictions with their bands, residuals, the loss history, network outputs). matplotlib is
imported only when a panel is drawn.
"""

from __future__ import annotations

import textwrap

import numpy as np

from dynlearn.errors import OptionError
from dynlearn.objective.losses import loss_from_config, transformed
from dynlearn.report.figures import (
    network_output_samples,
    plot_learned_term,
    plot_loss,
    plot_observable,
    plot_residuals,
    recovered_on_samples,
)
from dynlearn.results.prediction import band_reason

__all__ = ["plot_result"]


def plot_result(result, kind: str = "fit", observable: str | None = None,
                experiment: str | None = None, output: str | None = None, ax=None,
                n: int = 300, recovered=None):
    """One panel of a fitted result, drawn into ``ax`` (what ``result.plot(...)`` shows).

    Parameters
    ----------
    result : FitResult
    kind : {"fit", "residuals", "loss", "learned"}
        ``"fit"``: data and prediction with its band for one observable; ``"residuals"``:
        residuals of one observable (on its transform's scale: log or log10); ``"loss"``: the loss
        history; ``"learned"``: one network output against its inputs.
    observable : str, optional
        Default: the first observable.
    experiment : str, optional
        Default: the first experiment.
    output : str, optional
        For ``kind="learned"``: the network output, e.g. ``"nn[1]"`` (default: the first).
    ax : matplotlib.axes.Axes, optional
        Default: new axes.
    n : int
        Points of the prediction grid.
    recovered : Recovery or dict, optional
        For ``kind="learned"``: the recovered equations (``dl.recover(...)`` or
        ``{"nn[0]": expression}``), drawn over the network output they replace.

    Notes
    -----
    ``"fit"`` draws the 95% confidence band of the mean (darker) and the 95% prediction
    band, which adds the noise (lighter); when no band can be computed the reason is
    written in the panel. Axes carry the model's units (``HybridModel(units=...)``).

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    OptionError
        An unknown ``kind``, observable or network output, or ``kind="learned"`` for a
        model without networks.

    Examples
    --------
    >>> ax = plot_result(result, "fit", observable="lynx")          # doctest: +SKIP
    """
    model = result.model
    obs = observable or model.observable_names[0]
    if obs not in model.observable_names:
        raise OptionError(f"observable {obs!r} is not one of {list(model.observable_names)}")
    data = result.data
    exp = data[experiment] if experiment is not None else data.experiments[0]
    tname = data.time_name
    tu = model.unit(model.time.name) or getattr(data, "time_unit", None) or ""
    xlabel = f"{tname} [{tu}]" if tu and tu != tname else tname
    if kind == "fit":
        t = np.union1d(np.linspace(exp.start, exp.t[-1], n), exp.t)
        pred = result.predict(t, experiment=exp.name)

        def col(name):
            c = pred.get(name)
            return None if c is None else c.to_numpy()
        ax = plot_observable(exp.t, exp.columns.get(obs), t, pred[obs].to_numpy(),
                             col(f"{obs}_lower"), col(f"{obs}_upper"), name=model.label(obs),
                             time_name=xlabel, ax=ax, pred_lower=col(f"{obs}_pred_lower"),
                             pred_upper=col(f"{obs}_pred_upper"))
        if f"{obs}_lower" not in pred.columns:
            why = band_reason(result) or "the sensitivities could not be computed"
            ax.text(0.01, 0.01, textwrap.fill(f"no uncertainty band: {why}", 90),
                    transform=ax.transAxes, fontsize=6.5, color="0.35", va="bottom")
        ax.legend(loc="best")
        return ax
    if kind == "residuals":
        r = result.residuals()
        r = r[(r["observable"] == obs) & (r["experiment"] == exp.name)]
        how = loss_from_config(result.config).transform_of(obs)
        if how != "lin":
            vals = (transformed(r["data"].to_numpy(), how)
                    - transformed(r["fitted"].to_numpy(), how))
            label = f"{how} residual {obs}"
        else:
            vals, label = r["residual"].to_numpy(), f"residual {model.label(obs)}"
        return plot_residuals(r[tname].to_numpy(), vals, obs, xlabel, ax=ax, ylabel=label)
    if kind == "loss":
        return plot_loss(np.asarray(result.history, dtype=float), ax=ax,
                         ylabel=f"loss ({result.config.get('loss', 'ls')})",
                         stages=result.stages, total=result.nfev + result.njev + result.ngev,
                         stage_history=result.stage_history)
    if kind == "learned":
        if not model.networks:
            raise OptionError("the model has no networks; kind='learned' shows network outputs")
        outs = [(net, k) for net in model.networks for k in range(net.n_outputs)]
        names = [f"{net.name}[{k}]" for net, k in outs]
        name = output or names[0]
        if name not in names:
            raise OptionError(f"output {name!r} is not one of {names}")
        net, k = outs[names.index(name)]
        traj = result.predict(np.linspace(exp.start, exp.t[-1], n), experiment=exp.name,
                              bands=False)
        V, Z, grid = network_output_samples(model, model.theta0, net, k, traj)
        rec = getattr(recovered, "expressions", recovered) or {}
        values = (recovered_on_samples(model, model.theta0, net, rec[name], V, grid, traj)
                  if name in rec else None)
        return plot_learned_term(V, Z, [model.label(str(e)) for e in net.inputs],
                                 model.label(name),
                                 grid=grid, ax=ax, time=traj[model.time.name].to_numpy(),
                                 recovered=values, time_name=xlabel)
    raise OptionError(f"kind={kind!r}: use 'fit', 'residuals', 'loss' or 'learned'")
