"""One panel of a fit result: what ``result.plot(...)`` draws.

The drawing itself is done by the array-level primitives of :mod:`dynlearn.report.figures`;
this module only picks the arrays out of a :class:`~dynlearn.results.result.FitResult`
(predictions with their bands, residuals, the loss history, network outputs). matplotlib is
imported only when a panel is drawn.
"""

from __future__ import annotations

import numpy as np

from dynlearn.errors import OptionError
from dynlearn.objective.losses import loss_from_name
from dynlearn.report.figures import (
    network_output_samples,
    plot_learned_term,
    plot_loss,
    plot_observable,
    plot_residuals,
)

__all__ = ["plot_result"]


def plot_result(result, kind: str = "fit", observable: str | None = None,
                experiment: str | None = None, output: str | None = None, ax=None,
                n: int = 300):
    """One panel of a fitted result, drawn into ``ax`` (what ``result.plot(...)`` shows).

    Parameters
    ----------
    result : FitResult
    kind : {"fit", "residuals", "loss", "learned"}
        ``"fit"``: data and prediction with its band for one observable; ``"residuals"``:
        residuals of one observable (log scale for ``loss="log"``); ``"loss"``: the loss
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
    if kind == "fit":
        t = np.union1d(np.linspace(exp.t[0], exp.t[-1], n), exp.t)
        pred = result.predict(t, experiment=exp.name)
        lo = pred.get(f"{obs}_lower")
        hi = pred.get(f"{obs}_upper")
        return plot_observable(exp.t, exp.columns.get(obs), t, pred[obs].to_numpy(),
                               None if lo is None else lo.to_numpy(),
                               None if hi is None else hi.to_numpy(), name=obs,
                               time_name=tname, ax=ax)
    if kind == "residuals":
        r = result.residuals()
        r = r[(r["observable"] == obs) & (r["experiment"] == exp.name)]
        if loss_from_name(result.config.get("loss", "ls")).transform == "log":
            with np.errstate(divide="ignore", invalid="ignore"):
                vals = np.log(r["data"].to_numpy()) - np.log(r["fitted"].to_numpy())
            label = f"log residual {obs}"
        else:
            vals, label = r["residual"].to_numpy(), f"residual {obs}"
        return plot_residuals(r[tname].to_numpy(), vals, obs, tname, ax=ax, ylabel=label)
    if kind == "loss":
        return plot_loss(np.asarray(result.history, dtype=float), ax=ax,
                         ylabel=f"loss ({result.config.get('loss', 'ls')})")
    if kind == "learned":
        if not model.networks:
            raise OptionError("the model has no networks; kind='learned' shows network outputs")
        outs = [(net, k) for net in model.networks for k in range(net.n_outputs)]
        names = [f"{net.name}[{k}]" for net, k in outs]
        name = output or names[0]
        if name not in names:
            raise OptionError(f"output {name!r} is not one of {names}")
        net, k = outs[names.index(name)]
        traj = result.predict(np.linspace(exp.t[0], exp.t[-1], n), experiment=exp.name,
                              bands=False)
        V, Z, grid = network_output_samples(model, model.theta0, net, k, traj)
        return plot_learned_term(V, Z, [str(e) for e in net.inputs], name, grid=grid, ax=ax,
                                 time=traj[model.time.name].to_numpy())
    raise OptionError(f"kind={kind!r}: use 'fit', 'residuals', 'loss' or 'learned'")
